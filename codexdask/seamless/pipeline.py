"""Logical patches on a Dask cluster: statistics, tiles, stitching, repair (futures).

For every informative logical patch still to do, in order:

1. the segmenter's image-wide statistics, gathered in passes over boxes of the patch (each pass
   one task per box and a tree of combine tasks; the driver advances the passes);
2. one infer task per group of tiles (``resources={"GPU": 1}`` on a GPU cluster; as many tiles
   as fill a network call, one for a segmenter without network tiles) and one store task after
   it; tiles already stored by an interrupted run are skipped;
3. a numbering task, one compose task per core, a chain of match tasks (one per band of tile
   rows, each waiting for the cores of the few rows it reads), one repair task per core (waiting
   for the bands its region touches) and a finishing task, chained by their futures.

Only small results travel (tile reports, counts, the carry between bands); labels, ids,
tallies and the bands' matchings go through the work folder and the result store, so no task
holds anything of the size of the whole patch but the numbering task (the first pixels of all
objects, 8 bytes each) and the band plan. Progress counts tiles and megapixels per second.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from distributed import Client, as_completed

from ..config import SegmentConfig
from ..geometry import Box
from ..layout import TILES_DIR
from ..patches import PatchStore
from ..segmenters import Segmenter
from ..statistics import ImageStatistics
from .grid import tile_grid
from .work import (
    LogicalPatch,
    RunPaths,
    bands_of,
    compose_core,
    create_tile_store,
    finish_patch,
    infer_tiles,
    match_patch_band,
    number_patch,
    plan_bands,
    read_raw,
    repair_bands,
    repair_core,
    store_tiles,
    summarise_tiles,
    tiles_done,
    total,
)

__all__ = ["follow_tiles", "gather_statistics_on", "logical_patches", "resolve_tiles",
           "run_logical_patches", "seamless_notes", "tile_plan_shape"]

logger = logging.getLogger(__name__)

#: Partial statistics combined per task in the trees of combine tasks.
COMBINE_FAN_IN = 16


def resolve_tiles(
    config: SegmentConfig, segmenter: Segmenter, image_mpp: float, patch_store: PatchStore
) -> dict[str, int]:
    """The run's ``tile_size`` and ``halo`` in pixels.

    ``tile_size: none`` makes every logical patch one tile without halo (the one-piece
    baseline); ``auto`` values come from the segmenter.
    """
    if config.tile_size == "none":
        return {"tile_size": max(patch_store.patch_shape), "halo": 0}
    tile = (segmenter.tile_size(image_mpp) if config.tile_size == "auto"
            else int(config.tile_size))
    halo = segmenter.halo(image_mpp) if config.halo == "auto" else int(config.halo)
    return {"tile_size": int(tile), "halo": int(halo)}


def logical_patches(patch_store: PatchStore, tile_size: int, halo: int) -> list[LogicalPatch]:
    """Every patch of the store with its tiles; tile ids run over all patches in store order."""
    patches, first = [], 0
    for index in range(patch_store.n_patches):
        box = patch_store.patch_box(index)
        grid = tile_grid(box.shape, tile_size, halo)
        patches.append(LogicalPatch(index, box, grid, first))
        first += grid.n_tiles
    return patches


def run_logical_patches(
    client: Client,
    patch_store: PatchStore,
    todo: np.ndarray,
    segmenter: Segmenter,
    image_mpp: float,
    config: SegmentConfig,
    out_dir: Path,
    tiles: dict[str, int],
    *,
    tiles_per_task: int,
    pin_gpu: bool,
    progress: bool,
) -> dict[str, Any]:
    """Segment, stitch and repair the logical patches ``todo`` (store row indices).

    Returns
    -------
    dict
        ``tiles`` (total and computed now), ``dropped`` and ``conflicts`` per compartment, and
        ``patches`` (one summary per patch).
    """
    everything = logical_patches(patch_store, tiles["tile_size"], tiles["halo"])
    paths = RunPaths(str(patch_store.path.resolve()), str(out_dir / "masks.zarr"),
                     str(out_dir / TILES_DIR))
    window = max((p.grid.window_shape for p in everything), key=lambda s: s[0] * s[1])
    create_tile_store(paths.tiles, sum(p.grid.n_tiles for p in everything), window,
                      tiles["tile_size"])
    chosen = [everything[int(i)] for i in todo]
    gpu = {"resources": {"GPU": 1}} if pin_gpu else {}
    stored, finished, n_tiles_now, pixels_now = [], [], 0, 0
    for patch in chosen:
        remaining = set(np.flatnonzero(~tiles_done(paths, patch)).tolist())
        stats = gather_statistics_on(client, segmenter, paths, patch, image_mpp) \
            if remaining else None
        # Shipped to each worker once, not inside every tile task (they can be megabytes); a
        # task's result rather than scattered data, so a lost worker's copy is recomputed.
        shared = client.submit(_identity, stats, pure=False) if stats is not None else None
        added, pending = [], []
        for start in range(0, patch.grid.n_tiles, tiles_per_task):
            group = list(range(start, min(start + tiles_per_task, patch.grid.n_tiles)))
            todo_here = [t for t in group if t in remaining]
            inferred = client.submit(infer_tiles, segmenter, paths, patch, group, image_mpp,
                                     shared, pure=False, **gpu)
            report = client.submit(store_tiles, segmenter, inferred, paths, patch, group,
                                   pure=False)
            pending.append(report)
            # added up right after their group, so each tile's result is released early
            if len(pending) == COMBINE_FAN_IN or start + tiles_per_task >= patch.grid.n_tiles:
                added.append(client.submit(summarise_tiles, *pending, pure=False))
                pending = []
            if todo_here:
                if progress:
                    stored.append(report)
                n_tiles_now += len(todo_here)
                pixels_now += sum(patch.grid.core(t).shape[0] * patch.grid.core(t).shape[1]
                                  for t in todo_here)
        finished.append(_chain(client, paths, patch, added, config.tie_break))
    if progress:
        follow_tiles(stored, n_tiles_now, pixels_now)
    summaries = client.gather(finished)
    if _all_done(out_dir, patch_store):  # the work folder is needed only to finish a run
        shutil.rmtree(paths.tiles, ignore_errors=True)
    return {
        "tiles": {"total": sum(p.grid.n_tiles for p in chosen), "computed": n_tiles_now,
                  **tiles},
        "dropped": [sum(s["dropped"][c] for s in summaries) for c in (0, 1)],
        "conflicts": [sum(s["conflicts"][c] for s in summaries) for c in (0, 1)],
        "patches": summaries,
    }


def seamless_notes(report: dict[str, Any]) -> list[str]:
    """Warnings about a seamless run, for the log and the manifest: objects too large for the
    halo (dropped) and pixels two tiles' objects claimed (conflicts)."""
    notes = []
    for c, name in enumerate(("whole-cell", "nucleus")):
        if report["dropped"][c]:
            notes.append(f"{report['dropped'][c]} {name} objects reached the edge of their "
                         f"tile's window (larger than the halo of {report['tiles']['halo']} px "
                         "allows) and were dropped; raise --halo")
        if report["conflicts"][c]:
            notes.append(f"{report['conflicts'][c]} {name} pixels were claimed by objects of "
                         "two tiles (the lower id kept them); raise --halo")
    for note in notes:
        logger.warning(note)
    return notes


