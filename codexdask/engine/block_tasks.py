"""The tasks of a seamless run: each reads and writes Zarr by path and returns small results.

A logical patch goes through five kinds of task (``docs/architecture.md``, seamless patches):

1. :func:`prepare_blocks` (CPU), :func:`network_blocks` (on a GPU worker when there is one)
   and :func:`store_blocks` (CPU): a few windows are segmented, each block's owned objects are
   written to the run's work folder (:mod:`codexdask.engine.work_folder`: the block's window, a
   table of first pixels and cut objects, then the block's ``done`` flag); once all are stored,
   :func:`~codexdask.engine.regrow_tasks.plan_regrowing` and
   :func:`~codexdask.engine.regrow_tasks.regrow_clusters` segment the cut objects no block kept
   again, in grown windows (nothing to do in the common case);
2. :func:`number_patch`: the global ids of every block's objects and of the new regrown objects
   (raster order of first pixel), one file per block in the work folder;
3. :func:`compose_core`: per core, the stitched labels and their boundaries (to the result
   store), the repair tally and the stitched labels with the repair's margin (to the work
   folder);
4. a chain of :func:`match_patch_band` (the bands' labels from :func:`number_patch`): the greedy
   matching band by band (one band per block row, :mod:`codexdask.repair.bands`), each band
   reading the tallies of a few block rows and writing its labels' matching to the work folder;
5. :func:`repair_stored_core`: per core, the repaired masks from the bands its region touches;
   :func:`finish_patch` writes the patch's statistics and marks it done.

Every task may run twice (a worker lost, a resumed run) and then writes the same bytes again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from codexdask.engine.plan import RunPlan
from codexdask.engine.regrow_tasks import (
    Regrowing,
    RegrowPlan,
    cut_arrays,
    patch_objects,
    regrown_pieces,
    save_regrown_ids,
)
from codexdask.engine.stages import StageSeconds
from codexdask.engine.work_folder import (
    COMPARTMENTS,
    RunPaths,
    band_file,
    block_file,
    blocks_done,
    load_arrays,
    load_band,
    load_tally,
    owned_group,
    read_raw,
    save_arrays,
    save_tally,
    stitched_group,
)
from codexdask.layout import (
    CELL,
    DONE_ARRAY,
    NUCLEUS,
    REPAIR_STAT_COLUMNS,
    STATS_ARRAY,
    WORK_IDS_DIR,
    WORK_TABLES_DIR,
    WORK_TALLIES_DIR,
)
from codexdask.outputs.result_store import open_result_store
from codexdask.repair.bands import (
    BandCarry,
    BandPlan,
    Bands,
    band_plan,
    match_band,
    region_matching,
)
from codexdask.repair.matching import check_tie_break
from codexdask.seamless.blocks import LogicalPatch
from codexdask.seamless.regions import REPAIR_MARGIN, TALLY_MARGIN, repair_core, tally_core
from codexdask.seamless.stitch import compose, number_objects, owned_objects
from codexdask.segmenters.base import Segmenter, WindowInput
from codexdask.store.formats import writer

__all__ = ["BlockReport", "BlocksSummary", "Numbered", "bands_of", "compose_core",
           "finish_patch", "match_patch_band", "network_blocks", "number_patch",
           "prepare_blocks", "repair_bands", "repair_stored_core", "store_blocks",
           "summarise_blocks", "total"]

@dataclasses.dataclass(frozen=True)
class BlockReport:
    """What storing one block found.

    Attributes
    ----------
    block : int
        Block index in its patch.
    objects : (int, int)
        Objects kept (whole-cell, nucleus).
    cut : (int, int)
        Objects the block cut and recorded for regrowing (larger than the halo allows).
    pixels : int
        Pixels of the block's core.
    stages : StageSeconds
        The block's share of the seconds of its tasks.
    """

    block: int
    objects: tuple[int, int]
    cut: tuple[int, int]
    pixels: int
    stages: StageSeconds


@dataclasses.dataclass(frozen=True)
class BlocksSummary:
    """Sums over stored blocks (see :class:`BlockReport`).

    Attributes
    ----------
    blocks : int
    stages : StageSeconds
    """

    blocks: int
    stages: StageSeconds

    def __add__(self, other: BlocksSummary) -> BlocksSummary:
        return BlocksSummary(self.blocks + other.blocks, self.stages + other.stages)


def summarise_blocks(*parts: Sequence[BlockReport] | BlocksSummary) -> BlocksSummary:
    """Add up :func:`store_blocks` results and summaries of them (a step of a tree of tasks:
    each block's result can then be released as soon as it is added, not kept to the end)."""
    summary = BlocksSummary(0, StageSeconds())
    for part in parts:
        for item in [part] if isinstance(part, BlocksSummary) else part:
            summary += (item if isinstance(item, BlocksSummary)
                        else BlocksSummary(1, item.stages))
    return summary


def total(*values: float) -> float:
    """The sum of ``values`` (a step of a tree of tasks adding up seconds)."""
    return float(sum(values))


def bands_of(patch: LogicalPatch) -> Bands:
    """The matching bands of ``patch``: one per row of its blocks."""
    grid = patch.grid
    return Bands.of(patch.shape[0], grid.block_size, grid.halo, grid.max_window)


# --------------------------------------------------------------------------------------------
# 1. blocks


def prepare_blocks(
    segmenter: Segmenter,
    plan: RunPlan,
    paths: RunPaths,
    patch: LogicalPatch,
    blocks: Sequence[int],
    statistics: Any,
    after: Any = None,
) -> tuple[Any, StageSeconds]:
    """Read the windows of ``blocks`` and run the segmenter's CPU stage before the network.

    ``after`` is the :func:`store_blocks` result of the group ``plan.in_flight`` places earlier,
    which this task waits for (unused otherwise). Returns ``(prepared, seconds)``; ``prepared``
    is ``None`` when every block is already stored.
    """
    if blocks_done(paths, patch, blocks).all():
        return None, StageSeconds()
    start = time.perf_counter()
    inputs = []
    for block in blocks:
        window = patch.grid.window(block)
        read_box = segmenter.read_box(window, patch.shape, plan.image_mpp)
        inputs.append(WindowInput(read_raw(paths, patch, read_box), read_box, window,
                                  patch.shape))
    prepared = segmenter.prepare_windows(inputs, plan.image_mpp, statistics)
    return prepared, StageSeconds(prepare=time.perf_counter() - start)


def network_blocks(segmenter: Segmenter, prepared: tuple[Any, StageSeconds]
                   ) -> tuple[Any, StageSeconds]:
    """The GPU-pinned stage on :func:`prepare_blocks`'s output (nothing for stored blocks)."""
    item, stages = prepared
    if item is None:
        return None, stages
    start = time.perf_counter()
    out, network_s = segmenter.network(item)
    return out, stages + StageSeconds(pinned=time.perf_counter() - start, network=network_s)


def store_blocks(
    segmenter: Segmenter,
    networked: tuple[Any, StageSeconds],
    paths: RunPaths,
    patch: LogicalPatch,
    blocks: Sequence[int],
) -> list[BlockReport]:
    """Finish the windows of ``blocks`` (CPU) and store each block's kept and cut objects."""
    out, stages = networked
    if out is None:  # stored by an earlier run
        return [_stored_report(paths, patch, block) for block in blocks]
    start = time.perf_counter()
    labels = segmenter.finish_windows(out)
    stages = (stages + StageSeconds(finish=time.perf_counter() - start)).share(len(blocks))
    owned = owned_group(paths)
    reports = []
    for block, window_labels in zip(blocks, labels, strict=True):
        window, core = patch.grid.window(block), patch.grid.core(block)
        kept = [owned_objects(window_labels[..., c], window, core, patch.shape) for c in (0, 1)]
        block_id = patch.block_id(block)
        height, width = window.shape
        for name, objects in zip(COMPARTMENTS, kept, strict=True):
            writer(owned[name])[block_id, :height, :width] = objects.labels
        report = BlockReport(block, (len(kept[0].first_pixels), len(kept[1].first_pixels)),
                            (kept[0].n_cut, kept[1].n_cut), core.shape[0] * core.shape[1],
                            stages)
        save_arrays(block_file(paths, WORK_TABLES_DIR, block_id), {
            "first_cell": kept[0].first_pixels, "first_nucleus": kept[1].first_pixels,
            **cut_arrays(kept),
            "report": np.array([*report.objects, *report.cut, report.pixels,
                                *stages.as_tuple()], dtype=np.float64)})
        owned[DONE_ARRAY][block_id] = True  # last: the block is complete
        reports.append(report)
    return reports


def _stored_report(paths: RunPaths, patch: LogicalPatch, block: int) -> BlockReport:
    (report,) = load_arrays(block_file(paths, WORK_TABLES_DIR, patch.block_id(block)), ["report"])
    cells, nuclei, cut_cells, cut_nuclei, pixels, *seconds = report.tolist()
    if len(seconds) == 2:  # a work folder of codexdask 0.2 (inference, post-processing)
        seconds = [0.0, seconds[0], 0.0, seconds[1]]
    return BlockReport(block, (int(cells), int(nuclei)), (int(cut_cells), int(cut_nuclei)),
                      int(pixels), StageSeconds(*seconds))


# --------------------------------------------------------------------------------------------
# 2. numbering


@dataclasses.dataclass(frozen=True)
class Numbered:
    """What :func:`number_patch` returns.

    Attributes
    ----------
    regrown : (int, int)
        The new regrown objects (whole-cell, nucleus).
    cluster_boxes : ndarray of int64, shape (n_clusters, 4)
        The box holding each cluster's new objects (empty for none).
    bands : BandPlan
        The labels of every matching band (a few numbers per block row).
    """

    regrown: tuple[int, int]
    cluster_boxes: np.ndarray
    bands: BandPlan


def number_patch(paths: RunPaths, patch: LogicalPatch, regrowing: RegrowPlan,
                 regrown: Any) -> Numbered:
    """Write the global ids of every block's objects and of the new regrown objects to the work
    folder (``ids/``).

    Each block's file holds ``cell`` and ``nucleus``: local id -> id in the patch (uint32, entry
    0 is 0), so a stitching task loads the tables of its few neighbours only; each cluster's file
    the ids of its regrown objects (0 for those not new). ``regrown`` is the patch's
    :class:`~codexdask.engine.regrow_tasks.Regrowing` this task waits for (unused otherwise).
    The labels of each matching band follow from the same first pixels.
    """
    objects = patch_objects(paths, patch, regrowing)
    tables, regrown_ids = [], []
    for c in (0, 1):
        numbered = number_objects(objects.numbered_first_pixels(c))
        tables.append(numbered)
        regrown_ids.append(objects.regrown_ids(c, numbered[-1]))
    for block in patch.grid:
        save_arrays(block_file(paths, WORK_IDS_DIR, patch.block_id(block)),
                    {name: tables[c][block] for c, name in enumerate(COMPARTMENTS)})
    boxes = save_regrown_ids(paths, patch, objects, regrown_ids)
    new = [sum(int(np.count_nonzero(ids)) for ids in regrown_ids[c].values()) for c in (0, 1)]
    cell_rows, nucleus_rows = (np.sort(np.concatenate(objects.numbered_first_pixels(c)))
                               // patch.shape[1] for c in (0, 1))
    return Numbered((new[0], new[1]), boxes, band_plan(bands_of(patch), cell_rows, nucleus_rows))


def _load_ids(paths: RunPaths, patch: LogicalPatch, block: int) -> list[np.ndarray]:
    return load_arrays(block_file(paths, WORK_IDS_DIR, patch.block_id(block)), COMPARTMENTS)


# --------------------------------------------------------------------------------------------
# 3. stitching and tallies


def compose_core(
    plan: RunPlan, paths: RunPaths, patch: LogicalPatch, block: int, numbered: Numbered
) -> Composed:
    """Stitch the labels of one core, write them and their boundaries, and tally the core.

    ``numbered`` is the :func:`number_patch` result this task waits for (it says which clusters
    of regrown objects reach the core).

    The core's :class:`~codexdask.repair.matching.RepairTally` goes to the work folder
    (``tallies/``), and so do its stitched labels with the margin :func:`repair_stored_core` needs
    (``stitched.zarr``): the repair then reads one chunk per compartment instead of the result
    store's chunks around the core.

    Returns
    -------
    conflicts : (int, int)
        Pixels claimed by two objects, per compartment.
    seconds : float
    """
    start = time.perf_counter()
    grid = patch.grid
    core = grid.core(block)
    around = core.grow(REPAIR_MARGIN, patch.shape)
    owned = owned_group(paths)
    neighbours = grid.blocks_touching(around)
    ids = {neighbour: _load_ids(paths, patch, neighbour) for neighbour in neighbours}
    regrown = regrown_pieces(paths, patch, around, numbered.cluster_boxes)
    stitched, conflicts = [], []
    for c, name in enumerate(COMPARTMENTS):
        pieces = regrown[c]
        for neighbour in neighbours:
            window = grid.window(neighbour)
            part = window.intersection(around)
            # only the part: a view into the whole window would keep all nine windows alive
            labels = owned[name][(patch.block_id(neighbour),) + part.slices(window)]
            pieces.append((part, np.asarray(labels), ids[neighbour][c]))
        labels, clashes = compose(around, pieces)
        stitched.append(labels)
        conflicts.append(clashes)
    tallied = core.grow(TALLY_MARGIN, patch.shape)
    cell, nucleus = (labels[tallied.slices(around)] for labels in stitched)
    edges, tally = tally_core(cell, nucleus, tallied, core, patch.shape[1],
                              with_order=check_tie_break(plan.tie_break))
    group = open_result_store(paths.result)
    inner = core.slices(around)
    masks = {CELL: stitched[0][inner], NUCLEUS: stitched[1][inner], **edges}
    for name, mask in masks.items():
        writer(group[name])[(patch.index,) + core.slices()] = mask
    height, width = around.shape
    kept = stitched_group(paths)
    for name, labels in zip(COMPARTMENTS, stitched, strict=True):
        writer(kept[name])[patch.block_id(block), :height, :width] = labels
    save_tally(block_file(paths, WORK_TALLIES_DIR, patch.block_id(block)), tally)
    return (conflicts[0], conflicts[1]), time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# 4. the greedy pass, band by band


Composed = tuple[tuple[int, int], float]
"""What :func:`compose_core` returns: conflicts per compartment, seconds."""

Banded = tuple[BandCarry, tuple[int, int], float]
"""What :func:`match_patch_band` returns: the carry, conflicts and seconds of the bands so far."""


def match_patch_band(
    plan: RunPlan,
    paths: RunPaths,
    patch: LogicalPatch,
    band: int,
    numbered: Numbered,
    previous: Banded | None,
    composed: Sequence[Sequence[Composed]],
) -> Banded:
    """The greedy matching of the cells of one band (block row), from the tallies of the block
    rows ``bands_of(patch).tally_rows(band)``; its labels' matching goes to the work folder.

    Parameters
    ----------
    numbered : Numbered
        :func:`number_patch`'s result: the labels of every band.
    previous : Banded or None
        This task's result for ``band - 1`` (``None`` for band 0).
    composed : sequence of sequences
        :func:`compose_core` results of the cores of those block rows, row by row; the conflicts
        and seconds of the band's own row are added up.

    Returns
    -------
    Banded
    """
    start = time.perf_counter()
    rows = bands_of(patch).tally_rows(band)
    n_cols = patch.grid.n_cols
    tallies = (load_tally(block_file(paths, WORK_TALLIES_DIR, patch.block_id(row * n_cols + col)))
               for row in rows for col in range(n_cols))  # loaded and cut one by one
    carry, conflicts, seconds = previous if previous is not None else (BandCarry(), (0, 0), 0.0)
    result, carry = match_band(numbered.bands, band, tallies, carry,
                               aegle_order=check_tie_break(plan.tie_break))
    save_arrays(band_file(paths, patch, band),
          {field.name: getattr(result, field.name) for field in dataclasses.fields(result)})
    own = composed[band - rows.start]
    conflicts = (conflicts[0] + sum(c[0][0] for c in own), conflicts[1] + sum(c[0][1] for c in own))
    seconds += sum(c[1] for c in own) + time.perf_counter() - start
    return carry, conflicts, seconds


# --------------------------------------------------------------------------------------------
# 5. repair


def repair_stored_core(paths: RunPaths, patch: LogicalPatch, block: int, banded: Any) -> float:
    """Write the five repaired masks of one core; returns the seconds it took.

    ``banded`` is the :func:`match_patch_band` result of the last band of
    :func:`repair_bands` (unused: the task waits for it, then reads those bands' matchings).
    """
    start = time.perf_counter()
    core = patch.grid.core(block)
    around = core.grow(REPAIR_MARGIN, patch.shape)
    matching = region_matching([load_band(band_file(paths, patch, band))
                                for band in repair_bands(patch, block)])
    height, width = around.shape
    kept = stitched_group(paths)
    cell, nucleus = (np.asarray(kept[name][patch.block_id(block), :height, :width])
                     for name in COMPARTMENTS)
    group = open_result_store(paths.result)
    for name, mask in repair_core(cell, nucleus, around, core, matching).items():
        writer(group[name])[(patch.index,) + core.slices()] = mask
    return time.perf_counter() - start


def repair_bands(patch: LogicalPatch, block: int) -> range:
    """The bands whose matchings :func:`repair_stored_core` of ``block`` reads."""
    around = patch.grid.core(block).grow(REPAIR_MARGIN, patch.shape)
    return bands_of(patch).bands_of(around.top, around.bottom)


def finish_patch(
    paths: RunPaths,
    patch: LogicalPatch,
    banded: Banded,
    blocks: BlocksSummary,
    regrowing: Regrowing,
    numbered: Numbered,
    repair_seconds: float,
) -> dict[str, Any]:
    """Write the patch's statistics row, then mark it done; a summary of the patch.

    The row holds the repair's metrics and the seconds of each stage summed over the blocks
    (regrowing counts as inference). ``banded`` is the last band's :func:`match_patch_band`
    result, ``regrowing`` the patch's regrowing, ``numbered`` :func:`number_patch`'s result,
    ``repair_seconds`` the sum of the :func:`repair_stored_core` results.
    """
    carry, conflicts, compose_seconds = banded
    metrics = carry.metrics()
    timings = [blocks.stages.infer + regrowing.seconds, blocks.stages.finish,
               compose_seconds + repair_seconds]
    row = np.array([metrics[name] for name in REPAIR_STAT_COLUMNS] + timings, dtype=np.float64)
    group = open_result_store(paths.result)
    group[STATS_ARRAY][patch.index] = row
    group[DONE_ARRAY][patch.index] = True
    return {
        "patch": patch.index,
        "blocks": patch.grid.n_blocks,
        "regrown": list(numbered.regrown),
        "regrow_windows": regrowing.windows,
        "regrow_s": regrowing.seconds,
        "dropped": list(regrowing.unresolved),
        "conflicts": list(conflicts),
        "stages": blocks.stages.as_dict(),
        "stitch_s": compose_seconds,
        "repair_s": repair_seconds,
    }
