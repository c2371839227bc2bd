"""The tasks of a seamless run: each reads and writes Zarr by path and returns small results.

A logical patch goes through five kinds of task (``docs/architecture.md``, seamless patches):

1. :func:`infer_tiles` (on a GPU worker when there is one) and :func:`store_tiles` (CPU): a
   few windows are segmented, each tile's owned objects are written to the run's work folder
   (``OUT/tiles``: the tile's window in square chunks of :data:`OWNED_CHUNK` px, a table of
   first pixels, then the tile's ``done`` flag);
2. :func:`number_patch`: the global ids of every tile's objects (raster order of first pixel),
   one file per tile in the work folder;
3. :func:`compose_core`: per core, the stitched labels and their boundaries (to the result
   store), the repair tally and the stitched labels with the repair's margin (to the work
   folder);
4. :func:`plan_bands` and a chain of :func:`match_patch_band`: the greedy matching band by band
   (one band per tile row, :mod:`codexdask.matching_bands`), each band reading the tallies of a
   few tile rows and writing its labels' matching to the work folder;
5. :func:`repair_core`: per core, the repaired masks from the bands its region touches;
   :func:`finish_patch` writes the patch's statistics and marks it done.

Every task may run twice (a worker lost, a resumed run) and then writes the same bytes again.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from ..geometry import Box
from ..layout import DONE_ARRAY, IMAGE_ARRAY, REPAIR_STAT_COLUMNS, STATS_ARRAY
from ..matching import RepairTally
from ..matching_bands import (
    BandCarry,
    BandMatching,
    BandPlan,
    Bands,
    band_plan,
    match_band,
    region_matching,
)
from ..outputs.atomic import atomic_path
from ..outputs.result_store import open_result_store
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
    "TilesSummary",
    "compose_core",
    "create_tile_store",
    "finish_patch",
    "infer_tiles",
    "match_patch_band",
    "number_patch",
    "plan_bands",
    "repair_bands",
    "repair_core",
    "store_tiles",
    "summarise_tiles",
    "tiles_done",
    "total",
]

#: The two compartments, in label-channel order (whole-cell, nucleus).
COMPARTMENTS = ("cell", "nucleus")
#: Side of the chunks of a tile's stored window: a neighbour reading the strip of the window
#: that reaches into its core decodes a strip of chunks, not the whole window.
OWNED_CHUNK = 256
#: Compressor of the work folder's labels: written and read once each, so speed over size (lz4
#: encoded 2x and decoded 3x faster than the result store's zstd, at about half its ratio).
WORK_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


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


@dataclasses.dataclass(frozen=True)
class TilesSummary:
    """Sums over stored tiles (see :class:`TileReport`).

    Attributes
    ----------
    tiles : int
    dropped : (int, int)
    infer_s, postprocess_s : float
    """

    tiles: int
    dropped: tuple[int, int]
    infer_s: float
    postprocess_s: float


def summarise_tiles(*parts: Sequence[TileReport] | TilesSummary) -> TilesSummary:
    """Add up :func:`store_tiles` results and summaries of them (a step of a tree of tasks:
    each tile's result can then be released as soon as it is added, not kept to the end)."""
    rows: list[tuple[float, ...]] = [(0, 0, 0, 0.0, 0.0)]
    for part in parts:
        if isinstance(part, TilesSummary):
            rows.append((part.tiles, *part.dropped, part.infer_s, part.postprocess_s))
        else:
            rows += [(1, *r.dropped, r.infer_s, r.postprocess_s) for r in part]
    tiles, cells, nuclei, infer_s, postprocess_s = (sum(column) for column in zip(*rows))
    return TilesSummary(int(tiles), (int(cells), int(nuclei)), infer_s, postprocess_s)


def total(*values: float) -> float:
    """The sum of ``values`` (a step of a tree of tasks adding up seconds)."""
    return float(sum(values))


# --------------------------------------------------------------------------------------------
# the work folder


def create_tile_store(
    path: str | Path, n_tiles: int, window_shape: tuple[int, int], tile_size: int
) -> None:
    """Create the work folder's arrays unless they exist (a resumed run keeps them).

    In ``owned.zarr``, ``cell`` and ``nucleus`` ``(n_tiles, h, w)`` uint32 hold each tile's kept
    objects (``h, w`` the largest window; square chunks of :data:`OWNED_CHUNK` px) and ``done``
    ``(n_tiles,)`` bool is set last for a tile. In ``stitched.zarr``, ``cell`` and ``nucleus``
    ``(n_tiles, s, s)`` uint32 (``s`` = ``tile_size`` + 2 x the repair's margin, one chunk per
    tile) hold each core's stitched labels with that margin, for the repair.
    """
    root = zarr.open_group(str(Path(path) / "owned.zarr"), mode="a")
    height, width = window_shape
    _create_labels(root, (n_tiles, height, width),
                   (1, min(height, OWNED_CHUNK), min(width, OWNED_CHUNK)))
    side = tile_size + 2 * REPAIR_MARGIN
    _create_labels(zarr.open_group(str(Path(path) / "stitched.zarr"), mode="a"),
                   (n_tiles, side, side), (1, side, side))
    if DONE_ARRAY not in root:
        root.create_dataset(DONE_ARRAY, shape=(n_tiles,), chunks=(1,), dtype=bool,
                            fill_value=False)
    for folder in ("tables", "ids", "tallies", "bands"):
        (Path(path) / folder).mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=8)
