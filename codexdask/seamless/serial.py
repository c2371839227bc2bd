"""The seamless steps as a plain loop over blocks, in one process (what the engine must equal).

:func:`stitch_blocks` segments every window with a caller's function and stitches the owned
objects; :func:`repair_blocks` repairs stitched labels core by core. Both hold the whole patch in
memory, so they serve tests, small images and as the executable definition of the engine's
block-by-block path; the engine runs the same steps as Dask tasks with the patch on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from codexdask.boxes import Box
from codexdask.layout import CELL, NUCLEUS, REPAIR_STAT_COLUMNS
from codexdask.repair.matching import check_tie_break, combine_tallies, match_tally
from codexdask.seamless.blocks import BlockGrid, Blocks, block_grid
from codexdask.seamless.regions import REPAIR_MARGIN, TALLY_MARGIN, repair_core, tally_core
from codexdask.seamless.stitch import compose, number_objects, owned_objects
from codexdask.segmenters.base import Segmenter, WindowInput
from codexdask.statistics.passes import gather_statistics

__all__ = ["canonical_labels", "repair_blocks", "repair_in_blocks", "segment_in_blocks",
           "stitch_blocks"]


def stitch_blocks(
    grid: BlockGrid, segment_window: Callable[[Box], np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment every window and stitch the owned objects of each channel.

    Parameters
    ----------
    grid : BlockGrid
        Blocks of the patch.
    segment_window : callable
        ``segment_window(window) -> (h, w, C)`` integer labels of that window (one channel per
        compartment, e.g. whole-cell and nucleus).

    Returns
    -------
    labels : ndarray of uint32, shape (H, W, C)
        Each channel numbered 1..K in raster order of first pixel.
    report : dict
        ``dropped`` and ``conflicts``: per-channel counts of objects too large for the halo and
        of pixels claimed twice.
    """
    owned: list[list[Any]] = []
    for index in grid:
        window = grid.window(index)
        labels = np.asarray(segment_window(window))
        owned.append([
            owned_objects(labels[..., c], window, grid.core(index), grid.shape)
            for c in range(labels.shape[-1])
        ])
    n_channels = len(owned[0])
    out = np.zeros((*grid.shape, n_channels), dtype=np.uint32)
    report: dict[str, Any] = {"dropped": [0] * n_channels, "conflicts": [0] * n_channels}
    for c in range(n_channels):
        tables = number_objects([block[c].first_pixels for block in owned])
        report["dropped"][c] = sum(block[c].n_dropped for block in owned)
        for index in grid:
            core = grid.core(index)
            pieces = [(grid.window(t), owned[t][c].labels, tables[t])
                      for t in grid.blocks_touching(core)]
            out[core.slices() + (c,)], clashes = compose(core, pieces)
            report["conflicts"][c] += clashes
    return out, report


def segment_in_blocks(
    image: np.ndarray,
    segmenter: Segmenter,
    image_mpp: float,
    *,
    block_size: int,
    halo: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment an in-memory logical patch ``(H, W, 2)`` block by block with ``segmenter``.

    The segmenter's image-wide statistics are gathered over the patch first, then every window is
    segmented (``infer_windows`` / ``postprocess_windows``) and the owned objects stitched.

    Returns
    -------
    labels : ndarray of uint32, shape (H, W, 2)
        Whole-cell and nucleus labels, each numbered in raster order of first pixel.
    report : dict
        As :func:`stitch_blocks`.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    grid = block_grid(shape, block_size, segmenter.halo(image_mpp) if halo is None else halo)
    stats = segmenter.statistics(image_mpp)
    if stats is not None:
        stats = gather_statistics(stats, shape, lambda box: image[box.slices()])

    def segment_window(window: Box) -> np.ndarray:
        read = segmenter.read_box(window, shape, image_mpp)
        inputs = [WindowInput(image[read.slices()], read, window, shape)]
        return segmenter.postprocess_windows(segmenter.infer_windows(inputs, image_mpp, stats))[0]

    return stitch_blocks(grid, segment_window)


def repair_blocks(
    cell: np.ndarray, nucleus: np.ndarray, grid: BlockGrid, tie_break: str = "lowest-label"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Boundaries and repair of stitched labels, core by core.

    Returns
    -------
    masks : dict
        The nine ``(H, W)`` uint32 masks (``cell``, ``nucleus``, their boundaries and the five
        repaired masks), equal to ``get_boundary`` and ``repair_masks`` of the whole image.
    metrics : dict
        :meth:`codexdask.repair.matching.Matching.metrics`.
    """
    aegle = check_tie_break(tie_break)
    shape = grid.shape
    masks = {CELL: np.asarray(cell, np.uint32), NUCLEUS: np.asarray(nucleus, np.uint32)}
    tallies = []
    for index in grid:
        core = grid.core(index)
        around = core.grow(TALLY_MARGIN, shape)
        edges, tally = tally_core(cell[around.slices()], nucleus[around.slices()], around, core,
                                  shape[1], with_order=aegle)
        for name, values in edges.items():
            masks.setdefault(name, np.zeros(shape, np.uint32))[core.slices()] = values
        tallies.append(tally)
    matching = match_tally(combine_tallies(tallies), aegle_order=aegle)
    for index in grid:
        core = grid.core(index)
        around = core.grow(REPAIR_MARGIN, shape)
        repaired = repair_core(cell[around.slices()], nucleus[around.slices()], around, core,
                               matching)
        for name, values in repaired.items():
            masks.setdefault(name, np.zeros(shape, np.uint32))[core.slices()] = values
    return masks, matching.metrics()


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` ``(H, W)`` 1..K in raster order of each object's first pixel (uint32).

    The order of :func:`stitch_blocks`; apply it to a one-shot result to compare the two.
    """
    flat = np.asarray(labels).ravel()
    ids, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.zeros(ids.size, dtype=np.uint32)
    objects = np.flatnonzero(ids > 0)
    rank[objects[np.argsort(first[objects], kind="stable")]] = np.arange(
        1, objects.size + 1, dtype=np.uint32)
    return rank[inverse.ravel()].reshape(np.shape(labels))


def repair_in_blocks(
    image: np.ndarray,
    segmenter: Segmenter,
    image_mpp: float,
    blocks: Blocks,
    tie_break: str = "lowest-label",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Segment an in-memory logical patch block by block and repair it: the engine's result.

    Returns
    -------
    masks : dict
        The nine ``(H, W)`` uint32 masks.
    stats : ndarray
        ``(len(REPAIR_STAT_COLUMNS),)`` float64 repair statistics.
    """
    labels, _ = segment_in_blocks(image, segmenter, image_mpp, block_size=blocks.size,
                                  halo=blocks.halo)
    grid = blocks.grid(labels.shape[:2])
    masks, metrics = repair_blocks(labels[..., 0], labels[..., 1], grid, tie_break)
    return masks, np.array([metrics[name] for name in REPAIR_STAT_COLUMNS], dtype=np.float64)
