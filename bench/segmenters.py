"""Mesmer on PyTorch against TensorFlow 2.8 and deepcell, side by side in one run; watershed too.

The same random-weight Mesmer runs in both environments: built and saved by TensorFlow in the
reference environment (``tests/helpers/reference_env.py``, seed 0) and converted with
``convert_model`` for PyTorch (without a reference python: a PyTorch random network, and the
TensorFlow columns are skipped). For each square patch size (256², 512², 1024²; ``--quick``:
256²) and a batch of synthetic tissue patches (``conftest.tissue_batch``):

- ``torch``: the PyTorch runtime (main environment, CPU): ``infer`` and ``postprocess`` seconds
  per patch and ``infer`` seconds per 256² tile (network plus codexdask's resize, preprocessing,
  tiling and untiling);
- ``tensorflow`` (reference environment, a long-lived subprocess, measured right after the
  PyTorch side of the same size): the TensorFlow runtime of the same segmenter (its SavedModel,
  codexdask's pipeline around it) and deepcell's own ``Mesmer.predict(batch_size=T)``, seconds
  per patch and per tile; and post-processing alone on the TensorFlow maps of the batch:
  codexdask's ``deep_watershed`` against ``deepcell_toolbox``'s (both compartments, Mesmer's
  arguments, labels compared);
- ``ratios``: PyTorch over TensorFlow per tile (< 1: PyTorch faster), the whole PyTorch segmenter
  over ``Mesmer.predict`` per patch, codexdask's post-processing over deepcell_toolbox's, and
  the labels' agreement (PyTorch vs deepcell: equal-pixel fraction and object counts);
- ``watershed``: the offline segmenter's seconds per patch;
- ``precision``: labels of tf32, bf16 and fp16 against fp32 (PyTorch on CPU, one 512² patch):
  equal-pixel fraction, identical objects and seconds per tile.

The last line of stdout is one JSON object.

Usage: ``python bench/segmenters.py [--quick] [--sizes 256 512 1024] [--batch 2]
[--tiles-per-call 4] [--reference-python PY] [--no-precision] [--threads 1]``
(``--reference-python`` defaults to ``$CODEXDASK_REFERENCE_PYTHON``; ``--threads`` is the CPU
threads of both frameworks).
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import emit  # noqa: E402

MESMER_WHOLE_CELL = {"maxima_threshold": 0.075, "maxima_smooth": 0, "interior_threshold": 0.2,
                     "interior_smooth": 2, "small_objects_threshold": 15,
                     "fill_holes_threshold": 15, "radius": 2}
MESMER_NUCLEAR = {**MESMER_WHOLE_CELL, "maxima_threshold": 0.1}


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


# ----------------------------------------------------------------------------- reference side
#: How the reference worker learns its thread count.
THREADS_ENV = "CODEXDASK_BENCH_THREADS"


def reference_worker(savedmodel: str, tiles_per_call: int) -> None:
    """Reference environment: answer requests ``<batch.npy> <labels.npy>`` read from stdin.

    Per request: the TensorFlow runtime of codexdask's segmenter, deepcell's ``Mesmer.predict``,
    and the two post-processings on the TensorFlow maps; one JSON line per request; deepcell's
    labels are saved to ``<labels.npy>``.
    """
    import tensorflow as tf

    threads = int(os.environ.get(THREADS_ENV, "1"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from deepcell.applications import Mesmer
    from deepcell_toolbox.deep_watershed import deep_watershed as toolbox_watershed

    from codexdask.postprocess import deep_watershed
    from codexdask.segmenters.mesmer import MesmerSegmenter, load_mesmer_model

    segmenter = MesmerSegmenter(model_path=savedmodel, tiles_per_call=tiles_per_call)
    app = Mesmer(load_mesmer_model(savedmodel))
    warm = np.zeros((1, 64, 64, 2), np.uint16)
    segmenter.predict(warm, 0.5)
    app.predict(warm, image_mpp=0.5, compartment="both", batch_size=tiles_per_call)
    print(json.dumps({"ready": True, "tensorflow": tf.__version__}), flush=True)
    for line in sys.stdin:
        batch_file, labels_file = line.split()
        batch = np.load(batch_file)
        maps, infer_s = timed(segmenter.infer, batch, 0.5)
        _, post_s = timed(segmenter.postprocess, maps)
        labels, predict_s = timed(app.predict, batch, image_mpp=0.5, compartment="both",
                                  batch_size=tiles_per_call)
        np.save(labels_file, labels.astype(np.uint32))
        ours_s = theirs_s = 0.0
        same = True
        for prefix, kwargs in (("whole_cell", MESMER_WHOLE_CELL), ("nuclear", MESMER_NUCLEAR)):
            outputs = [maps[f"{prefix}_inner_distance"], maps[f"{prefix}_interior"]]
            ours, seconds = timed(deep_watershed, outputs, **kwargs)
            ours_s += seconds
            theirs, seconds = timed(toolbox_watershed, outputs, **kwargs)
            theirs_s += seconds
            same &= bool(np.array_equal(ours, theirs))
        patches = len(batch)
        print(json.dumps({
            "tf_runtime_infer_s_per_patch": infer_s / patches,
            "tf_runtime_infer_s_per_tile": infer_s / maps.n_tiles,
            "tf_runtime_postprocess_s_per_patch": post_s / patches,
            "deepcell_predict_s_per_patch": predict_s / patches,
            "deepcell_predict_s_per_tile": predict_s / maps.n_tiles,
            "postprocess_codexdask_s_per_patch": ours_s / patches,
            "postprocess_deepcell_toolbox_s_per_patch": theirs_s / patches,
            "postprocess_labels_identical": same,
        }), flush=True)


# ----------------------------------------------------------------------------- main side
def weights_file(python: str | None, scratch: Path) -> tuple[Path, Path | None]:
    """Converted weights (and the SavedModel they come from, when a reference python is given)."""
    from codexdask.mesmer import convert, network

    out = scratch / "mesmer.safetensors"
    if python is None:
        convert.save_network(network.random_network(seed=0), out, source_name="random seed 0")
        return out, None
    from mesmer_runtime import reference_model

    savedmodel, _ = reference_model(python, scratch / "reference")
    convert.convert_model(savedmodel, out, tensorflow_python=python)
    return out, savedmodel


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Equal-pixel fraction, worst identical-object fraction, object counts of two batches."""
    from codexdask.synthetic.scores import labelling_agreement

    identical = [labelling_agreement(theirs[b, ..., c], ours[b, ..., c])["identical_fraction"]
                 for b in range(len(ours)) for c in range(2)]
    return {"equal_pixels": float(np.mean(ours == theirs)),
            "identical_objects_min": float(min(identical)),
            "objects": int(sum(theirs[b, ..., c].max() for b in range(len(ours))
                               for c in range(2))),
            "object_count_difference": int(max(
                abs(int(ours[b, ..., c].max()) - int(theirs[b, ..., c].max()))
                for b in range(len(ours)) for c in range(2)))}