def _open(path: str, mode: str = "r") -> zarr.Group:
    return zarr.open_group(path, mode=mode)


def _create_labels(group: zarr.Group, shape: tuple[int, int, int],
                   chunks: tuple[int, int, int]) -> None:
    """``cell`` and ``nucleus`` uint32 arrays of the work folder, unless they exist."""
    for name in COMPARTMENTS:
        if name not in group:
            group.create_dataset(name, shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0,
                                 compressor=WORK_COMPRESSOR, write_empty_chunks=False)


def _owned(paths: RunPaths) -> zarr.Group:
    return zarr.open_group(str(Path(paths.tiles) / "owned.zarr"), mode="r+")


def _stitched(paths: RunPaths) -> zarr.Group:
    return zarr.open_group(str(Path(paths.tiles) / "stitched.zarr"), mode="r+")


def _tile_file(paths: RunPaths, folder: str, tile_id: int) -> Path:
    """A tile's file in one of the work folder's ``tables``, ``ids`` or ``tallies``."""
    return Path(paths.tiles) / folder / f"tile_{tile_id:07d}.npz"


def _band_file(paths: RunPaths, patch: LogicalPatch, band: int) -> Path:
    return Path(paths.tiles) / "bands" / f"patch_{patch.index:05d}_band_{band:05d}.npz"


