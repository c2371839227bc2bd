"""Mesmer's network on CPU: PyTorch (main environment) against TensorFlow 2.8 (reference env).

One random-weight Mesmer (``conftest.build_random_mesmer(0)``, saved by TensorFlow in the reference
environment, or ``--savedmodel``) is converted with ``convert_model``; then, on the same tiles
(``tests/helpers/reference_env.py``'s pre-processed synthetic and real tiles, repeated to the batch
size):

- ``per_tile``: seconds per 256² tile for 1, 4 and 16 tiles per call (median of ``--repeats``
  calls after a warm-up call), PyTorch and TensorFlow measured alternately (``--rounds`` times;
  the machine is shared and its load drifts) — TensorFlow calls the Keras model through one
  ``tf.function`` (what the segmenter does; no ``model.predict`` overhead) in a long-lived
  subprocess, PyTorch runs ``predict_maps`` (float32, ``torch.inference_mode``, channels-last);
  ``ratio_torch_over_tf`` is the median of the paired ratios, < 1 means PyTorch is faster;
- ``parity``: max abs difference of the four maps, PyTorch float32 vs TensorFlow;
- ``precision``: bf16 and fp16 autocast on CPU: seconds per tile and max abs difference of the
  maps against float32 (fp16 runs on one tile: it is slow on CPUs without half-precision units);
- ``host_memory``: peak RSS of a fresh process running one PyTorch float32 call of 1, 2, 4, 8, 16
  tiles; ``bytes_per_tile`` is the least-squares slope.

TensorFlow runs in a subprocess (``--reference-python``, default ``$CODEXDASK_REFERENCE_PYTHON``)
with ``CUDA_VISIBLE_DEVICES=""``; without it only the PyTorch side runs. The last line of stdout is
one JSON object.

Usage: ``python bench/mesmer_runtime.py [--reference-python PY] [--savedmodel DIR]
[--batch-sizes 1 4 16] [--repeats 3] [--rounds 2] [--threads N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import emit, max_rss_bytes  # noqa: E402

MEMORY_BATCHES = (1, 2, 4, 8, 16)


def batch_of(tiles: np.ndarray, size: int) -> np.ndarray:
    """``size`` tiles taken cyclically from ``tiles``."""
    return np.ascontiguousarray(tiles[np.arange(size) % len(tiles)])


def seconds_per_tile(run: Any, batch: np.ndarray, repeats: int) -> float:
    """Median seconds per tile of ``run(batch)`` over ``repeats`` calls after one warm-up call."""
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(batch)


# ----------------------------------------------------------------------------- TensorFlow side
def tf_worker(savedmodel: str, tiles_file: str, threads: int | None) -> None:
    """Reference environment: serve timing requests ``"<tiles> <repeats>"`` read from stdin.

    Saves TensorFlow's maps of the first 4 tiles next to ``tiles_file`` and answers each request
    with one JSON line, so the main process can interleave TensorFlow and PyTorch measurements.
    """
    import tensorflow as tf

    from codexdask.mesmer.convert import mesmer_maps
    from codexdask.mesmer.tf_export import location_layer

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = tf.keras.models.load_model(savedmodel, compile=False,
                                       custom_objects={"Location2D": location_layer()})
    network = tf.function(lambda x: model(x, training=False))
    tiles = np.load(tiles_file)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return [o.numpy() for o in network(tf.constant(batch))]

    np.save(tiles_file + ".maps.npy", mesmer_maps(run(batch_of(tiles, 4))))
    print(json.dumps({"ready": True, "tensorflow": tf.__version__}), flush=True)
    for line in sys.stdin:
        size, repeats = map(int, line.split())
        seconds = seconds_per_tile(run, batch_of(tiles, size), repeats)
        print(json.dumps({"tiles": size, "per_tile_s": seconds}), flush=True)


# ----------------------------------------------------------------------------- memory side
def memory_worker(tiles: int) -> None:
    """Fresh process: resident memory before, and peak during, one float32 call of ``tiles``."""
    from codexdask.mesmer import network

    net = network.random_network(seed=0)
    batch = np.random.default_rng(0).random((tiles, 256, 256, 2), dtype=np.float32)
    network.predict_maps(net, batch[:1, :64, :64])  # load kernels on a tiny input
    reset = Path("/proc/self/clear_refs")
    if reset.exists():
        reset.write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    before = max_rss_bytes()
    network.predict_maps(net, batch)
    print(json.dumps({"tiles": tiles, "before": before, "peak": max_rss_bytes()}))


def host_memory() -> dict[str, Any]:
    """Peak RSS per batch size (fresh process each) and the slope in bytes per tile."""
    rows = []
    for tiles in MEMORY_BATCHES:
        done = subprocess.run([sys.executable, __file__, "--memory-worker", str(tiles)],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    sizes = np.array([r["tiles"] for r in rows], float)
    peaks = np.array([r["peak"] for r in rows], float)
    slope, intercept = np.polyfit(sizes, peaks, 1)
    return {"batches": rows, "bytes_per_tile": float(slope),
            "mib_per_tile": float(slope) / 2**20, "intercept_mib": float(intercept) / 2**20}


# ----------------------------------------------------------------------------- main
def reference_model(python: str, scratch: Path) -> tuple[Path, np.ndarray]:
    """Build seed 0's random Mesmer and the reference tiles in the reference environment."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([python, str(ROOT / "tests" / "reference_env.py"), str(scratch),
                    "--seeds", "0"], env=env, check=True, capture_output=True)
    with np.load(scratch / "seed0" / "reference.npz") as data:
        return scratch / "seed0" / "MultiplexSegmentation", data["tiles"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", default=os.environ.get("CODEXDASK_REFERENCE_PYTHON"))
    parser.add_argument("--savedmodel", help="Mesmer SavedModel (default: a random-weight one)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of interleaved PyTorch / TensorFlow measurements")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of both runtimes (default: their own defaults)")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, 1 repeat")
    parser.add_argument("--tf-worker", nargs=2, metavar=("SAVEDMODEL", "TILES"))
    parser.add_argument("--memory-worker", type=int, metavar="TILES")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.rounds = [1, 4], 1, 1
    if args.tf_worker:
        return tf_worker(*args.tf_worker, args.threads)
    if args.memory_worker:
        return memory_worker(args.memory_worker)

    import torch

    from codexdask.mesmer import convert, network

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "batch_sizes": args.batch_sizes, "repeats": args.repeats,
                              "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="mesmer-runtime-") as tmp:
        scratch = Path(tmp)
        worker = None
        if args.reference_python:
            if args.savedmodel:
                savedmodel, tiles = Path(args.savedmodel), convert.probe_tiles()
            else:
                savedmodel, tiles = reference_model(args.reference_python, scratch)
            weights = scratch / "mesmer.safetensors"
            start = time.perf_counter()
            metadata = convert.convert_model(savedmodel, weights,
                                             tensorflow_python=args.reference_python)
            result["convert_s"] = time.perf_counter() - start
            result["self_check"] = json.loads(metadata["self_check"])["max_abs_diff"]
            np.save(scratch / "tiles.npy", tiles)
            threads = ["--threads", str(args.threads)] if args.threads else []
            worker = subprocess.Popen(
                [args.reference_python, __file__, "--tf-worker", str(savedmodel),
                 str(scratch / "tiles.npy"), *threads], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                     "PYTHONPATH": str(ROOT)})
            result["tensorflow"] = json.loads(worker.stdout.readline())["tensorflow"]
            tf_maps = np.load(scratch / "tiles.npy.maps.npy")
            net = network.load_network(weights, "cpu")
        else:
            result["tensorflow"] = "skipped: no --reference-python / $CODEXDASK_REFERENCE_PYTHON"
            net, tiles = network.random_network(seed=0), convert.probe_tiles()

        def run(batch: np.ndarray) -> np.ndarray:
            return network.predict_maps(net, batch, "fp32")

        rows = []  # interleaved: the machine's load changes over minutes
        for _ in range(args.rounds):
            for size in args.batch_sizes:
                row = {"tiles": size,
                       "torch_s": seconds_per_tile(run, batch_of(tiles, size), args.repeats)}
                if worker is not None:
                    worker.stdin.write(f"{size} {args.repeats}\n")
                    worker.stdin.flush()
                    row["tf_s"] = json.loads(worker.stdout.readline())["per_tile_s"]
                    row["ratio"] = row["torch_s"] / row["tf_s"]
                rows.append(row)
        result["per_tile"] = rows
        result["torch_per_tile_s"] = {str(size): float(np.median(
            [r["torch_s"] for r in rows if r["tiles"] == size])) for size in args.batch_sizes}
        reference = run(batch_of(tiles, 4))
        if worker is not None:
            worker.stdin.close()
            worker.wait()
            result["tf_per_tile_s"] = {str(size): float(np.median(
                [r["tf_s"] for r in rows if r["tiles"] == size])) for size in args.batch_sizes}
            result["ratio_torch_over_tf"] = {str(size): float(np.median(
                [r["ratio"] for r in rows if r["tiles"] == size])) for size in args.batch_sizes}
            diff = np.abs(reference - tf_maps).max(axis=(0, 1, 2))
            result["parity"] = dict(zip(network.MAP_NAMES, diff.tolist()))
        result["precision"] = {}
        for precision, count in (("bf16", 4), ("fp16", 1)):
            batch = batch_of(tiles, count)
            network.predict_maps(net, batch[:1, :64, :64], precision)  # warm-up
            start = time.perf_counter()
            maps = network.predict_maps(net, batch, precision)
            seconds = (time.perf_counter() - start) / count
            diff = np.abs(maps - reference[:count]).max(axis=(0, 1, 2))
            result["precision"][precision] = {"tiles": count, "per_tile_s": seconds,
                                              "max_abs_diff": dict(zip(network.MAP_NAMES,
                                                                       diff.tolist()))}
    result["host_memory"] = host_memory()
    emit(result)


if __name__ == "__main__":
    main()