def bench_size(size: int, args: argparse.Namespace, weights: Path, worker: Any,
               scratch: Path) -> dict[str, Any]:
    from conftest import tissue_batch

    from codexdask.segmenters import get_segmenter

    batch = tissue_batch(args.batch, size, size, seed=size)
    patches = args.batch
    out: dict[str, Any] = {"patches": patches}
    watershed = get_segmenter("watershed")
    maps, infer_s = timed(watershed.infer, batch, 0.5)
    labels, post_s = timed(watershed.postprocess, maps)
    out["watershed"] = {"infer_s_per_patch": infer_s / patches,
                        "postprocess_s_per_patch": post_s / patches}

    mesmer = get_segmenter("mesmer", model_path=weights, tiles_per_call=args.tiles_per_call)
    mesmer.predict(batch[:1, :64, :64], 0.5)  # warm-up: weights, kernels
    maps, infer_s = timed(mesmer.infer, batch, 0.5)
    labels, post_s = timed(mesmer.postprocess, maps)
    out["torch"] = {"tiles_per_patch": maps.n_tiles / patches,
                    "infer_s_per_patch": infer_s / patches,
                    "infer_s_per_tile": infer_s / maps.n_tiles,
                    "postprocess_s_per_patch": post_s / patches}
    if worker is None:
        return out
    batch_file, labels_file = scratch / f"batch{size}.npy", scratch / f"labels{size}.npy"
    np.save(batch_file, batch)
    worker.stdin.write(f"{batch_file} {labels_file}\n")
    worker.stdin.flush()
    out["tensorflow"] = json.loads(worker.stdout.readline())
    torch_side, tf_side = out["torch"], out["tensorflow"]
    out["ratios"] = {
        "torch_over_tf_infer_per_tile": torch_side["infer_s_per_tile"]
        / tf_side["tf_runtime_infer_s_per_tile"],
        "torch_segmenter_over_deepcell_predict_per_patch":
            (torch_side["infer_s_per_patch"] + torch_side["postprocess_s_per_patch"])
            / tf_side["deepcell_predict_s_per_patch"],
        "postprocess_codexdask_over_deepcell_toolbox":
            tf_side["postprocess_codexdask_s_per_patch"]
            / tf_side["postprocess_deepcell_toolbox_s_per_patch"],
    }
    out["torch_vs_deepcell_labels"] = agreement(labels, np.load(labels_file))
    return out