def _chain(client: Client, paths: RunPaths, patch: LogicalPatch, summaries: list[Any],
           tie_break: str) -> Any:
    """Submit numbering -> compose per core -> match per band -> repair per core -> finish."""
    stored = _tree(client, summarise_tiles, summaries)
    numbered = client.submit(number_patch, paths, patch, stored, pure=False)
    plan = client.submit(plan_bands, paths, patch, stored, pure=False)
    n_cols, bands = patch.grid.n_cols, bands_of(patch)
    composed = [client.submit(compose_core, paths, patch, tile, numbered, tie_break, pure=False)
                for tile in patch.grid]
    rows = [composed[row * n_cols:(row + 1) * n_cols] for row in range(patch.grid.n_rows)]
    banded: list[Any] = []
    for band in range(bands.n_rows):
        needed = [rows[row] for row in bands.tally_rows(band)]
        banded.append(client.submit(match_patch_band, paths, patch, band, tie_break, plan,
                                    banded[-1] if banded else None, needed, pure=False))
    repaired = [client.submit(repair_core, paths, patch, tile,
                              banded[repair_bands(patch, tile)[-1]], pure=False)
                for tile in patch.grid]
    return client.submit(finish_patch, paths, patch, banded[-1], stored,
                         _tree(client, total, repaired), pure=False)


