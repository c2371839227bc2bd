"""The tasks of a seamless run: each reads and writes Zarr by path and returns small results.

A logical patch goes through five kinds of task (``docs/architecture.md``, seamless patches):

1. :func:`infer_tiles` (on a GPU worker when there is one) and :func:`store_tiles` (CPU): a
   few windows are segmented, each tile's owned objects are written to the run's work folder
   (``OUT/tiles``: one chunk per tile, a table of first pixels, then the tile's ``done`` flag);
2. :func:`number_patch`: the global ids of every tile's objects (raster order of first pixel);
3. :func:`compose_core`: per core, the stitched labels, their boundaries and the repair tally;
4. :func:`match_patch`: the greedy matching of the whole patch;
5. :func:`repair_core`: per core, the repaired masks; :func:`finish_patch` writes the patch's
   statistics and marks it done.

Every task may run twice (a worker lost, a resumed run) and then writes the same bytes again.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..geometry import Box
from ..layout import DONE_ARRAY, IMAGE_ARRAY, REPAIR_STAT_COLUMNS, STATS_ARRAY
from ..matching import Matching, RepairTally, combine_tallies, match_tally
from ..outputs.atomic import atomic_path
from ..outputs.result_store import LABEL_COMPRESSOR, open_result_store
from ..repair import check_tie_break
from ..segmenters.base import Segmenter, WindowInput
from .grid import TileGrid
from .regions import REPAIR_MARGIN, TALLY_MARGIN, tally_core
from .regions import repair_core as repair_core_masks
from .stitch import compose, number_objects, owned_objects

__all__ = [
    "LogicalPatch",
    "RunPaths",
    "TileReport",
    "compose_core",
    "create_tile_store",
    "finish_patch",
    "infer_tiles",
    "match_patch",
    "number_patch",
    "repair_core",
    "store_tiles",
    "tiles_done",
]

#: The two compartments, in label-channel order (whole-cell, nucleus).
COMPARTMENTS = ("cell", "nucleus")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run reads and writes (absolute paths, valid on every worker).

    Attributes
    ----------
    store : str
        The patch store (its ``image`` array holds the slide).
    result : str
        The result store ``OUT/masks.zarr``.
    tiles : str
        The work folder ``OUT/tiles``.
    """

    store: str
    result: str
    tiles: str


@dataclasses.dataclass(frozen=True)
class LogicalPatch:
    """One logical patch of a run and its compute tiles.

    Attributes
    ----------
    index : int
        Its row in the patch store.
    box : Box
        Where it lies on the slide.
    grid : TileGrid
        Its tiles, in patch coordinates.
    first_tile : int
        Run-wide id of its tile 0 (tiles of all patches are numbered one after the other).
    """

    index: int
    box: Box
    grid: TileGrid
    first_tile: int

    @property
    def shape(self) -> tuple[int, int]:
        """Patch height and width."""
        return self.grid.shape

    def tile_id(self, tile: int) -> int:
        """Run-wide id of the patch's tile ``tile``."""
        return self.first_tile + tile


@dataclasses.dataclass(frozen=True)
class TileReport:
    """What storing one tile found.

    Attributes
    ----------
    tile : int
        Tile index in its patch.
    objects : (int, int)
        Objects kept (whole-cell, nucleus).
    dropped : (int, int)
        Objects the tile owned but could not see whole (larger than the halo allows).
    pixels : int
        Pixels of the tile's core.
    infer_s, postprocess_s : float
        Seconds of the tile's share of its task's inference and of its post-processing.
    """

    tile: int
    objects: tuple[int, int]
    dropped: tuple[int, int]
    pixels: int
    infer_s: float
    postprocess_s: float


# --------------------------------------------------------------------------------------------
# the work folder


def create_tile_store(path: str | Path, n_tiles: int, window_shape: tuple[int, int]) -> None:
    """Create the work folder's arrays unless they exist (a resumed run keeps them).

    ``cell`` and ``nucleus`` ``(n_tiles, h, w)`` uint32 hold each tile's kept objects (one chunk
    per tile); ``done`` ``(n_tiles,)`` bool is set last for a tile.
    """
    root = zarr.open_group(str(Path(path) / "owned.zarr"), mode="a")
    height, width = window_shape
    for name in COMPARTMENTS:
        if name not in root:
            root.create_dataset(name, shape=(n_tiles, height, width), chunks=(1, height, width),
                                dtype=np.uint32, fill_value=0, compressor=LABEL_COMPRESSOR,
                                write_empty_chunks=False)
    if DONE_ARRAY not in root:
        root.create_dataset(DONE_ARRAY, shape=(n_tiles,), chunks=(1,), dtype=bool,
                            fill_value=False)
    (Path(path) / "tables").mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=8)
def _open(path: str, mode: str = "r") -> zarr.Group:
    return zarr.open_group(path, mode=mode)


