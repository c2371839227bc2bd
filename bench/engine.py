"""Engine throughput against a sequential single-process loop, in the same run.

Sweep: patch counts x patch sizes with the watershed segmenter. For each cell of the sweep a
synthetic patch store is written, then

- ``loop``: one process reads each patch, segments it and repairs it (no Dask);
- ``engine``: ``codexdask.engine.runner.run`` on a fresh embedded LocalCluster (one single-threaded
  worker per core), pickles and mosaics off so both do the same work plus the engine's Zarr
  writes.

Both sides are warmed up first (imports and first calls on a tiny patch, in the driver for the
loop and on every worker for the engine); the cluster's start-up and warm-up time is reported
separately as ``engine_startup_s``.

- ``machine ceiling``: the loop split over as many independent processes as there are workers
  (no Dask, no writes): the speed-up the cores themselves allow, to read the engine's against.

Reports patches/s, megapixels/s, the speed-up ratios, peak RSS of the driver (sampled) and of each
worker (VmHWM of the fresh worker processes). Prints one JSON object as its last line.

    python bench/engine.py --quick            # 16 patches of 256^2 and 512^2
    python bench/engine.py                    # counts 16 64 256 x sizes 256 512 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, max_rss_bytes, peak_rss  # noqa: E402

from codexdask.config import PatchConfig, SegmentConfig  # noqa: E402
from codexdask.engine.cluster import local_cluster  # noqa: E402
from codexdask.engine.runner import run, run_serial  # noqa: E402
from codexdask.engine.tasks import repair_patch  # noqa: E402
from codexdask.segmenters import get_segmenter  # noqa: E402
from codexdask.store.patch_store import open_patch_store, write_patch_store  # noqa: E402
from codexdask.synthetic import synthetic_slide  # noqa: E402

BASE = 2048  # side of the synthetic slide that is tiled to make large stores


def make_store(path: Path, n_patches: int, size: int, seed: int = 0) -> Path:
    """A store of ``n_patches`` informative ``size``² patches cut from a tiled synthetic slide."""
    slide = synthetic_slide(BASE, BASE, seed=seed, empty_fraction=0.0)
    cols = int(np.ceil(np.sqrt(n_patches)))
    rows = int(np.ceil(n_patches / cols))
    reps_y = -(-rows * size // BASE)
    reps_x = -(-cols * size // BASE)
    base = da.from_array(slide.image, chunks=(1, 1024, 1024))
    tiled = da.tile(base, (1, reps_y, reps_x))[:, : rows * size, : cols * size]
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                         patch_size=(size, size), overlap=0.0)
    return write_patch_store(tiled, path, config, channel_names=slide.channel_names)


def warm_up() -> None:
    """Import and run everything once on a tiny patch (lazy imports, first-call costs)."""
    slide = synthetic_slide(128, 128, seed=1, empty_fraction=0.0)
    labels = get_segmenter("watershed").predict(slide.two_channel()[np.newaxis], 0.5)
    repair_patch(labels[0], "lowest-label")


def loop_seconds(store: Path) -> tuple[float, int]:
    warm_up()
    start = time.perf_counter()
    count = sum(1 for _ in run_serial(store, SegmentConfig()))
    return time.perf_counter() - start, count


def _loop_share(store: Path, share: int, n_shares: int) -> float:
    warm_up()
    patch_store = open_patch_store(store)
    segmenter = get_segmenter("watershed")
    start = time.perf_counter()
    for index in patch_store.informative_indices[share::n_shares]:
        labels = segmenter.predict(patch_store.patches[index][np.newaxis], patch_store.image_mpp)
        repair_patch(labels[0], "lowest-label")
    return time.perf_counter() - start


def machine_ceiling_seconds(store: Path, n_processes: int) -> float:
    """The loop split over ``n_processes`` independent processes: what the cores allow.

    No Dask, no writes, no scheduling: the slowest share's time is the best any engine could do on
    this machine, so ``loop_s / ceiling_s`` is the machine's own parallel speed-up.
    """
    with ProcessPoolExecutor(n_processes, mp_context=get_context("spawn")) as pool:
        shares = pool.map(_loop_share, [store] * n_processes, range(n_processes),
                          [n_processes] * n_processes)
        return max(shares)


def engine_seconds(store: Path, out: Path, n_workers: int) -> tuple[float, float, list[int]]:
    """Seconds of ``run`` on a warm cluster, seconds to start and warm it, worker peak RSS."""
    start = time.perf_counter()
    with local_cluster(SegmentConfig(n_workers=n_workers)) as cluster, Client(cluster) as client:
        client.run(warm_up)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        run(store, out, SegmentConfig(save_pickles=False, save_mosaics=False, n_overlays=0),
            client=client)
        seconds = time.perf_counter() - start
        worker_peaks = list(client.run(max_rss_bytes).values())
    return seconds, startup, worker_peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="16 patches of 256² and 512²")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.sizes = [16], [256, 512]

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for count in args.counts:
                store = make_store(Path(tmp) / f"s{size}-{count}.zarr", count, size)
                with peak_rss() as loop_peak:
                    loop_s, n = loop_seconds(store)
                ceiling_s = machine_ceiling_seconds(store, args.workers)
                with peak_rss() as driver_peak:
                    engine_s, startup_s, worker_peaks = engine_seconds(
                        store, Path(tmp) / f"out{size}-{count}", args.workers)
                megapixels = n * size * size / 1e6
                case = {
                    "patch_size": size, "patches": n, "workers": args.workers,
                    "loop_s": loop_s, "engine_s": engine_s, "engine_startup_s": startup_s,
                    "loop_patches_per_s": n / loop_s, "engine_patches_per_s": n / engine_s,
                    "loop_megapixels_per_s": megapixels / loop_s,
                    "engine_megapixels_per_s": megapixels / engine_s,
                    "speedup": loop_s / engine_s,
                    "machine_ceiling_s": ceiling_s,
                    "machine_speedup": loop_s / ceiling_s,
                    "loop_peak_rss_bytes": loop_peak["peak"],
                    "driver_peak_rss_bytes": driver_peak["peak"],
                    "worker_peak_rss_bytes": worker_peaks,
                }
                cases.append(case)
                print(f"{size}² x {n}: loop {loop_s:.1f} s, engine {engine_s:.1f} s, "
                      f"speed-up {case['speedup']:.2f} (machine ceiling "
                      f"{case['machine_speedup']:.2f}), worker peak "
                      f"{max(worker_peaks) / 2**20:.0f} MiB", file=sys.stderr)
    emit({"benchmark": "engine", "segmenter": "watershed", "cases": cases})


if __name__ == "__main__":
    main()
