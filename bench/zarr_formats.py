"""Store formats: Zarr v3 (sharded mosaics, OME-Zarr 0.5) against v2, and against the last
version on zarr 2, on the same synthetic slide in one run.

Three sides, each in a subprocess on a fresh ``LocalCluster`` (2 single-threaded workers, the
watershed segmenter, mosaics on, pickles and overlays off), for ``full_image`` (seamless blocks)
and ``patches`` (512² patches, 10 % overlap):

- ``before``: ``--before-python`` (a python whose codexdask is the previous release, on zarr 2);
- ``v2``: this codexdask with ``zarr_format: 2`` (zarr 3 writing Zarr v2, OME-Zarr 0.4);
- ``v3``: this codexdask's default (Zarr v3, sharded mosaics, OME-Zarr 0.5).

Reported per side and mode: files (and bytes) of the patch store, the result store and the
mosaics; seconds of the run (segmentation, repair and mosaics); worker peak RSS; the result
store's write speed (every patch's nine masks written again into a new store of the side's
format with ``write_patch_result``) and read speed (every mask array read whole), in megapixels
per second; a hash of all mask arrays, which must be equal on every side. Ratios v3 / before and
v3 / v2 for the times.

    python bench/zarr_formats.py --before-python /path/to/old/python [--size 4096]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODES = ("full_image", "patches")


def files_and_bytes(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def side(args: argparse.Namespace) -> dict[str, Any]:
    """One side: patch, segment, then rewrite and read the result store (in this process)."""
    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    sys.path.insert(0, str(HERE))
    from memory import peak_rss_bytes, warm_up

    from codexdask.config import PatchConfig, SegmentConfig
    from codexdask.engine.runner import run
    from codexdask.layout import MASK_NAMES, RESULT_STORE
    from codexdask.outputs import create_result_store, write_patch_result
    from codexdask.store.patch_store import write_patch_store
    from codexdask.synthetic import synthetic_slide

    def formatted(cls: Any, **options: Any) -> Any:
        if args.zarr_format and "zarr_format" in inspect.signature(cls).parameters:
            options["zarr_format"] = args.zarr_format
        return cls(**options)

    tmp = Path(args.tmp)
    slide = synthetic_slide(args.size, args.size, seed=0)
    patch_config = formatted(PatchConfig, nucleus="DAPI", wholecell=slide.membrane_channels,
                             split_mode=args.mode, patch_size=(512, 512), overlap=0.1)
    store = write_patch_store(slide.image, tmp / "slide.zarr", patch_config,
                              channel_names=slide.channel_names)
    config = formatted(SegmentConfig, save_pickles=False, n_overlays=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        client.run(warm_up)
        start = time.perf_counter()
        manifest = run(store, tmp / "out", config, client=client).manifest
        seconds = time.perf_counter() - start
        peaks = client.run(peak_rss_bytes)
    result = tmp / "out" / RESULT_STORE
    group = zarr.open_group(str(result), mode="r")
    digest = hashlib.sha256()
    start = time.perf_counter()
    masks = {name: np.asarray(group[name][:]) for name in MASK_NAMES}
    read_s = time.perf_counter() - start
    for name in MASK_NAMES:
        digest.update(masks[name].tobytes())
    n, h, w = masks[MASK_NAMES[0]].shape
    done = np.flatnonzero(np.asarray(group["done"][:]))
    copy = formatted(create_result_store, path=tmp / "copy.zarr", n_patches=n,
                     patch_shape=(h, w), patch_store="x")
    start = time.perf_counter()
    for i in done:
        write_patch_result(copy, int(i), {name: masks[name][i] for name in MASK_NAMES},
                           {"n_cells": 1})
    write_s = time.perf_counter() - start
    megapixels = len(MASK_NAMES) * len(done) * h * w / 1e6
    return {
        "seconds": seconds,
        "graph_s": manifest["timings"]["graph_s"],
        "outputs_s": manifest["timings"]["outputs_s"],
        "worker_peak_rss_bytes": max(peaks.values()),
        "patch_store": files_and_bytes(store),
        "result_store": files_and_bytes(result),
        "mosaics": files_and_bytes(tmp / "out" / "mosaics"),
        "result_write_mp_per_s": megapixels / write_s,
        "result_read_mp_per_s": len(MASK_NAMES) * n * h * w / 1e6 / read_s,
        "masks_sha256": digest.hexdigest()[:16],
        "zarr": zarr.__version__,
    }


def run_side(python: str, mode: str, zarr_format: int | None, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zarr-formats-") as tmp:
        command = [python, __file__, "--side", "--mode", mode, "--size", str(size),
                   "--tmp", tmp, "--zarr-format", str(zarr_format or 0)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before-python", help="python of the previous release (zarr 2)")
    parser.add_argument("--size", type=int, default=4096, help="slide side")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--zarr-format", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args)))
        return
    sides = {"v2": (sys.executable, 2), "v3": (sys.executable, 3)}
    if args.before_python:
        sides = {"before": (args.before_python, None), **sides}
    report: dict[str, Any] = {"size": args.size, "workers": 2}
    for mode in MODES:
        results = {name: run_side(python, mode, fmt, args.size)
                   for name, (python, fmt) in sides.items()}
        hashes = {r["masks_sha256"] for r in results.values()}
        ratios = {f"{key}_v3_over_{base}": results["v3"][key] / results[base][key]
                  for base in sides if base != "v3"
                  for key in ("seconds", "worker_peak_rss_bytes")}
        report[mode] = {**results, "same_masks": len(hashes) == 1, **ratios}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