def _owned(paths: RunPaths) -> zarr.Group:
    return zarr.open_group(str(Path(paths.tiles) / "owned.zarr"), mode="r+")


def _table(paths: RunPaths, tile_id: int) -> Path:
    return Path(paths.tiles) / "tables" / f"tile_{tile_id:07d}.npz"


def tiles_done(paths: RunPaths, patch: LogicalPatch) -> np.ndarray:
    """``(n_tiles,)`` bool: which tiles of ``patch`` are stored."""
    done = _owned(paths)[DONE_ARRAY]
    return np.asarray(done[patch.first_tile:patch.first_tile + patch.grid.n_tiles], dtype=bool)


def read_raw(paths: RunPaths, patch: LogicalPatch, box: Box) -> np.ndarray:
    """Raw pixels ``(h, w, 2)`` of ``box`` (patch coordinates) from the patch store."""
    image = _open(paths.store)[IMAGE_ARRAY]
    return np.asarray(image[box.shift(patch.box.top, patch.box.left).slices()])


# --------------------------------------------------------------------------------------------
# 1. tiles


def infer_tiles(
    segmenter: Segmenter,
    paths: RunPaths,
    patch: LogicalPatch,
    tiles: Sequence[int],
    image_mpp: float,
    statistics: Any,
) -> tuple[Any, float]:
    """Read the windows of ``tiles`` and run the segmenter's accelerator stage on them.

    Returns ``(maps, seconds)``; ``maps`` is ``None`` when every tile is already stored.
    """
    if tiles_done(paths, patch)[list(tiles)].all():
        return None, 0.0
    inputs = []
    for tile in tiles:
        window = patch.grid.window(tile)
        read_box = segmenter.read_box(window, patch.shape, image_mpp)
        inputs.append(WindowInput(read_raw(paths, patch, read_box), read_box, window,
                                  patch.shape))
    start = time.perf_counter()
    maps = segmenter.infer_windows(inputs, image_mpp, statistics)
    return maps, time.perf_counter() - start


def store_tiles(
    segmenter: Segmenter,
    inferred: tuple[Any, float],
    paths: RunPaths,
    patch: LogicalPatch,
    tiles: Sequence[int],
) -> list[TileReport]:
    """Post-process the windows of ``tiles`` and store each tile's kept objects."""
    maps, infer_seconds = inferred
    if maps is None:  # stored by an earlier run
        return [_stored_report(paths, patch, tile) for tile in tiles]
    start = time.perf_counter()
    labels = segmenter.postprocess_windows(maps)
    seconds = (time.perf_counter() - start) / len(tiles)
    owned = _owned(paths)
    reports = []
    for tile, window_labels in zip(tiles, labels, strict=True):
        window, core = patch.grid.window(tile), patch.grid.core(tile)
        kept = [owned_objects(window_labels[..., c], window, core, patch.shape) for c in (0, 1)]
        tile_id = patch.tile_id(tile)
        height, width = window.shape
        for name, objects in zip(COMPARTMENTS, kept, strict=True):
            owned[name][tile_id, :height, :width] = objects.labels
        report = TileReport(tile, (len(kept[0].first_pixels), len(kept[1].first_pixels)),
                            (kept[0].n_dropped, kept[1].n_dropped), core.shape[0] * core.shape[1],
                            infer_seconds / len(tiles), seconds)
        with atomic_path(_table(paths, tile_id)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, first_cell=kept[0].first_pixels, first_nucleus=kept[1].first_pixels,
                     report=np.array([*report.objects, *report.dropped, report.pixels,
                                      report.infer_s, report.postprocess_s], dtype=np.float64))
        owned[DONE_ARRAY][tile_id] = True  # last: the tile is complete
        reports.append(report)
    return reports


def _stored_report(paths: RunPaths, patch: LogicalPatch, tile: int) -> TileReport:
    with np.load(_table(paths, patch.tile_id(tile))) as saved:
        cells, nuclei, dropped_cells, dropped_nuclei, pixels, infer_s, post_s = \
            saved["report"].tolist()
    return TileReport(tile, (int(cells), int(nuclei)), (int(dropped_cells), int(dropped_nuclei)),
                      int(pixels), infer_s, post_s)


# --------------------------------------------------------------------------------------------
# 2. numbering


def number_patch(paths: RunPaths, patch: LogicalPatch, *stored: Any) -> list[list[np.ndarray]]:
    """Global ids of every tile's objects, per compartment.

    ``stored`` are the :func:`store_tiles` results this task waits for (unused otherwise).

    Returns
    -------
    list of two lists of ndarray
        ``tables[c][tile]``: local id -> id in the patch, for compartment ``c``.
    """
    firsts: list[list[np.ndarray]] = [[], []]
    for tile in patch.grid:
        with np.load(_table(paths, patch.tile_id(tile))) as saved:
            firsts[0].append(saved["first_cell"])
            firsts[1].append(saved["first_nucleus"])
    return [number_objects(first) for first in firsts]


