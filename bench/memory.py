"""Larger than memory: a patch store several times the workers' total memory limit, processed.

A synthetic patch store whose uncompressed patch bytes are ``--ratio`` times the workers' total
memory limit (default 4 x 2 workers x 350 MiB = 2.8 GB of uint16 512² patches, 2,800 patches) is
segmented by ``codexdask.engine.runner.run`` on a fresh ``LocalCluster`` of worker processes with
that
memory limit. Reported:

- ``completed`` and the patches computed;
- workers killed or paused for memory: scheduler events (``remove-worker``, a worker status
  change to ``paused``), worker addresses before and after (a nanny restart gives a new
  address), and the lines of the worker and nanny logs that mention pausing, restarting or the
  memory budget;
- peak RSS per worker: ``VmHWM`` of each worker process (``ru_maxrss`` is useless here: Linux
  keeps it across ``execve``, so a freshly spawned worker reports the RSS its parent, the driver,
  had when it was spawned), and its idle RSS after imports, before the run (the baseline);
- bytes processed: uncompressed patch bytes read plus uncompressed mask bytes produced (nine
  uint32 masks per patch), their ratio to the total memory limit and to the sum of worker peaks.

Segmenters (``--segmenter``): ``threshold`` (default: nucleus > 1000 labelled, cells = nuclei
grown by 3 px; dense realistic labels, ~900 cells per 512² patch, ~20 ms per patch, so the run
is about bytes, not compute), ``watershed`` (codexdask's CPU backend, ~10x slower), ``one-cell``
(one cell per patch, nearly free). Pickles, mosaics and overlays are off: they are written by the
driver, not the workers, and would dominate the time.

    python bench/memory.py --quick     # 0.5 x 2 x 300 MiB, a smoke run (about a minute)
    python bench/memory.py             # 4 x 2 x 350 MiB = 2.8 GB (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, peak_rss  # noqa: E402

from codexdask.config import PatchConfig, SegmentConfig  # noqa: E402
from codexdask.engine.runner import run  # noqa: E402
from codexdask.layout import MASK_NAMES, RESULT_STORE  # noqa: E402
from codexdask.segmenters import CallableSegmenter, Segmenter, get_segmenter  # noqa: E402
from codexdask.store.patch_store import open_patch_store, write_patch_store  # noqa: E402
from codexdask.synthetic import synthetic_slide  # noqa: E402

BASE = 2048  # side of the synthetic slide that is tiled to make the store
LOG_WORDS = ("Pausing worker", "memory budget", "Restarting worker", "exceeded", "Nanny asked")


# --------------------------------------------------------------------------------------------
# segmenters (module level, so that workers can unpickle them)


def threshold_labels(batch: np.ndarray, image_mpp: float) -> np.ndarray:
    """Nuclei = connected components of nucleus > 1000; cells = nuclei grown by 3 px.

    ``batch`` (B, H, W, 2) -> (B, H, W, 2) uint32 (whole-cell, nucleus).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    out = np.zeros(batch.shape[:3] + (2,), np.uint32)
    for k, patch in enumerate(batch):
        nuclei, _ = ndi.label(patch[..., 0] > 1000)
        out[k, ..., 1] = nuclei
        out[k, ..., 0] = expand_labels(nuclei, 3)
    return out


def one_cell_labels(batch: np.ndarray, image_mpp: float) -> np.ndarray:
    """One 16² cell with an 8² nucleus in the corner of every patch."""
    out = np.zeros(batch.shape[:3] + (2,), np.uint32)
    out[:, 8:24, 8:24, 0] = 1
    out[:, 12:20, 12:20, 1] = 1
    return out


def make_segmenter(name: str) -> Segmenter:
    if name == "watershed":
        return get_segmenter("watershed")
    function = {"threshold": threshold_labels, "one-cell": one_cell_labels}[name]
    return CallableSegmenter(function, name=name)


# --------------------------------------------------------------------------------------------
# worker probes (run with client.run)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (VmHWM), in bytes."""
    return _status_kib("VmHWM") * 1024


def warm_up() -> int:
    """Import what a task imports; return the RSS afterwards (the worker's idle baseline)."""
    import skimage.segmentation  # noqa: F401

    import codexdask.engine.runner  # noqa: F401
    import codexdask.engine.tasks  # noqa: F401
    import codexdask.segmenters.watershed  # noqa: F401

    return _status_kib("VmRSS") * 1024


# --------------------------------------------------------------------------------------------