def _save(path: Path, arrays: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _save_tally(path: Path, tally: RepairTally) -> None:
    arrays = {field.name: np.asarray(getattr(tally, field.name))
              for field in dataclasses.fields(tally) if field.name != "order"}
    if tally.order is not None:
        arrays.update(order_cell=tally.order[0], order_nucleus=tally.order[1],
                      order_first=tally.order[2])
    _save(path, arrays)


def _load_tally(path: Path) -> RepairTally:
    with np.load(path) as saved:
        fields = {name: saved[name] if saved[name].ndim else saved[name].item()
                  for name in saved.files if not name.startswith("order_")}
        order = None
        if "order_cell" in saved:
            order = (saved["order_cell"], saved["order_nucleus"], saved["order_first"])
        return RepairTally(**fields, order=order)


def _load_band(path: Path) -> BandMatching:
    with np.load(path) as saved:
        return BandMatching(**{field.name: saved[field.name]
                               for field in dataclasses.fields(BandMatching)})


def bands_of(patch: LogicalPatch) -> Bands:
    """The matching bands of ``patch``: one per row of its tiles."""
    return Bands.of(patch.shape[0], patch.grid.tile_size, patch.grid.halo)


def tiles_done(paths: RunPaths, patch: LogicalPatch, tiles: Sequence[int] | None = None
               ) -> np.ndarray:
    """Which of ``tiles`` (default: all) of ``patch`` are stored: bool, one per tile."""
    # only these flags: each is a file, and a patch can have thousands of tiles
    ids = [patch.tile_id(t) for t in (patch.grid if tiles is None else tiles)]
    return np.asarray(_owned(paths)[DONE_ARRAY].get_coordinate_selection(ids), dtype=bool)


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
    if tiles_done(paths, patch, tiles).all():
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
        with atomic_path(_tile_file(paths, "tables", tile_id)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, first_cell=kept[0].first_pixels, first_nucleus=kept[1].first_pixels,
                     report=np.array([*report.objects, *report.dropped, report.pixels,
                                      report.infer_s, report.postprocess_s], dtype=np.float64))
        owned[DONE_ARRAY][tile_id] = True  # last: the tile is complete
        reports.append(report)
    return reports


def _stored_report(paths: RunPaths, patch: LogicalPatch, tile: int) -> TileReport:
    with np.load(_tile_file(paths, "tables", patch.tile_id(tile))) as saved:
        cells, nuclei, dropped_cells, dropped_nuclei, pixels, infer_s, post_s = \
            saved["report"].tolist()
    return TileReport(tile, (int(cells), int(nuclei)), (int(dropped_cells), int(dropped_nuclei)),
                      int(pixels), infer_s, post_s)


# --------------------------------------------------------------------------------------------
# 2. numbering


def number_patch(paths: RunPaths, patch: LogicalPatch, stored: Any) -> int:
    """Write the global ids of every tile's objects to the work folder (``ids/``).

    Each tile's file holds ``cell`` and ``nucleus``: local id -> id in the patch (uint32, entry
    0 is 0), so a stitching task loads the tables of its few neighbours only. ``stored`` is the
    :class:`TilesSummary` of the patch's tiles this task waits for (unused otherwise).

    Returns
    -------
    int
        The number of tiles numbered.
    """
    cells, nuclei = (number_objects(first) for first in _first_pixels(paths, patch))
    for tile in patch.grid:
        _save(_tile_file(paths, "ids", patch.tile_id(tile)),
              {"cell": cells[tile], "nucleus": nuclei[tile]})
    return patch.grid.n_tiles


def _load_ids(paths: RunPaths, patch: LogicalPatch, tile: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(_tile_file(paths, "ids", patch.tile_id(tile))) as saved:
        return saved["cell"], saved["nucleus"]


def _first_pixels(paths: RunPaths, patch: LogicalPatch) -> list[list[np.ndarray]]:
    """``firsts[c][tile]``: the stored first pixels of each tile's owned objects, compartment
    ``c`` (0 cell, 1 nucleus)."""
    firsts: list[list[np.ndarray]] = [[], []]
    for tile in patch.grid:
        with np.load(_tile_file(paths, "tables", patch.tile_id(tile))) as saved:
            firsts[0].append(saved["first_cell"])
            firsts[1].append(saved["first_nucleus"])
    return firsts


def plan_bands(paths: RunPaths, patch: LogicalPatch, stored: Any) -> BandPlan:
    """The labels of every matching band, from the tiles' first pixels (as numbered by
    :func:`number_patch`; ``stored`` as there)."""
    cell_rows, nucleus_rows = (np.sort(np.concatenate(f)) // patch.shape[1]
                               for f in _first_pixels(paths, patch))
    return band_plan(bands_of(patch), cell_rows, nucleus_rows)


# --------------------------------------------------------------------------------------------
# 3. stitching and tallies


def compose_core(
    paths: RunPaths, patch: LogicalPatch, tile: int, numbered: Any, tie_break: str
) -> Composed:
    """Stitch the labels of one core, write them and their boundaries, and tally the core.

    ``numbered`` is the :func:`number_patch` result this task waits for (unused otherwise).

    The core's :class:`~codexdask.matching.RepairTally` goes to the work folder (``tallies/``),
    and so do its stitched labels with the margin :func:`repair_core` needs (``stitched.zarr``):
    the repair then reads one chunk per compartment instead of the result store's chunks
    around the core.

    Returns
    -------
    conflicts : (int, int)
        Pixels claimed by two objects, per compartment.
    seconds : float
    """
    start = time.perf_counter()
    grid = patch.grid
    core = grid.core(tile)
    around = core.grow(REPAIR_MARGIN, patch.shape)
    owned = _owned(paths)
    neighbours = grid.tiles_touching(around)
    ids = {neighbour: _load_ids(paths, patch, neighbour) for neighbour in neighbours}
    stitched, conflicts = [], []
    for c, name in enumerate(COMPARTMENTS):
        pieces = []
        for neighbour in neighbours:
            window = grid.window(neighbour)
            part = window.intersection(around)
            # only the part: a view into the whole window would keep all nine windows alive
            labels = owned[name][(patch.tile_id(neighbour),) + part.slices(window)]
            pieces.append((part, np.asarray(labels), ids[neighbour][c]))
        labels, clashes = compose(around, pieces)
        stitched.append(labels)
        conflicts.append(clashes)
    tallied = core.grow(TALLY_MARGIN, patch.shape)
    cell, nucleus = (labels[tallied.slices(around)] for labels in stitched)
    edges, tally = tally_core(cell, nucleus, tallied, core, patch.shape[1],
                              with_order=check_tie_break(tie_break))
    group = open_result_store(paths.result)
    inner = core.slices(around)
    masks = {"cell": stitched[0][inner], "nucleus": stitched[1][inner], **edges}
    for name, mask in masks.items():
        group[name][(patch.index,) + core.slices()] = mask
    height, width = around.shape
    kept = _stitched(paths)
    for name, labels in zip(COMPARTMENTS, stitched, strict=True):
        kept[name][patch.tile_id(tile), :height, :width] = labels
    _save_tally(_tile_file(paths, "tallies", patch.tile_id(tile)), tally)
    return (conflicts[0], conflicts[1]), time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# 4. the greedy pass, band by band


Composed = tuple[tuple[int, int], float]
"""What :func:`compose_core` returns: conflicts per compartment, seconds."""

Banded = tuple[BandCarry, tuple[int, int], float]
"""What :func:`match_patch_band` returns: the carry, conflicts and seconds of the bands so far."""


def match_patch_band(
    paths: RunPaths,
    patch: LogicalPatch,
    band: int,
    tie_break: str,
    plan: BandPlan,
    previous: Banded | None,
    composed: Sequence[Sequence[Composed]],
) -> Banded:
    """The greedy matching of the cells of one band (tile row), from the tallies of the tile
    rows ``bands_of(patch).tally_rows(band)``; its labels' matching goes to the work folder.

    Parameters
    ----------
    previous : Banded or None
        This task's result for ``band - 1`` (``None`` for band 0).
    composed : sequence of sequences
        :func:`compose_core` results of the cores of those tile rows, row by row; the conflicts
        and seconds of the band's own row are added up.

    Returns
    -------
    Banded
    """
    start = time.perf_counter()
    rows = bands_of(patch).tally_rows(band)
    n_cols = patch.grid.n_cols
    tallies = (_load_tally(_tile_file(paths, "tallies", patch.tile_id(row * n_cols + col)))
               for row in rows for col in range(n_cols))  # loaded and cut one by one
    carry, conflicts, seconds = previous if previous is not None else (BandCarry(), (0, 0), 0.0)
    result, carry = match_band(plan, band, tallies, carry, aegle_order=check_tie_break(tie_break))
    _save(_band_file(paths, patch, band),
          {field.name: getattr(result, field.name) for field in dataclasses.fields(result)})
    own = composed[band - rows.start]
    conflicts = (conflicts[0] + sum(c[0][0] for c in own), conflicts[1] + sum(c[0][1] for c in own))
    seconds += sum(c[1] for c in own) + time.perf_counter() - start
    return carry, conflicts, seconds


# --------------------------------------------------------------------------------------------
# 5. repair


def repair_core(paths: RunPaths, patch: LogicalPatch, tile: int, banded: Any) -> float:
    """Write the five repaired masks of one core; returns the seconds it took.

    ``banded`` is the :func:`match_patch_band` result of the last band of
    :func:`repair_bands` (unused: the task waits for it, then reads those bands' matchings).
    """
    start = time.perf_counter()
    core = patch.grid.core(tile)
    around = core.grow(REPAIR_MARGIN, patch.shape)
    matching = region_matching([_load_band(_band_file(paths, patch, band))
                                for band in repair_bands(patch, tile)])
    height, width = around.shape
    kept = _stitched(paths)
    cell, nucleus = (np.asarray(kept[name][patch.tile_id(tile), :height, :width])
                     for name in COMPARTMENTS)
    group = open_result_store(paths.result)
    for name, mask in repair_core_masks(cell, nucleus, around, core, matching).items():
        group[name][(patch.index,) + core.slices()] = mask
    return time.perf_counter() - start


def repair_bands(patch: LogicalPatch, tile: int) -> range:
    """The bands whose matchings :func:`repair_core` of ``tile`` reads."""
    around = patch.grid.core(tile).grow(REPAIR_MARGIN, patch.shape)
    return bands_of(patch).bands_of(around.top, around.bottom)


def finish_patch(
    paths: RunPaths,
    patch: LogicalPatch,
    banded: Banded,
    tiles: TilesSummary,
    repair_seconds: float,
) -> dict[str, Any]:
    """Write the patch's statistics row, then mark it done; a summary of the patch.

    The row holds the repair's metrics and the seconds of each stage summed over the tiles.
    ``banded`` is the last band's :func:`match_patch_band` result, ``repair_seconds`` the sum of
    the :func:`repair_core` results.
    """
    carry, conflicts, compose_seconds = banded
    metrics = carry.metrics()
    timings = [tiles.infer_s, tiles.postprocess_s, compose_seconds + repair_seconds]
    row = np.array([metrics[name] for name in REPAIR_STAT_COLUMNS] + timings, dtype=np.float64)
    group = open_result_store(paths.result)
    group[STATS_ARRAY][patch.index] = row
    group[DONE_ARRAY][patch.index] = True
    return {
        "patch": patch.index,
        "tiles": patch.grid.n_tiles,
        "dropped": list(tiles.dropped),
        "conflicts": list(conflicts),
    }
