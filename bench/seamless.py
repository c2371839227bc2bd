"""Seamless logical patches: speed against the one-piece and patches modes, memory against size.

``speed`` — one synthetic slide (default 6000², the watershed segmenter, 2 single-threaded
workers, no pickles or mosaics), three runs side by side, each on a fresh ``LocalCluster``:

- ``seamless``: ``full_image`` in compute blocks (``--block-size``, default the segmenter's 1536);
- ``one_piece``: ``full_image`` with ``block_size: none`` (the whole slide is one task);
- ``patches``: ``patches`` mode, 512² patches with 10 % overlap (cells cut at patch edges and the
  overlaps counted twice).

Reported per run: wall seconds of ``engine.run``, megapixels of slide per second, cells found,
worker peak RSS; and the ratios seamless / one_piece and seamless / patches.

``memory`` — full_image slides of growing size (default 2048², 8192² and one whose two uint16
channels are ``--ratio`` times the workers' total memory limit), each segmented on a fresh cluster
of workers with ``--memory-limit``; reported per slide: worker peak RSS (``VmHWM``), workers
paused or restarted, and the spread of the peaks across sizes (max / min). Big slides are a
2048² synthetic slide tiled lazily (tissue with tissue-free regions, ``--empty-fraction`` of it
by default 0.6, as on whole slides), so building them is cheap.

``large`` — objects larger than the halo (Mesmer with converted random weights, whose objects are
up to ~330 px across, on PyTorch's CPU; ``--image``: the MIBI field of ``shared/real_data`` at
0.377 µm/px, or the tests' 1000² Voronoi tissue at 0.5 µm/px), ``full_image`` in blocks of
``--block-size`` (default 384), four runs side by side, each on a fresh ``LocalCluster``:

- ``regrow``: the halo ``--halo`` (default the segmenter's), objects larger than it regrown;
- ``drop``: the same halo with ``max_window: 0`` (such objects dropped: the common case's cost);
- ``large_halo``: a halo that holds the largest one-piece object (half its extent + 16 µm), the
  alternative a user had before;
- ``one_piece``: ``block_size: none``, the reference.

Reported per run: seconds, objects, dropped and regrown objects, grown windows and their seconds,
and the agreement of each compartment with the one-piece labels (identical objects, pixels); and
the ratios regrow / drop and regrow / large_halo.

    python bench/seamless.py speed [--size 6000]
    python bench/seamless.py memory [--sizes 2048 8192] [--ratio 4] [--memory-limit 600MiB]
    python bench/seamless.py large [--image mibi|tissue] [--halo N] [--block-size 256]
    python bench/seamless.py speed --quick      # 2000², a smoke run
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
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from memory import log_lines, memory_events, peak_rss_bytes, warm_up  # noqa: E402

from codexdask.config import PatchConfig, SegmentConfig  # noqa: E402
from codexdask.engine.runner import run  # noqa: E402
from codexdask.store.patch_store import write_patch_store  # noqa: E402
from codexdask.synthetic import synthetic_slide  # noqa: E402

BASE = 2048  # side of the synthetic slide tiled to make big slides
QUIET = {"save_pickles": False, "save_mosaics": False, "n_overlays": 0}


def slide_store(path: Path, size: int, mode: str, *, tiled: bool, seed: int = 0,
                empty_fraction: float = 0.35) -> Path:
    """A ``size``² synthetic slide as a patch store of ``mode``."""
    if tiled:
        slide = synthetic_slide(BASE, BASE, seed=seed, empty_fraction=empty_fraction)
        reps = (1, -(-size // BASE), -(-size // BASE))
        image = da.tile(da.from_array(slide.image, chunks=(1, 1024, 1024)), reps)[
            :, :size, :size]
    else:
        slide = synthetic_slide(size, size, seed=seed)
        image = slide.image
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels, split_mode=mode,
                         patch_size=(512, 512), overlap=0.1)
    return write_patch_store(image, path, config, channel_names=slide.channel_names)


def timed_run(store: Path, out: Path, config: SegmentConfig, workers: int,
              memory_limit: int | str = "auto") -> dict[str, Any]:
    """``engine.run`` on a fresh cluster: seconds, cells, worker peaks and memory events."""
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
        idle = client.run(warm_up)
        before = set(client.scheduler_info(n_workers=-1)["workers"])
        start = time.perf_counter()
        result = run(store, out, config, client=client)
        seconds = time.perf_counter() - start
        peaks = client.run(peak_rss_bytes)
        after = set(client.scheduler_info(n_workers=-1)["workers"])
        events = memory_events(client)
        logs = log_lines(client)
    informative = result.metadata[result.metadata["is_informative"].astype(bool)]
    return {
        "seconds": seconds,
        "cells": int(informative["n_cells"].sum()),
        "nuclei": int(informative["n_nuclei"].sum()),
        "worker_idle_rss_bytes": list(idle.values()),
        "worker_peak_rss_bytes": list(peaks.values()),
        "workers_restarted": len(after - before),
        "worker_paused_events": len(events["paused"]),
        "memory_log_lines": logs,
        "seamless": result.manifest.get("seamless", {}).get("blocks"),
        "regrown": result.manifest.get("seamless", {}).get("regrown"),
        "dropped": result.manifest.get("seamless", {}).get("dropped"),
        "warnings": result.manifest["warnings"],
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    size = 2000 if args.quick else args.size
    megapixels = size * size / 1e6
    runs = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        stores = {mode: slide_store(Path(tmp) / f"{mode}.zarr", size, mode, tiled=False)
                  for mode in ("full_image", "patches")}
        settings = {
            "seamless": ("full_image", {"block_size": args.block_size}),
            "one_piece": ("full_image", {"block_size": "none"}),
            "patches": ("patches", {}),
        }
        for name, (mode, extra) in settings.items():
            config = SegmentConfig(**QUIET, **extra)
            runs[name] = timed_run(stores[mode], Path(tmp) / name, config, args.workers)
            runs[name]["megapixels_per_s"] = megapixels / runs[name]["seconds"]
            print(f"{name}: {runs[name]['seconds']:.1f} s, "
                  f"{runs[name]['megapixels_per_s']:.2f} MP/s, {runs[name]['cells']} cells, "
                  f"worker peaks {[round(p / 2**20) for p in runs[name]['worker_peak_rss_bytes']]}"
                  " MiB", file=sys.stderr)
    seconds = {name: r["seconds"] for name, r in runs.items()}
    return {
        "benchmark": "seamless-speed",
        "slide": [size, size],
        "workers": args.workers,
        "runs": runs,
        "seamless_over_one_piece": seconds["seamless"] / seconds["one_piece"],
        "seamless_over_patches": seconds["seamless"] / seconds["patches"],
        "targets": {"seamless_over_one_piece_max": 0.5, "seamless_over_patches_max": 1.25},
    }


def memory(args: argparse.Namespace) -> dict[str, Any]:
    limit = parse_bytes(args.memory_limit)
    total = limit * args.workers
    big = math.ceil(math.sqrt(args.ratio * total / 4))  # two uint16 channels
    sizes = [*args.sizes, big] if args.ratio > 0 else list(args.sizes)
    runs = []
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            start = time.perf_counter()
            store = slide_store(Path(tmp) / "slide.zarr", size, "full_image", tiled=True,
                                empty_fraction=args.empty_fraction)
            store_s = time.perf_counter() - start
            config = SegmentConfig(**QUIET, block_size=args.block_size)
            report = timed_run(store, Path(tmp) / "out", config, args.workers, limit)
        report.update(size=size, store_s=store_s, slide_bytes=size * size * 4,
                      slide_over_total_limit=size * size * 4 / total,
                      megapixels_per_s=size * size / 1e6 / report["seconds"])
        runs.append(report)
        print(f"{size}²: {report['seconds']:.0f} s, worker peaks "
              f"{[round(p / 2**20) for p in report['worker_peak_rss_bytes']]} MiB, restarted "
              f"{report['workers_restarted']}, paused {report['worker_paused_events']}",
              file=sys.stderr)
    peaks = [max(r["worker_peak_rss_bytes"]) for r in runs]
    return {
        "benchmark": "seamless-memory",
        "workers": args.workers,
        "memory_limit_bytes": limit,
        "runs": runs,
        "peak_spread": max(peaks) / min(peaks),
        "any_restart_or_pause": any(r["workers_restarted"] or r["worker_paused_events"]
                                    for r in runs),
        "targets": {"peak_spread_max": 1.3},
    }


REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "real_data"


def large(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from scipy import ndimage as ndi

    from codexdask.mesmer import network
    from codexdask.mesmer.convert import save_network
    from codexdask.outputs import open_result_store
    from codexdask.synthetic.scores import labelling_agreement

    if args.image == "mibi":
        image = np.load(REAL_DATA / "mibi_tnbc_ark_fov8.npz")["image"][:760, :1013]
        mpp = 0.377
    else:  # the Voronoi tissue of the tests, on which the random network makes a few objects
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import tissue_batch  # larger than the default halo

        image = tissue_batch(1, 1000, 1000, seed=1000)[0]
        mpp = 0.5
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        weights = Path(tmp) / "mesmer.safetensors"
        save_network(network.random_network(seed=0), weights, source_name="random seed 0")
        store = write_patch_store(
            image.transpose(2, 0, 1), Path(tmp) / "slide.zarr",
            PatchConfig(nucleus="DAPI", wholecell=["MEM"], split_mode="full_image",
                        image_mpp=mpp), channel_names=["DAPI", "MEM"])
        base = {**QUIET, "backend": "mesmer", "model_path": str(weights), "tiles_per_call": 8}
        one_piece = Path(tmp) / "one_piece"
        runs["one_piece"] = timed_run(store, one_piece, SegmentConfig(**base, block_size="none"),
                                      args.workers)
        reference = open_result_store(one_piece / "masks.zarr")
        expected = [reference[name][0] for name in ("cell", "nucleus")]
        extent = max(max(s.stop - s.start for s in box) for labels in expected
                     for box in ndi.find_objects(labels) if box is not None)
        halo = "auto" if args.halo is None else args.halo
        block = 384 if args.block_size == "auto" else int(args.block_size)
        settings = {"regrow": {"halo": halo}, "drop": {"halo": halo, "max_window": 0},
                    "large_halo": {"halo": math.ceil(extent / 2) + math.ceil(16 / mpp)}}
        for name, extra in settings.items():
            out = Path(tmp) / name
            runs[name] = timed_run(store, out, SegmentConfig(**base, block_size=block, **extra),
                                   args.workers)
            got = open_result_store(out / "masks.zarr")
            runs[name]["agreement"] = [labelling_agreement(e, got[n][0]) for e, n in
                                       zip(expected, ("cell", "nucleus"), strict=True)]
            print(f"{name}: {runs[name]['seconds']:.1f} s, regrown {runs[name]['regrown']}, "
                  f"dropped {runs[name]['dropped']}, identical "
                  f"{[round(a['identical_fraction'], 4) for a in runs[name]['agreement']]}",
                  file=sys.stderr)
    seconds = {name: r["seconds"] for name, r in runs.items()}
    return {
        "benchmark": "seamless-large-objects",
        "image": args.image,
        "slide": list(image.shape[:2]),
        "image_mpp": mpp,
        "largest_object_px": extent,
        "block_size": block,
        "workers": args.workers,
        "runs": runs,
        "regrow_over_drop": seconds["regrow"] / seconds["drop"],
        "regrow_over_large_halo": seconds["regrow"] / seconds["large_halo"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["speed", "memory", "large"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", default="auto")
    parser.add_argument("--size", type=int, default=6000, help="speed: slide side")
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 8192],
                        help="memory: slide sides before the big one")
    parser.add_argument("--ratio", type=float, default=4.0,
                        help="memory: the big slide's bytes / the workers' total memory limit")
    parser.add_argument("--memory-limit", default="600MiB", help="memory: per worker")
    parser.add_argument("--empty-fraction", type=float, default=0.6,
                        help="memory: tissue-free share of the tiled slide (whole slides are "
                             "mostly background)")
    parser.add_argument("--image", choices=["mibi", "tissue"], default="mibi",
                        help="large: the slide")
    parser.add_argument("--halo", type=int, default=None,
                        help="large: the small halo (default the segmenter's)")
    parser.add_argument("--tmp", default=None, help="directory for the stores (default /tmp)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    emit({"speed": speed, "memory": memory, "large": large}[args.what](args))


if __name__ == "__main__":
    main()
