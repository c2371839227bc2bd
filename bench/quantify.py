"""Per-cell quantification against the floor (reading the slide once) and regionprops_table.

A finished ``full_image`` run is synthesised block by block, so that no step holds the slide: a
Zarr slide ``(C, S, S)`` uint16 (``--channels``, default 20) whose cells sit on a jittered
lattice, one per 16 × 16 px (``--cells``, default 100,000: S = 5,072), ellipses at random
angles with nuclei of half their size; the matched, cytoplasm and raw masks of a result store
chunked 1024², and the patch store and manifest a run leaves. Then, on one ``LocalCluster``
(``--workers`` single-threaded worker processes):

- ``speed`` (default): ``codexdask.quantify`` (matched masks: cell, nucleus, cytoplasm means
  and shapes), the same without shapes, and on one worker; the *floor*: one task per chunk reading
  every channel once through the same reader; in the driver, scikit-image's
  ``regionprops_table`` on the whole arrays in memory (one call per compartment with the 20
  channels as a multichannel intensity image — faster than one call per channel — plus the
  shape properties of cells and nuclei). Reported: seconds and the ratios
  ``quantify / floor`` (aim <= 2) and ``regionprops / quantify`` (aim >= 10), and the largest
  difference between the two tables' means and shape columns.
- ``memory``: the slide grown (``--sizes``, multiples of the workers' total memory limit, 2 x
  ``--memory-limit``); each size on a fresh cluster, peak RSS (``VmHWM``) of each worker
  against the slide's bytes.

    python bench/quantify.py --quick         # 10,000 cells, 8 channels: a smoke run
    python bench/quantify.py --format tiff   # the same slide as a zlib-compressed OME-TIFF
    python bench/quantify.py                 # 100,000 cells x 20 channels (a few minutes)
    python bench/quantify.py memory          # slides of 1x, 2x, 4x 1 GiB, 2 x 500 MiB workers
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, max_rss_bytes  # noqa: E402

from codexdask.boxes import Box  # noqa: E402
from codexdask.config import PatchConfig  # noqa: E402
from codexdask.layout import (  # noqa: E402
    CELL,
    CELL_MATCHED_MASK,
    CELL_OUTSIDE_NUCLEUS_MASK,
    DONE_ARRAY,
    NUCLEUS,
    NUCLEUS_MATCHED_MASK,
    RESULT_STORE,
)
from codexdask.outputs import create_result_store, write_manifest  # noqa: E402
from codexdask.quantification import quantify  # noqa: E402
from codexdask.seamless.blocks import Blocks  # noqa: E402
from codexdask.store.patch_store import patch_slide  # noqa: E402
from codexdask.store.slide import open_slide  # noqa: E402

SPACING = 16  # one cell per 16 x 16 px: ellipses of semi-axes 5-7 and 3.5-5 px, apart
CHUNK = 1024


def lattice_block(box: Box, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus labels ``(h, w)`` uint32 over ``box`` of the lattice slide."""
    cell = np.zeros(box.shape, np.uint32)
    nucleus = np.zeros(box.shape, np.uint32)
    per_row = side // SPACING
    yy, xx = np.mgrid[-SPACING:2 * SPACING, -SPACING:2 * SPACING]  # around a lattice site
    for row in range(max(0, box.top // SPACING - 1), min(per_row, box.bottom // SPACING + 2)):
        for col in range(max(0, box.left // SPACING - 1),
                         min(per_row, box.right // SPACING + 2)):
            ident = row * per_row + col + 1
            rng = np.random.default_rng(ident)
            cy, cx = 0.5 * SPACING + rng.uniform(-1, 1, 2)
            major, minor, angle = rng.uniform(5, 7), rng.uniform(3.5, 5), rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
            v = (xx - cx) * np.cos(angle) - (yy - cy) * np.sin(angle)
            inside = (u / major) ** 2 + (v / minor) ** 2
            site = Box(row * SPACING - SPACING, col * SPACING - SPACING,
                       row * SPACING + 2 * SPACING, col * SPACING + 2 * SPACING)
            part = site.intersection(box)
            if part.is_empty():
                continue
            local = inside[part.slices(site)]
            cell[part.slices(box)][local <= 1] = ident
            nucleus[part.slices(box)][local <= 0.25] = ident
    return cell, nucleus


def make_run(folder: Path, side: int, channels: int) -> Path:
    """A finished full_image run of a ``side``² lattice slide with ``channels`` channels."""
    slide_path = folder / "slide.zarr"
    slide = zarr.open_array(str(slide_path), mode="w", shape=(channels, side, side),
                            chunks=(1, CHUNK, CHUNK), dtype=np.uint16)
    blocks = [Box(y, x, min(y + CHUNK, side), min(x + CHUNK, side))
              for y in range(0, side, CHUNK) for x in range(0, side, CHUNK)]
    masks: dict[Box, tuple[np.ndarray, np.ndarray]] = {}
    for box in blocks:
        cell, nucleus = lattice_block(box, side)
        noise = np.random.default_rng(box.top * side + box.left)
        for c in range(channels):
            level = (cell.astype(np.uint64) * (2654435761 + 97 * c) % 3000).astype(np.uint16)
            slide[(c,) + box.slices()] = level + noise.integers(0, 60, box.shape, np.uint16)
        masks[box] = (cell, nucleus) if len(blocks) <= 64 else ()  # type: ignore[assignment]
    store = patch_slide(slide_path, folder / "slide.cd.zarr", PatchConfig(
        nucleus="channel_0", wholecell=["channel_1"], split_mode="full_image",
        chunk_size=CHUNK, non_zero_perc_threshold=0.0))
    out = folder / "run"
    out.mkdir()
    group = create_result_store(out / RESULT_STORE, 1, (side, side), patch_store=store.resolve(),
                                blocks=Blocks(CHUNK, 0))
    for box in blocks:
        cell, nucleus = masks.get(box) or lattice_block(box, side)
        where = (0,) + box.slices()
        for name, mask in ((CELL, cell), (NUCLEUS, nucleus), (CELL_MATCHED_MASK, cell),
                           (NUCLEUS_MATCHED_MASK, nucleus),
                           (CELL_OUTSIDE_NUCLEUS_MASK, np.where(nucleus > 0, 0, cell))):
            group[name][where] = mask
    group[DONE_ARRAY][0] = True
    write_manifest(out, {"synthetic": "bench/quantify.py"})
    return out


def read_chunk(path: str, channels: int, box: Box) -> int:
    """The floor's task: every channel of one chunk, read once (bytes read)."""
    slide = open_slide(path)
    return sum(np.asarray(slide.data[(c,) + box.slices()].compute(scheduler="synchronous"))
               .nbytes for c in range(channels))


def floor_seconds(client: Client, slide: str, side: int, channels: int) -> float:
    boxes = [Box(y, x, min(y + CHUNK, side), min(x + CHUNK, side))
             for y in range(0, side, CHUNK) for x in range(0, side, CHUNK)]
    start = time.perf_counter()
    futures = client.map(read_chunk, [slide] * len(boxes), [channels] * len(boxes), boxes,
                         pure=False)
    client.gather(futures)
    return time.perf_counter() - start


def regionprops_tables(run: Path, slide: str) -> tuple[float, dict[str, Any]]:
    """regionprops_table on the whole arrays in memory: seconds (reading excluded) and tables."""
    from skimage.measure import regionprops_table

    group = zarr.open_group(str(run / RESULT_STORE), mode="r")
    image = np.moveaxis(np.asarray(zarr.open_array(slide, mode="r")[:]), 0, -1)
    labels = {name: np.asarray(group[name][0]) for name in
              (CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK, CELL_OUTSIDE_NUCLEUS_MASK)}
    shape = ["label", "centroid", "area", "axis_major_length", "axis_minor_length",
             "eccentricity", "solidity", "extent", "orientation", "perimeter", "area_convex"]
    start = time.perf_counter()
    tables = {name: regionprops_table(mask, intensity_image=image,
                                      properties=["label", "intensity_mean"])
              for name, mask in labels.items()}
    for name in (CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK):
        tables[name + ":shape"] = regionprops_table(labels[name], properties=shape)
    return time.perf_counter() - start, tables


def largest_differences(out: Path, tables: dict[str, Any]) -> dict[str, float]:
    import pandas as pd

    found = {}
    for compartment, name in (("cell", CELL_MATCHED_MASK), ("nucleus", NUCLEUS_MATCHED_MASK),
                              ("cytoplasm", CELL_OUTSIDE_NUCLEUS_MASK)):
        ours = pd.read_csv(out / f"{compartment}.csv", float_precision="round_trip")
        theirs = tables[name]
        means = np.stack([theirs[f"intensity_mean-{c}"] for c in range(len(theirs) - 1)], 1)
        found[f"{compartment}_mean_rel"] = float(np.max(
            np.abs(ours.iloc[:, 1:1 + means.shape[1]].to_numpy() - means)
            / np.maximum(1, np.abs(means))))
    ours = pd.read_csv(out / "cell.csv", float_precision="round_trip")
    theirs = tables[CELL_MATCHED_MASK + ":shape"]
    for column, key in (("Solidity", "solidity"), ("Perimeter", "perimeter"),
                        ("MajorAxisLength", "axis_major_length"), ("Y_centroid", "centroid-0")):
        found[f"cell_{column}_rel"] = float(np.max(np.abs(ours[column] - theirs[key])
                                                   / np.maximum(1, np.abs(theirs[key]))))
    return found


def as_ome_tiff(zarr_slide: Path, out: Path) -> Path:
    """The Zarr slide as a tiled (1024²), zlib-compressed OME-TIFF, written tile by tile."""
    import tifffile

    source = zarr.open_array(str(zarr_slide), mode="r")
    channels, height, width = source.shape

    def tiles():  # tifffile's order: page by page, tiles row by row
        for c in range(channels):
            for y in range(0, height, CHUNK):
                for x in range(0, width, CHUNK):
                    tile = np.zeros((CHUNK, CHUNK), np.uint16)
                    part = source[c, y:y + CHUNK, x:x + CHUNK]
                    tile[: part.shape[0], : part.shape[1]] = part
                    yield tile

    tifffile.imwrite(out, tiles(), shape=source.shape, dtype=np.uint16, tile=(CHUNK, CHUNK),
                     compression="zlib", photometric="minisblack", ome=True,
                     metadata={"axes": "CYX"})
    return out


def speed(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    side = math.ceil(math.sqrt(args.cells)) * SPACING
    run = make_run(folder, side, args.channels)
    slide = str(folder / "slide.zarr")
    if args.format == "tiff":
        slide = str(as_ome_tiff(folder / "slide.zarr", folder / "slide.ome.tif"))
    result: dict[str, Any] = {"mode": "speed", "format": args.format, "side": side,
                              "channels": args.channels, "workers": args.workers}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        quantify(run, folder / "warm", client=client, chunk_size=256, slide=slide)  # compile
        result["floor_s"] = floor_seconds(client, slide, side, args.channels)
        start = time.perf_counter()
        done = quantify(run, folder / "q", client=client, slide=slide)
        result["quantify_s"] = time.perf_counter() - start
        result["cells"] = done.manifest["objects"]["cell"]
        start = time.perf_counter()
        quantify(run, folder / "q_no_shapes", client=client, morphology=False, slide=slide)
        result["quantify_no_shapes_s"] = time.perf_counter() - start
        result["floor_again_s"] = floor_seconds(client, slide, side, args.channels)
        result["passes_s"] = done.manifest["timings"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        quantify(run, folder / "warm1", client=client, chunk_size=256, slide=slide)
        start = time.perf_counter()
        quantify(run, folder / "q1", client=client, slide=slide)
        result["quantify_one_worker_s"] = time.perf_counter() - start
        result["floor_one_worker_s"] = floor_seconds(client, slide, side, args.channels)
    result["regionprops_s"], tables = regionprops_tables(run, str(folder / "slide.zarr"))
    result["largest_difference"] = largest_differences(folder / "q", tables)
    floor = min(result["floor_s"], result["floor_again_s"])
    result["ratios"] = {
        "quantify_over_floor": result["quantify_s"] / floor,
        "quantify_no_shapes_over_floor": result["quantify_no_shapes_s"] / floor,
        "regionprops_over_quantify": result["regionprops_s"] / result["quantify_s"],
        "regionprops_over_quantify_one_worker": (result["regionprops_s"]
                                                 / result["quantify_one_worker_s"]),
    }
    return result


def memory(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from dask.utils import parse_bytes

    limit = parse_bytes(args.memory_limit)
    total = limit * args.workers
    base_side = math.ceil(math.sqrt(total / (2 * args.channels)) / CHUNK) * CHUNK
    rows = []
    for factor in args.sizes:
        side = math.ceil(base_side * math.sqrt(factor) / CHUNK) * CHUNK
        where = folder / f"x{factor}"
        where.mkdir()
        run = make_run(where, side, args.channels)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            idle = client.run(max_rss_bytes)
            start = time.perf_counter()
            done = quantify(run, where / "q", client=client)
            seconds = time.perf_counter() - start
            peaks = client.run(max_rss_bytes)
        slide_bytes = 2 * args.channels * side * side
        rows.append({"side": side, "slide_bytes": slide_bytes,
                     "slide_over_workers_memory": slide_bytes / total,
                     "cells": done.manifest["objects"]["cell"], "seconds": seconds,
                     "worker_peak_rss": sorted(peaks.values()),
                     "worker_idle_rss": sorted(idle.values())})
        print(json.dumps(rows[-1]), file=sys.stderr)
        import shutil
        shutil.rmtree(where)
    return {"mode": "memory", "memory_limit_per_worker": limit, "workers": args.workers,
            "channels": args.channels, "sizes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=("speed", "memory"), default="speed")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="500MiB")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 2, 4])
    parser.add_argument("--format", choices=("zarr", "tiff"), default="zarr",
                        help="the slide measured: Zarr (1024² chunks, Blosc) or a tiled, "
                             "zlib-compressed OME-TIFF of the same pixels")
    parser.add_argument("--quick", action="store_true", help="10,000 cells, 8 channels")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.channels, args.sizes = 10_000, 8, [0.25, 0.5]
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        emit(speed(args, Path(tmp)) if args.mode == "speed" else memory(args, Path(tmp)))


if __name__ == "__main__":
    main()
