"""Cell–nucleus matching and repair (the original pipeline's ``repair_masks``), vectorised.

Semantics (``docs/semantics.md``, "The repair rule"):

- The *interior* of a cell is the cell minus its labelled inner boundary (4-connectivity; the image
  edge is not boundary, see :func:`codexdask.repair.boundaries.get_boundary`).
- The *mismatch* of cell ``c`` and nucleus ``n`` is ``m = |P(n) \\ I(c)| / |P(n)|`` in float64,
  where ``P(n)`` is the whole nucleus and ``I(c)`` the cell interior. A nucleus is acceptable
  for a cell only when ``m < 1``, i.e. when it overlaps the interior.
- Cells are visited in ascending label order. Each takes the acceptable nucleus with the smallest
  ``m`` among those no earlier cell has claimed (greedy, one-to-one). Ties go to the lowest nucleus
  label (``tie_break="lowest-label"``) or follow the original CPU path's CPython ``set`` order
  (``tie_break="aegle-cpu"``, for bit-for-bit comparisons).
- Matched cells get new ids ``k = 1..M`` in visit order, over all their pixels; their nucleus is
  trimmed to the cell interior and gets the same id. Unmatched cells and nuclei vanish.

How it is computed: the images are read once as *runs*, maximal stretches of row-major pixels with
the same (cell label, nucleus label, boundary flag). Object sizes and cell-interior/nucleus overlaps
are sums of run lengths, the greedy pass walks the overlapping (cell, nucleus) pairs only, and the
output masks are the runs' new values repeated by their lengths. The cost grows with pixels plus
overlapping pairs, never with pixels × cells, and label values may be gapped or huge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.config import TIE_BREAKS, TieBreakName
from codexdask.errors import InputError
from codexdask.layout import (
    CELL,
    CELL_MATCHED_BOUNDARY,
    CELL_MATCHED_MASK,
    NUCLEUS,
    NUCLEUS_MATCHED_BOUNDARY,
    NUCLEUS_MATCHED_MASK,
)
from codexdask.repair.boundaries import boundary_pixels
from codexdask.repair.counts import matching_stats_from_counts
from codexdask.repair.matching import (
    assemble_region,
    check_tie_break,
    match_tally,
    order_table,
    region_runs,
    tally_region,
)

__all__ = ["TIE_BREAKS", "TieBreakName", "check_tie_break", "matching_stats_from_counts",
           "repair_masks", "repair_masks_batch"]



# --------------------------------------------------------------------------------------------------
# public API


def repair_masks(
    cell: npt.ArrayLike, nucleus: npt.ArrayLike, *, tie_break: TieBreakName = "lowest-label"
) -> dict[str, Any]:
    """Match every cell to at most one nucleus and trim the nuclei to the cell interiors.

    Parameters
    ----------
    cell, nucleus : array_like, shape (H, W)
        Whole-cell and nucleus label images, 0 = background. Any integer dtype (uint8 … int64,
        uint64) or floats holding whole numbers. Labels need not be consecutive.
    tie_break : {"lowest-label", "aegle-cpu"}
        Which of several equally good nuclei a cell takes: the lowest nucleus label (default), or
        the first in the CPython ``set`` iteration order that the original CPU path uses.

    Returns
    -------
    dict
        ``cell_matched_mask``, ``nucleus_matched_mask``, ``cell_outside_nucleus_mask``,
        ``cell_matched_boundary``, ``nucleus_matched_boundary`` : ndarray of uint32, shape (H, W)
            Matched cells (ids 1..M), their trimmed nuclei (same ids), cytoplasm (cell pixels
            without a matched nucleus pixel; includes the membrane) and the labelled inner
            boundaries of the matched cells and of the trimmed nuclei.
        ``matched_fraction`` : float
            The original CPU formula ``U(cm) / (U(cell) + U(nucleus) - U(cm))`` where ``U`` counts
            distinct values *including 0 when present* and ``cm`` is ``cell_matched_mask``.
        ``matching_stats`` : dict
            See :func:`matching_stats_from_counts` (counts are of labels > 0).
        ``n_cells``, ``n_nuclei``, ``n_matched``, ``n_repaired`` : int
            Distinct cell and nucleus labels, matched pairs, and matched cells whose nucleus lay
            partly outside the cell interior (``0 < m < 1``).
        ``frac_cells_matched``, ``frac_nuclei_matched``, ``match_jaccard`` : float
            ``M/C``, ``M/N`` and ``M/(C+N-M)``; NaN when the denominator is 0.

    Raises
    ------
    InputError
        If a mask is not 2-D, the shapes differ, a mask is empty, not numeric, boolean, or has
        negative or fractional labels.
    ConfigError
        If `tie_break` is unknown.
    """
    aegle_order = check_tie_break(tie_break)
    cell_arr = _as_label_image(cell, "cell")
    nuc_arr = _as_label_image(nucleus, "nucleus")
    if cell_arr.shape != nuc_arr.shape:
        raise InputError(
            f"cell and nucleus masks must have the same shape; got {cell_arr.shape} and "
            f"{nuc_arr.shape}. Pass the two channels of the same segmentation result."
        )
    boundary = boundary_pixels(cell_arr)
    runs = region_runs(cell_arr, nuc_arr, boundary)
    matching = match_tally(
        tally_region(runs), aegle_order=aegle_order, order_of=lambda cells: order_table(runs, cells)
    )
    masks = assemble_region(runs, matching)
    # A matched cell's boundary pixels are exactly its original boundary pixels: their differing
    # neighbour is background, an unmatched cell (now 0) or a cell with another new id.
    masks[CELL_MATCHED_BOUNDARY] = masks[CELL_MATCHED_MASK] * boundary
    del boundary
    nucleus_matched = masks[NUCLEUS_MATCHED_MASK]
    masks[NUCLEUS_MATCHED_BOUNDARY] = nucleus_matched * boundary_pixels(nucleus_matched)
    return {**masks, **matching.metrics()}


def repair_masks_batch(
    seg_res_batch: Iterable[Mapping[str, Any]], *, tie_break: TieBreakName = "lowest-label"
) -> list[dict[str, Any]]:
    """Run :func:`repair_masks` on every segmentation result of a batch, in order.

    Parameters
    ----------
    seg_res_batch : iterable of mapping
        Each item holds at least ``"cell"`` and ``"nucleus"``, (H, W) label images (other keys,
        such as boundaries, are ignored). Items may differ in shape.
    tie_break : {"lowest-label", "aegle-cpu"}
        See :func:`repair_masks`.

    Returns
    -------
    list of dict
        One :func:`repair_masks` result per item, same length and order.

    Raises
    ------
    InputError
        If an item lacks ``"cell"`` or ``"nucleus"`` or holds bad masks; the message names the
        item's position.
    """
    check_tie_break(tie_break)
    results = []
    for i, item in enumerate(seg_res_batch):
        if not isinstance(item, Mapping) or CELL not in item or NUCLEUS not in item:
            raise InputError(
                f"seg_res_batch[{i}] must be a dict with 'cell' and 'nucleus' label images; got "
                f"{type(item).__name__}"
                + (f" with keys {sorted(map(str, item))}" if isinstance(item, Mapping) else "")
            )
        try:
            results.append(repair_masks(item[CELL], item[NUCLEUS], tie_break=tie_break))
        except InputError as err:
            raise InputError(f"seg_res_batch[{i}]: {err}") from err
    return results


# --------------------------------------------------------------------------------------------------
# input checks


def _as_label_image(mask: npt.ArrayLike, name: str) -> np.ndarray:
    """Validate one (H, W) label image; return it C-contiguous with an integer dtype.

    Booleans are refused (a binary mask is one object, almost always a mistake: label it first);
    floats are accepted when every value is a non-negative whole number and are cast to int64.
    """
    try:
        arr = np.asarray(mask)
    except (TypeError, ValueError) as err:  # ragged nested sequences
        raise InputError(f"{name} mask is not an array: {err}") from err
    if arr.ndim != 2:
        hint = " Drop the leading axis with mask[0]." if arr.ndim == 3 and arr.shape[0] == 1 else ""
        raise InputError(
            f"{name} mask must be a 2-D (H, W) label image; got shape {arr.shape}.{hint} "
            "Use repair_masks_batch for several images."
        )
    if arr.size == 0:
        raise InputError(f"{name} mask is empty (shape {arr.shape}); pass at least one pixel.")
    kind = arr.dtype.kind
    if kind == "b":
        raise InputError(
            f"{name} mask is boolean; repair needs one label per object. Label it first, e.g. "
            "skimage.measure.label(mask, connectivity=1)."
        )
    if kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.trunc(arr)).all():
            raise InputError(
                f"{name} mask has fractional or non-finite float values; labels must be whole "
                "numbers. Pass the integer labels the segmenter produced (do not resample them "
                "with interpolation)."
            )
        if arr.min() < 0 or arr.max() >= 2.0**63:
            raise InputError(
                f"{name} mask labels must lie in [0, 2**63); got [{arr.min()}, {arr.max()}]."
            )
        arr = arr.astype(np.int64)
    elif kind not in "iu":
        raise InputError(
            f"{name} mask has dtype {arr.dtype}; label images must be integer (uint8 ... int64) "
            "or whole-number floats."
        )
    if kind == "i" and arr.min() < 0:
        raise InputError(
            f"{name} mask has negative labels (minimum {arr.min()}); labels must be >= 0 with 0 "
            "as background."
        )
    return np.ascontiguousarray(arr)
