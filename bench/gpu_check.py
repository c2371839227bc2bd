"""A prepared GPU check of the PyTorch Mesmer: one run, at most ~8 minutes, one JSON file.

Needs only numpy and PyTorch (with CUDA) and this checkout; dask, zarr and scipy are optional.

- ``environment``: Python, PyTorch, CUDA, cuDNN, the GPU and its memory.
- ``a_gpu_vs_cpu``: a random-weight Mesmer (:func:`codexdask.mesmer.network.random_network`,
  heads standardised so the maps vary) on 4 tiles: max abs difference per map of the GPU at each
  precision against the CPU in float32.
- ``b_throughput``: for each precision (fp32, tf32, bf16, fp16) and 1, 2, 4, ..., 512 tiles per
  call: tiles/s of the forward pass with the tiles already on the GPU (median of timed calls
  after a warm-up call), and peak GPU memory per tile (``torch.cuda.max_memory_allocated`` above
  the weights and the input, divided by the tiles); out-of-memory or another runtime error is
  recorded, not fatal.
  ``end_to_end``: tiles/s of ``predict_maps`` from a numpy batch (host -> GPU -> 4 maps back) at 64
  tiles; ``layouts``: channels-last against contiguous weights at 64 tiles;
  ``cudnn_benchmark``: the same with ``torch.backends.cudnn.benchmark = True``.
- ``c_engine``: :func:`engine_check` — the Dask engine with ``--gpus`` on a 4096² synthetic
  ``full_image`` store (PyTorch runtime, random weights): GPU busy fraction (network seconds /
  wall) and where time went (inference, post-processing, repair). Needs dask-cuda and
  codexdask's other dependencies; skipped otherwise, with the reason.

The JSON is rewritten after each part, so a run cut short still leaves what it measured.
Work stops starting new measurements once ``--budget-s`` seconds have passed.

Usage: ``python bench/gpu_check.py OUT_DIR [--device cuda|cpu] [--quick] [--budget-s 420]``;
``--device cpu --quick`` exercises the script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from codexdask.mesmer import network  # noqa: E402
from codexdask.mesmer.convert import probe_tiles  # noqa: E402

BATCH_SIZES = tuple(2**k for k in range(10))  # 1 ... 512
QUICK_BATCH_SIZES = (1, 2)


class Report:
    """The check's results, written to ``OUT_DIR/gpu_check.json`` after every part."""

    def __init__(self, out_dir: Path, budget_s: float):
        self.path = out_dir / "gpu_check.json"
        self.data: dict[str, Any] = {}
        self.deadline = time.monotonic() + budget_s
        out_dir.mkdir(parents=True, exist_ok=True)

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def save(self, key: str, value: Any) -> None:
        self.data[key] = value
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.data, indent=1, default=float))
        partial.replace(self.path)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device's properties."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "numpy": np.__version__, "device": str(device),
                            "cpu_threads": torch.get_num_threads()}
    for module in ("dask", "distributed", "dask_cuda", "zarr", "scipy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count)
    return info


def tiles_for_check() -> np.ndarray:
    """4 tiles: the conversion probe (noise, tissue-like) and two smooth random fields."""
    rng = np.random.default_rng(1)
    smooth = rng.random((2, 8, 8, 2)).repeat(32, axis=1).repeat(32, axis=2)
    return np.concatenate([probe_tiles(), smooth.astype(np.float32)])


def gpu_vs_cpu(net_cpu: network.MesmerNet, net: network.MesmerNet, tiles: np.ndarray
               ) -> dict[str, Any]:
    """Part (a): max abs difference per map, each precision on ``net``'s device vs CPU float32."""
    if next(net.parameters()).device.type == "cpu":
        return {"skipped": "the device is the CPU: nothing to compare"}
    reference = network.predict_maps(net_cpu, tiles, "fp32")
    result = {}
    for precision in network.PRECISIONS:
        maps = network.predict_maps(net, tiles, precision)
        diff = np.abs(maps - reference).max(axis=(0, 1, 2))
        result[precision] = dict(zip(network.MAP_NAMES, diff.tolist()))
    return result


def forward_rate(net: network.MesmerNet, batch: torch.Tensor, precision: str,
                 min_seconds: float = 1.0, max_calls: int = 20) -> dict[str, Any]:
    """Tiles/s of ``net(batch)`` (tiles on the device) and peak device memory per tile."""
    device = batch.device
    cuda = device.type == "cuda"

    def call() -> None:
        with torch.inference_mode(), network.precision_mode(device, precision):
            net(batch)
        if cuda:
            torch.cuda.synchronize(device)

    try:
        call()  # warm-up (cuDNN algorithm choice, autocast caches)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times: list[float] = []
        while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_calls):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"oom": str(exc).splitlines()[0]}
    except RuntimeError as exc:  # a kernel's limit: recorded, the sweep goes on to the next part
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    tiles = batch.shape[0]
    row: dict[str, Any] = {"tiles_per_s": tiles / float(np.median(times)), "calls": len(times)}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_mib_per_tile"] = (peak - base) / tiles / 2**20
        row["reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return row


def throughput(net: network.MesmerNet, device: torch.device, batch_sizes: tuple[int, ...],
               precisions: tuple[str, ...], report: Report) -> dict[str, Any]:
    """Part (b): tiles/s and memory per tile for every precision and batch size."""
    rng = np.random.default_rng(2)
    result: dict[str, Any] = {}
    for precision in precisions:
        rows: dict[str, Any] = result.setdefault(precision, {})
        for size in batch_sizes:
            if not report.time_left():
                rows[str(size)] = {"skipped": "time budget used up"}
                continue
            batch = torch.from_numpy(rng.random((size, 256, 256, 2), dtype=np.float32))
            rows[str(size)] = forward_rate(net, batch.to(device), precision)
            report.save("b_throughput", result)  # kept if a later size crashes the process
            if "oom" in rows[str(size)] or "error" in rows[str(size)]:
                break  # larger batches will not fit or fail the same way
    return result


def side_checks(net: network.MesmerNet, device: torch.device, size: int,
                precisions: tuple[str, ...], report: Report) -> dict[str, Any]:
    """End to end from numpy, contiguous weights, and cuDNN autotuning, at ``size`` tiles."""
    tiles = np.random.default_rng(3).random((size, 256, 256, 2), dtype=np.float32)
    batch = torch.from_numpy(tiles).to(device)
    result: dict[str, Any] = {"tiles": size, "end_to_end": {}, "layouts": {},
                              "cudnn_benchmark": {}}
    plain = network.MesmerNet()
    plain.load_state_dict(net.state_dict())
    plain = plain.to(device)  # contiguous (NCHW) weights
    for precision in precisions:
        if not report.time_left():
            break
        network.predict_maps(net, tiles, precision)
        start = time.perf_counter()
        network.predict_maps(net, tiles, precision)
        result["end_to_end"][precision] = size / (time.perf_counter() - start)
        result["layouts"][precision] = {
            "channels_last": forward_rate(net, batch, precision).get("tiles_per_s"),
            "contiguous": forward_rate(plain, batch, precision).get("tiles_per_s")}
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            try:
                result["cudnn_benchmark"][precision] = forward_rate(net, batch, precision)
            finally:
                torch.backends.cudnn.benchmark = False
    return result


#: Side of the synthetic slide of the engine part (one full_image patch, ~16 Mpx).
ENGINE_SLIDE = 4096
#: Packages the engine needs besides PyTorch and numpy.
ENGINE_PACKAGES = ("distributed", "zarr", "scipy", "skimage", "numba", "pandas", "yaml",
                   "tifffile")


def engine_check(out_dir: Path, *, size: int = ENGINE_SLIDE) -> dict[str, Any]:
    """Part (c): the Dask engine with ``--gpus`` (dask-cuda, one worker per GPU) on a synthetic
    ``full_image`` store, the PyTorch runtime and a random-weight network (:func:`run_engine`).

    Returns :func:`run_engine`'s figures, or ``{"skipped": reason}`` when dask-cuda, another
    package the engine needs, or a CUDA GPU is missing.
    """
    reason = engine_unavailable(gpus=True)
    if reason is not None:
        return {"skipped": reason}
    return run_engine(out_dir / "engine", gpus=True, size=size)


def engine_unavailable(gpus: bool) -> str | None:
    """Why the engine part cannot run here (None when it can)."""
    import importlib.util

    for module in ENGINE_PACKAGES:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: the engine part needs codexdask's dependencies"
    if gpus:
        try:
            import dask_cuda  # noqa: F401
        except ImportError as exc:
            return f"dask_cuda is not importable ({exc}); the engine part needs it"
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch"
    return None


def run_engine(work: Path, *, gpus: bool, size: int, block_size: int | str = "auto",
               n_workers: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Segment a ``size`` x ``size`` synthetic slide (``full_image``) with the engine.

    The weights are :func:`codexdask.mesmer.network.random_network` written as a converted file;
    pickles, mosaics and overlays are off. Times come from the run: ``inference_s``,
    ``postprocess_s`` and ``repair_s`` are the seconds of those tasks summed over the blocks (the
    result store's statistics row: inference = preparation + the pinned network task),
    ``graph_s`` the wall time of the segmentation graph, ``stages`` the manifest's seconds per
    stage. ``gpu_busy_fraction`` = network seconds / ``graph_s`` (one network task holds a GPU
    at a time); ``pinned_busy_fraction`` likewise for the whole pinned task.
    """
    from codexdask.config import PatchConfig, SegmentConfig
    from codexdask.engine.runner import run
    from codexdask.layout import RESULT_STAT_COLUMNS, RESULT_STORE, STATS_ARRAY
    from codexdask.mesmer.convert import save_network
    from codexdask.outputs import open_result_store
    from codexdask.store.patch_store import write_patch_store
    from codexdask.synthetic import synthetic_slide

    work.mkdir(parents=True, exist_ok=True)
    slide = synthetic_slide(size, size, seed=0)
    store = write_patch_store(
        slide.image, work / "slide.zarr",
        PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels, split_mode="full_image"),
        channel_names=slide.channel_names, overwrite=True)
    weights = work / "mesmer.safetensors"
    save_network(network.random_network(seed=0), weights, source_name="random seed 0")
    config = SegmentConfig(backend="mesmer", model_path=str(weights), gpus=gpus,
                           block_size=block_size, n_workers=n_workers, precision=precision,
                           save_pickles=False, save_mosaics=False, n_overlays=0, overwrite=True)
    start = time.perf_counter()
    result = run(store, work / "out", config)
    wall = time.perf_counter() - start
    row = open_result_store(work / "out" / RESULT_STORE)[STATS_ARRAY][0]
    stats = dict(zip(RESULT_STAT_COLUMNS, (float(v) for v in row), strict=False))
    manifest = result.manifest
    graph_s = float(manifest["timings"].get("graph_s", wall))
    return {
        "gpus": gpus, "slide": [size, size], "megapixels": size * size / 1e6,
        "blocks": manifest["seamless"]["blocks"], "plan": manifest["plan"],
        "wall_s": wall, "graph_s": graph_s,
        "inference_s": stats["infer_s"], "postprocess_s": stats["postprocess_s"],
        "repair_s": stats["repair_s"],
        "stages": manifest["stages"],
        "gpu_busy_fraction": manifest["stages"]["gpu_busy_fraction"]
        or (manifest["stages"]["network_s"] / graph_s if graph_s > 0 else None),
        "pinned_busy_fraction": manifest["stages"]["pinned_busy_fraction"],
        "megapixels_per_s": size * size / 1e6 / graph_s if graph_s > 0 else None,
        "cells": int(stats["n_cells"]), "nuclei": int(stats["n_nuclei"]),
        "warnings": manifest["warnings"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="1 and 2 tiles per call, fp32 and bf16 only (a smoke test)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop starting measurements after this many seconds")
    args = parser.parse_args(argv)
    device = network.resolve_device(args.device)
    report = Report(args.out_dir, args.budget_s)
    started = time.monotonic()
    report.save("environment", environment(device))
    for module in ("dask", "zarr"):
        if report.data["environment"][module] is None:
            print(f"{module} is not installed: the parts that need it are skipped")
    net_cpu = network.random_network(seed=0, device="cpu")
    net = network.to_channels_last(copy.deepcopy(net_cpu).to(device))
    report.save("a_gpu_vs_cpu", gpu_vs_cpu(net_cpu, net, tiles_for_check()))
    sizes = QUICK_BATCH_SIZES if args.quick else BATCH_SIZES
    precisions = ("fp32", "bf16") if args.quick else network.PRECISIONS
    throughput(net, device, sizes, precisions, report)
    report.save("side_checks", side_checks(net, device, 2 if args.quick else 64, precisions,
                                           report))
    report.save("c_engine", engine_check(args.out_dir))
    report.save("wall_s", time.monotonic() - started)
    print(summary(report.data))
    print(f"wrote {report.path}")
    return 0


def summary(data: dict[str, Any]) -> str:
    """A few lines for the terminal: the environment, the differences, the best rates."""
    env = data["environment"]
    lines = [f"{env.get('gpu', env['device'])}  torch {env['torch']}  CUDA {env.get('cuda')}"]
    diffs = data["a_gpu_vs_cpu"]
    if "skipped" in diffs:
        lines.append(f"(a) GPU vs CPU: skipped: {diffs['skipped']}")
    else:
        for precision, row in diffs.items():
            lines.append(f"(a) {precision} vs CPU fp32, max abs diff: {max(row.values()):.2e}")
    for precision, rows in data["b_throughput"].items():
        rates = {size: row["tiles_per_s"] for size, row in rows.items() if "tiles_per_s" in row}
        if rates:
            best = max(rates, key=lambda size: rates[size])
            memory = rows[best].get("peak_mib_per_tile")
            mem = f", {memory:.0f} MiB/tile" if memory is not None else ""
            lines.append(f"(b) {precision}: best {rates[best]:.1f} tiles/s at {best} tiles{mem}")
    engine = data["c_engine"]
    if "skipped" in engine:
        lines.append(f"(c) engine: skipped: {engine['skipped']}")
    else:
        lines.append(f"(c) engine: {engine['megapixels']:.0f} Mpx in {engine['graph_s']:.0f} s, "
                     f"GPU busy {engine['gpu_busy_fraction']:.0%}; inference "
                     f"{engine['inference_s']:.0f} s, post-processing "
                     f"{engine['postprocess_s']:.0f} s, repair {engine['repair_s']:.0f} s")
    lines.append(f"wall time {data['wall_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
