"""The seamless steps as a plain loop over blocks, in one process (what the engine must equal).

:func:`stitch_blocks` segments every window with a caller's function, regrows the objects larger
than the halo (:mod:`codexdask.seamless.regrow`) and stitches the owned objects;
:func:`repair_blocks` repairs stitched labels core by core. Both hold the whole patch in memory, so
they serve tests, small images and as the executable definition of the engine's block-by-block
path; the engine runs the same steps as Dask tasks with the patch on disk.
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
from codexdask.seamless.regrow import CutParts, PatchObjects, regrow_objects
from codexdask.seamless.stitch import compose, number_objects, owned_objects
from codexdask.segmenters.base import Segmenter, WindowInput
from codexdask.statistics.passes import gather_statistics

__all__ = ["canonical_labels", "repair_blocks", "repair_in_blocks", "segment_in_blocks",
           "stitch_blocks", "window_segmenter"]


def stitch_blocks(
    grid: BlockGrid, segment_window: Callable[[Box], np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment every window, regrow the objects larger than the halo and stitch each channel.

    Parameters
    ----------
    grid : BlockGrid
        Blocks of the patch (``grid.max_window`` bounds the grown windows).
    segment_window : callable
        ``segment_window(window) -> (h, w, C)`` integer labels of that window (one channel per
        compartment, e.g. whole-cell and nucleus).

    Returns
    -------
    labels : ndarray of uint32, shape (H, W, C)
        Each channel numbered 1..K in raster order of first pixel.
    report : dict
        Per channel: ``regrown`` objects taken from grown windows, ``dropped`` cut objects no
        window within the bound held whole, ``conflicts`` pixels claimed twice; and
        ``windows``, the grown windows segmented.
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

    def kept_label(block: int, c: int, y: int, x: int) -> int:
        window = grid.window(block)
        return int(owned[block][c].labels[y - window.top, x - window.left])

    parts = CutParts.of([(c, block[c].cut.not_kept(grid, c, kept_label))
                         for block in owned for c in range(n_channels)])
    # cluster by cluster, as the engine does: the same windows, so the same objects
    regrown, windows, dropped = {}, 0, np.zeros(n_channels, np.int64)
    for index, parts_of_one in enumerate(parts.clusters()):
        regrown[index], regrowing = regrow_objects(parts_of_one.by_compartment(n_channels),
                                                   segment_window, grid.shape, grid.halo,
                                                   grid.max_window)
        windows += regrowing.windows
        dropped += regrowing.unresolved
    out = np.zeros((*grid.shape, n_channels), dtype=np.uint32)
    report: dict[str, Any] = {"regrown": [0] * n_channels, "dropped": dropped.tolist(),
                              "conflicts": [0] * n_channels, "windows": windows}
    objects = PatchObjects.of([[block[c].first_pixels for block in owned]
                               for c in range(n_channels)], regrown)
    for c in range(n_channels):
        tables = number_objects(objects.numbered_first_pixels(c))
        regrown_ids = objects.regrown_ids(c, tables[-1])
        report["regrown"][c] = sum(int(np.count_nonzero(ids)) for ids in regrown_ids.values())
        for index in grid:
            core = grid.core(index)
            pieces = [(grid.window(t), owned[t][c].labels, tables[t])
                      for t in grid.blocks_touching(core)]
            for cluster, found in regrown.items():
                pieces += found[c].pieces(regrown_ids[cluster], core)
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
    max_window: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment an in-memory logical patch ``(H, W, 2)`` block by block with ``segmenter``.

    The segmenter's image-wide statistics are gathered over the patch first, then every window is
    segmented (:func:`window_segmenter`), objects larger than the halo are regrown in windows of
    at most ``max_window`` pixels a side, and the owned objects stitched.

    Returns
    -------
    labels : ndarray of uint32, shape (H, W, 2)
        Whole-cell and nucleus labels, each numbered in raster order of first pixel.
    report : dict
        As :func:`stitch_blocks`.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    grid = block_grid(shape, block_size, segmenter.halo(image_mpp) if halo is None else halo,
                      max_window)
    stats = segmenter.statistics(image_mpp)
    if stats is not None:
        stats = gather_statistics(stats, shape, lambda box: image[box.slices()])
    return stitch_blocks(grid, window_segmenter(segmenter, image_mpp, stats, shape,
                                                lambda box: image[box.slices()]))


def window_segmenter(
    segmenter: Segmenter, image_mpp: float, statistics: Any, patch_shape: tuple[int, int],
    read: Callable[[Box], np.ndarray],
) -> Callable[[Box], np.ndarray]:
    """``segment_window(window) -> (h, w, 2)`` labels of a window of a logical patch, read with
    ``read(box) -> (h, w, 2)`` raw pixels, with the patch's image-wide ``statistics``."""

    def segment_window(window: Box) -> np.ndarray:
        read_box = segmenter.read_box(window, patch_shape, image_mpp)
        inputs = [WindowInput(read(read_box), read_box, window, patch_shape)]
        return segmenter.postprocess_windows(
            segmenter.infer_windows(inputs, image_mpp, statistics))[0]

    return segment_window


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
                                  halo=blocks.halo, max_window=blocks.max_window)
    grid = blocks.grid(labels.shape[:2])
    masks, metrics = repair_blocks(labels[..., 0], labels[..., 1], grid, tie_break)
    return masks, np.array([metrics[name] for name in REPAIR_STAT_COLUMNS], dtype=np.float64)