def precision_agreement(weights: Path) -> dict[str, Any]:
    """Labels of each reduced precision against fp32 on one 512² patch (PyTorch, CPU)."""
    from conftest import tissue_batch

    from codexdask.segmenters.mesmer import MesmerSegmenter

    batch = tissue_batch(1, 512, 512, seed=51)
    result: dict[str, Any] = {}
    reference = None
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        segmenter = MesmerSegmenter(model_path=weights, tiles_per_call=9, precision=precision,
                                    device="cpu")
        segmenter.predict(batch[:, :64, :64], 0.5)  # warm-up
        maps, seconds = timed(segmenter.infer, batch, 0.5)
        labels = segmenter.postprocess(maps)
        row: dict[str, Any] = {"infer_s_per_tile": seconds / maps.n_tiles}
        if reference is None:
            reference = labels
        else:
            row.update(agreement(labels, reference))
        result[precision] = row
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256² only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, default=2, help="patches per batch")
    parser.add_argument("--tiles-per-call", type=int, default=4)
    parser.add_argument("--reference-python",
                        default=os.environ.get("CODEXDASK_REFERENCE_PYTHON"),
                        help="python of the reference environment (TensorFlow, deepcell)")
    parser.add_argument("--no-precision", action="store_true", help="skip the precision part")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of PyTorch and of TensorFlow (default 1, as in the "
                             "engine's single-threaded CPU workers)")
    parser.add_argument("--reference-worker", nargs=2, metavar=("SAVEDMODEL", "TILES_PER_CALL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_worker:
        return reference_worker(args.reference_worker[0], int(args.reference_worker[1]))
    import torch

    torch.set_num_threads(args.threads)
    sizes = [256] if args.quick else args.sizes
    summary: dict[str, Any] = {"bench": "segmenters", "device": "cpu", "batch": args.batch,
                               "tiles_per_call": args.tiles_per_call, "torch": torch.__version__,
                               "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="codexdask-bench-") as tmp:
        scratch = Path(tmp)
        weights, savedmodel = weights_file(args.reference_python, scratch)
        worker = None
        if savedmodel is not None:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "PYTHONPATH": str(ROOT), THREADS_ENV: str(args.threads)}
            worker = subprocess.Popen(
                [str(args.reference_python), __file__, "--reference-worker", str(savedmodel),
                 str(args.tiles_per_call)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env=env)
            summary["tensorflow"] = json.loads(worker.stdout.readline())["tensorflow"]
        else:
            summary["tensorflow"] = "skipped: no --reference-python / $CODEXDASK_REFERENCE_PYTHON"
        results = {}
        for size in sizes:
            results[str(size)] = bench_size(size, args, weights, worker, scratch)
            print(f"{size}²: {json.dumps(results[str(size)], default=float)}", flush=True)
        if worker is not None:
            worker.stdin.close()
            worker.wait()
        summary["results"] = results
        if not args.no_precision:
            summary["precision"] = precision_agreement(weights)
    emit(summary)


if __name__ == "__main__":
    main()