def _tree(client: Client, func: Any, futures: list[Any]) -> Any:
    """One future of ``func`` applied over ``futures`` through a tree of tasks, each taking
    :data:`COMBINE_FAN_IN` (the parts are released as they are added up)."""
    while True:
        futures = [client.submit(func, *futures[i:i + COMBINE_FAN_IN], pure=False)
                   for i in range(0, len(futures), COMBINE_FAN_IN)]
        if len(futures) == 1:
            return futures[0]


def _identity(value: Any) -> Any:
    return value


def _all_done(out_dir: Path, patch_store: PatchStore) -> bool:
    from ..outputs.result_store import open_result_store

    done = np.asarray(open_result_store(out_dir / "masks.zarr")["done"][:], dtype=bool)
    return bool(done[patch_store.informative_indices].all())


# --------------------------------------------------------------------------------------------
# statistics on the cluster


def gather_statistics_on(
    client: Client, segmenter: Segmenter, paths: RunPaths, patch: LogicalPatch,
    image_mpp: float,
) -> ImageStatistics | None:
    """The segmenter's image-wide statistics of ``patch``, each pass run as Dask tasks."""
    stats = segmenter.statistics(image_mpp)
    while stats is not None and not stats.done:
        # Each group of boxes is submitted with its combine task right after it: the scheduler
        # then combines as it goes, so at most a few groups of partial results are held at once,
        # however many boxes the patch has.
        partials = []
        boxes = stats.boxes(patch.shape)
        for first in range(0, len(boxes), COMBINE_FAN_IN):
            group = [client.submit(_measure, stats, paths, patch, box, pure=False)
                     for box in boxes[first:first + COMBINE_FAN_IN]]
            partials.append(client.submit(stats.combine, group, pure=False))
        stats = stats.advance(_tree(client, functools.partial(_combine, stats), partials).result())
    return stats


def _combine(stats: ImageStatistics, *partials: Any) -> Any:
    return stats.combine(partials)


def _measure(stats: ImageStatistics, paths: RunPaths, patch: LogicalPatch, box: Box) -> Any:
    read_box = stats.read_box(box, patch.shape)
    return stats.measure(read_raw(paths, patch, read_box), read_box, box, patch.shape)


# --------------------------------------------------------------------------------------------
# progress


def follow_tiles(futures: list[Any], n_tiles: int, pixels: int, stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
    """Print tiles done out of ``n_tiles`` and megapixels per second as store tasks finish.

    On a terminal one line is redrawn; elsewhere a line is printed every ``every_s`` seconds
    and at the end. ``futures`` is emptied: each future is let go once counted, so its worker
    can release the result.
    """
    stream = sys.stdout if stream is None else stream
    tty = stream.isatty()
    start = last = time.perf_counter()
    done_tiles = done_pixels = 0
    finishing = as_completed(futures)
    futures.clear()
    for future in finishing:
        if future.status != "finished":
            continue
        for report in future.result():
            done_tiles += 1
            done_pixels += report.pixels
        now = time.perf_counter()
        rate = done_pixels / 1e6 / max(now - start, 1e-9)
        line = (f"tiles: {done_tiles} of {n_tiles} done, {done_pixels / 1e6:.1f} of "
                f"{pixels / 1e6:.1f} MP, {rate:.2f} MP/s")
        if tty:
            print(f"\r{line}", end="", file=stream, flush=True)
        elif now - last >= every_s or done_tiles >= n_tiles:
            print(line, file=stream, flush=True)
            last = now
    if tty:
        print(file=stream)


def tile_plan_shape(patches: Sequence[LogicalPatch]) -> tuple[int, int]:
    """The largest window shape of ``patches``, for the batch planner."""
    return max((p.grid.window_shape for p in patches), key=lambda s: s[0] * s[1],
               default=(1, 1))