# --------------------------------------------------------------------------------------------
# 3. stitching and tallies


def compose_core(
    paths: RunPaths, patch: LogicalPatch, tile: int, tables: list[list[np.ndarray]],
    tie_break: str,
) -> Composed:
    """Stitch the labels of one core, write them and their boundaries, and tally the core.

    Returns
    -------
    tally : RepairTally
    conflicts : (int, int)
        Pixels claimed by two objects, per compartment.
    seconds : float
    """
    start = time.perf_counter()
    grid = patch.grid
    core = grid.core(tile)
    around = core.grow(TALLY_MARGIN, patch.shape)
    owned = _owned(paths)
    stitched, conflicts = [], []
    for c, name in enumerate(COMPARTMENTS):
        pieces = []
        for neighbour in grid.tiles_touching(around):
            window = grid.window(neighbour)
            part = window.intersection(around)
            labels = owned[name][patch.tile_id(neighbour), :window.shape[0], :window.shape[1]]
            pieces.append((part, np.asarray(labels[part.slices(window)]), tables[c][neighbour]))
        labels, clashes = compose(around, pieces)
        stitched.append(labels)
        conflicts.append(clashes)
    edges, tally = tally_core(stitched[0], stitched[1], around, core, patch.shape[1],
                              with_order=check_tie_break(tie_break))
    group = open_result_store(paths.result)
    inner = core.slices(around)
    masks = {"cell": stitched[0][inner], "nucleus": stitched[1][inner], **edges}
    for name, mask in masks.items():
        group[name][(patch.index,) + core.slices()] = mask
    return tally, (conflicts[0], conflicts[1]), time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# 4. the greedy pass


Composed = tuple[RepairTally, tuple[int, int], float]
"""What :func:`compose_core` returns: tally, conflicts per compartment, seconds."""


def combine_composed(*parts: Composed) -> Composed:
    """Several cores' :func:`compose_core` results as one: tallies combined, counts summed.

    The engine combines in a tree of these as the cores finish, so no worker ever holds every
    core's tally at once.
    """
    tally = combine_tallies([part[0] for part in parts])
    conflicts = (sum(part[1][0] for part in parts), sum(part[1][1] for part in parts))
    return tally, conflicts, sum(part[2] for part in parts)


def match_patch(tie_break: str, composed: Composed) -> tuple[Matching, tuple[int, int], float]:
    """The repair's greedy matching over the combined tally of all cores of a patch.

    Returns the matching, with ``composed``'s conflicts and seconds passed through (so the
    patch's tally can be released once the matching exists).
    """
    tally, conflicts, seconds = composed
    return match_tally(tally, aegle_order=check_tie_break(tie_break)), conflicts, seconds


# --------------------------------------------------------------------------------------------
# 5. repair


def repair_core(paths: RunPaths, patch: LogicalPatch, tile: int,
                matched: tuple[Matching, Any, Any]) -> float:
    """Write the five repaired masks of one core (``matched``: :func:`match_patch`'s result);
    returns the seconds it took."""
    start = time.perf_counter()
    matching = matched[0]
    core = patch.grid.core(tile)
    around = core.grow(REPAIR_MARGIN, patch.shape)
    group = open_result_store(paths.result)
    cell = np.asarray(group["cell"][(patch.index,) + around.slices()])
    nucleus = np.asarray(group["nucleus"][(patch.index,) + around.slices()])
    for name, mask in repair_core_masks(cell, nucleus, around, core, matching).items():
        group[name][(patch.index,) + core.slices()] = mask
    return time.perf_counter() - start


def finish_patch(
    paths: RunPaths,
    patch: LogicalPatch,
    matched: tuple[Matching, tuple[int, int], float],
    reports: Sequence[TileReport],
    repair_seconds: Sequence[float],
) -> dict[str, Any]:
    """Write the patch's statistics row, then mark it done; a summary of the patch.

    The row holds the repair's metrics and the seconds of each stage summed over the tiles.
    """
    matching, conflicts, compose_seconds = matched
    metrics = matching.metrics()
    timings = [
        sum(r.infer_s for r in reports),
        sum(r.postprocess_s for r in reports),
        compose_seconds + sum(repair_seconds),
    ]
    row = np.array([metrics[name] for name in REPAIR_STAT_COLUMNS] + timings, dtype=np.float64)
    group = open_result_store(paths.result)
    group[STATS_ARRAY][patch.index] = row
    group[DONE_ARRAY][patch.index] = True
    return {
        "patch": patch.index,
        "tiles": patch.grid.n_tiles,
        "dropped": [sum(r.dropped[c] for r in reports) for c in (0, 1)],
        "conflicts": list(conflicts),
    }