def make_store(path: Path, n_patches: int, size: int, dtype: str, seed: int = 0) -> Path:
    """At least ``n_patches`` informative ``size``² patches from a lazily tiled synthetic slide."""
    slide = synthetic_slide(BASE, BASE, seed=seed, empty_fraction=0.0)
    cols = math.ceil(math.sqrt(n_patches))
    rows = math.ceil(n_patches / cols)
    reps = (1, -(-rows * size // BASE), -(-cols * size // BASE))
    base = da.from_array(slide.image.astype(dtype), chunks=(1, 1024, 1024))
    tiled = da.tile(base, reps)[:, : rows * size, : cols * size]
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                         patch_size=(size, size), overlap=0.0)
    return write_patch_store(tiled, path, config, channel_names=slide.channel_names)


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def memory_events(client: Client) -> dict[str, Any]:
    """Worker removals, additions and pauses recorded by the scheduler since it started."""
    removed, added, paused = [], 0, []
    for topic, events in client.get_events().items():
        for _, msg in events:
            if not isinstance(msg, dict):
                continue
            if msg.get("action") == "remove-worker" and topic == "all":
                removed.append(msg.get("worker", topic))
            elif msg.get("action") == "add-worker" and topic == "all":
                added += 1
            elif msg.get("action") == "worker-status-change" and msg.get("status") == "paused":
                paused.append(topic)
    return {"removed": removed, "added": added, "paused": paused}


def log_lines(client: Client) -> list[str]:
    """Worker and nanny log lines about pausing, restarting or the memory budget."""
    lines = []
    for nanny in (False, True):
        try:
            logs = client.get_worker_logs(nanny=nanny)
        except Exception as exc:  # a nanny that died with its worker cannot answer
            lines.append(f"(could not read {'nanny' if nanny else 'worker'} logs: {exc})")
            continue
        for address, records in logs.items():
            lines += [f"{address}: {text}" for _, text in records
                      if any(word in text for word in LOG_WORDS)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="350MiB", help="per worker")
    parser.add_argument("--ratio", type=float, default=4.0,
                        help="uncompressed patch bytes / total worker memory limit")
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--dtype", default="uint16")
    parser.add_argument("--segmenter", choices=["threshold", "watershed", "one-cell"],
                        default="threshold")
    parser.add_argument("--batch-size", default="auto", help="patches per task: auto or N")
    parser.add_argument("--tmp", default=None, help="directory for the stores (default: /tmp)")
    parser.add_argument("--quick", action="store_true", help="ratio 0.5 of 2 x 300 MiB")
    args = parser.parse_args()
    if args.quick:
        args.ratio, args.memory_limit = 0.5, "300MiB"

    limit = parse_bytes(args.memory_limit)
    total_limit = limit * args.workers
    size = args.patch_size
    patch_bytes_each = size * size * 2 * np.dtype(args.dtype).itemsize
    wanted = math.ceil(args.ratio * total_limit / patch_bytes_each)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        start = time.perf_counter()
        store = make_store(Path(tmp) / "big.zarr", wanted, size, args.dtype)
        store_s = time.perf_counter() - start
        store_disk = disk_bytes(store)
        patch_store = open_patch_store(store)
        n_informative = len(patch_store.informative_indices)
        print(f"store: {patch_store.n_patches} patches ({n_informative} informative) of "
              f"{size}² x 2 {args.dtype} in {store_s:.0f} s, "
              f"{store_disk / 2**20:.0f} MiB on disk", file=sys.stderr)

        config = SegmentConfig(batch_size=args.batch_size, save_pickles=False,
                               save_mosaics=False, n_overlays=0)
        error = None
        result = None
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(args.workers)
            idle = client.run(warm_up)
            before = set(client.scheduler_info(n_workers=-1)["workers"])
            start = time.perf_counter()
            with peak_rss() as driver_peak:
                try:
                    result = run(store, Path(tmp) / "out", config, client=client,
                                 segmenter=make_segmenter(args.segmenter))
                except Exception as exc:  # the benchmark reports any failure instead of raising
                    error = f"{type(exc).__name__}: {exc}"
            engine_s = time.perf_counter() - start
            peaks = client.run(peak_rss_bytes)
            after = set(client.scheduler_info(n_workers=-1)["workers"])
            events = memory_events(client)
            logs = log_lines(client)
        result_disk = disk_bytes(Path(tmp) / "out" / RESULT_STORE)

    computed = result.n_computed if result is not None else 0
    patch_bytes = computed * patch_bytes_each
    mask_bytes = computed * len(MASK_NAMES) * size * size * 4
    processed = patch_bytes + mask_bytes
    peak_sum = sum(peaks.values())
    report = {
        "benchmark": "memory",
        "completed": error is None and computed == n_informative,
        "error": error,
        "segmenter": args.segmenter,
        "n_workers": args.workers,
        "memory_limit_bytes": limit,
        "total_memory_limit_bytes": total_limit,
        "patch_shape": [size, size, 2],
        "dtype": args.dtype,
        "n_patches": patch_store.n_patches,
        "n_computed": computed,
        "plan": result.plan.as_dict() if result is not None else None,
        "patch_bytes": patch_bytes,
        "mask_bytes": mask_bytes,
        "bytes_processed": processed,
        "ratio_patch_bytes_to_memory_limit": patch_bytes / total_limit,
        "ratio_bytes_processed_to_memory_limit": processed / total_limit,
        "ratio_bytes_processed_to_peak_rss_sum": processed / peak_sum if peak_sum else None,
        "store_disk_bytes_compressed": store_disk,
        "result_disk_bytes_compressed": result_disk,
        "worker_idle_rss_bytes": list(idle.values()),
        "worker_peak_rss_bytes": list(peaks.values()),
        "worker_peak_over_limit": [peak / limit for peak in peaks.values()],
        "driver_peak_rss_bytes": driver_peak["peak"],
        "workers_restarted": len(after - before),
        "worker_removed_events": len(events["removed"]),
        "worker_added_after_start": max(0, events["added"] - args.workers),
        "worker_paused_events": len(events["paused"]),
        "memory_log_lines": logs,
        "store_write_s": store_s,
        "engine_s": engine_s,
        "engine_mb_per_s": processed / 1e6 / engine_s,
    }
    print(f"completed={report['completed']} in {engine_s:.0f} s; "
          f"{patch_bytes / 2**30:.2f} GiB patches + {mask_bytes / 2**30:.2f} GiB masks = "
          f"{report['ratio_bytes_processed_to_memory_limit']:.1f}x the {total_limit / 2**20:.0f} "
          f"MiB memory limit; worker peaks "
          f"{[round(p / 2**20) for p in peaks.values()]} MiB (idle "
          f"{[round(p / 2**20) for p in idle.values()]}); restarted {report['workers_restarted']},"
          f" paused {report['worker_paused_events']}", file=sys.stderr)
    emit(report)


if __name__ == "__main__":
    main()
