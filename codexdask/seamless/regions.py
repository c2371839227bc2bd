"""Boundaries and repair of one core of a stitched patch, from the core plus a small margin.

The repair of a logical patch must equal :func:`codexdask.repair.masks.repair_masks` of its stitched
whole-cell and nucleus labels. It runs in two passes over the cores:

1. :func:`tally_core` — the inner boundaries of the core (they need the labels one pixel around
   it) and the core's :class:`~codexdask.repair.matching.RepairTally`; the tallies of all cores are
   combined and matched once (:func:`codexdask.repair.matching.match_tally`).
2. :func:`repair_core` — the repaired masks of the core from the labels two pixels around it
   (the trimmed nuclei's boundary depends on the trimmed nuclei one pixel outside the core,
   which depend on the cell boundary there).

The edge of the patch is not a boundary, exactly as in the one-image repair.
"""

from __future__ import annotations

import numpy as np

from codexdask.boxes import Box
from codexdask.layout import (
    CELL_BOUNDARY,
    CELL_MATCHED_BOUNDARY,
    CELL_MATCHED_MASK,
    NUCLEUS_BOUNDARY,
    NUCLEUS_MATCHED_BOUNDARY,
    NUCLEUS_MATCHED_MASK,
)
from codexdask.repair.boundaries import boundary_pixels
from codexdask.repair.matching import (
    Matching,
    RepairTally,
    assemble_region,
    region_runs,
    tally_region,
)

__all__ = ["TALLY_MARGIN", "REPAIR_MARGIN", "repair_core", "tally_core"]

#: Pixels of context :func:`tally_core` needs around a core.
TALLY_MARGIN = 1
#: Pixels of context :func:`repair_core` needs around a core.
REPAIR_MARGIN = 2


def tally_core(
    cell: np.ndarray,
    nucleus: np.ndarray,
    around: Box,
    core: Box,
    patch_width: int,
    *,
    with_order: bool = False,
) -> tuple[dict[str, np.ndarray], RepairTally]:
    """Labelled inner boundaries and the repair tally of one core.

    Parameters
    ----------
    cell, nucleus : ndarray, shape around.shape
        Stitched labels over ``around`` = ``core`` grown by :data:`TALLY_MARGIN` (clipped to the
        patch).
    around, core : Box
        In patch coordinates.
    patch_width : int
        Width of the patch (row-major positions for the ``aegle-cpu`` order).
    with_order : bool
        Record the first-occurrence order the ``aegle-cpu`` tie-break needs.

    Returns
    -------
    boundaries : dict
        ``cell_boundary`` and ``nucleus_boundary``, ``(h, w)`` uint32 over the core.
    tally : RepairTally
    """
    inner = core.slices(around)
    cell_edge = boundary_pixels(cell)[inner]
    nucleus_edge = boundary_pixels(nucleus)[inner]
    cell_core = np.ascontiguousarray(cell[inner])
    nucleus_core = np.ascontiguousarray(nucleus[inner])
    runs = region_runs(cell_core, nucleus_core, cell_edge, origin=(core.top, core.left),
                       image_width=patch_width)
    boundaries = {
        CELL_BOUNDARY: (cell_core * cell_edge).astype(np.uint32),
        NUCLEUS_BOUNDARY: (nucleus_core * nucleus_edge).astype(np.uint32),
    }
    return boundaries, tally_region(runs, with_order=with_order)


def repair_core(
    cell: np.ndarray, nucleus: np.ndarray, around: Box, core: Box, matching: Matching
) -> dict[str, np.ndarray]:
    """The five repaired masks of one core.

    Parameters
    ----------
    cell, nucleus : ndarray, shape around.shape
        Stitched labels over ``around`` = ``core`` grown by :data:`REPAIR_MARGIN` (clipped).
    around, core : Box
        In patch coordinates.
    matching : Matching
        The greedy pass over the whole patch.

    Returns
    -------
    dict
        ``cell_matched_mask``, ``nucleus_matched_mask``, ``cell_outside_nucleus_mask``,
        ``cell_matched_boundary``, ``nucleus_matched_boundary``: ``(h, w)`` uint32 over the core.
    """
    # The core grown by one pixel, inside `around`: everything is exact there.
    ring = Box(max(core.top - 1, around.top), max(core.left - 1, around.left),
               min(core.bottom + 1, around.bottom), min(core.right + 1, around.right))
    inner = ring.slices(around)
    cell_edge = boundary_pixels(cell)[inner]
    cell_ring = np.ascontiguousarray(cell[inner])
    runs = region_runs(cell_ring, np.ascontiguousarray(nucleus[inner]), cell_edge)
    masks = assemble_region(runs, matching)
    masks[CELL_MATCHED_BOUNDARY] = masks[CELL_MATCHED_MASK] * cell_edge
    trimmed = masks[NUCLEUS_MATCHED_MASK]
    masks[NUCLEUS_MATCHED_BOUNDARY] = trimmed * boundary_pixels(trimmed)
    back = core.slices(ring)
    return {name: np.ascontiguousarray(mask[back]) for name, mask in masks.items()}
