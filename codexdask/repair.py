"""Cell–nucleus matching and repair (the original pipeline's ``repair_masks``), vectorised.

Semantics (``docs/semantics.md``, "The repair rule"):

- The *interior* of a cell is the cell minus its labelled inner boundary (4-connectivity; the image
  edge is not boundary, see :func:`codexdask.boundaries.get_boundary`).
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
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from codexdask.boundaries import boundary_pixels
from codexdask.errors import ConfigError, InputError

__all__ = ["TIE_BREAKS", "TieBreakName", "matching_stats_from_counts", "repair_masks",
           "repair_masks_batch"]

#: How a cell chooses among equally good nuclei: the lowest nucleus label, or the original
#: pipeline's CPU iteration order (for bit-for-bit comparisons with it).
TieBreakName = Literal["lowest-label", "aegle-cpu"]
TIE_BREAKS: tuple[str, ...] = get_args(TieBreakName)


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
    aegle_order = _check_tie_break(tie_break)
    cell_arr = _as_label_image(cell, "cell")
    nuc_arr = _as_label_image(nucleus, "nucleus")
    if cell_arr.shape != nuc_arr.shape:
        raise InputError(
            f"cell and nucleus masks must have the same shape; got {cell_arr.shape} and "
            f"{nuc_arr.shape}. Pass the two channels of the same segmentation result."
        )
    shape = cell_arr.shape

    # 1. Runs of equal (cell, nucleus, cell-boundary) in row-major order.
    boundary = boundary_pixels(cell_arr).ravel()
    cell_flat, nuc_flat = cell_arr.ravel(), nuc_arr.ravel()
    starts = _run_starts(cell_flat, nuc_flat, boundary)
    lengths = np.diff(starts, append=cell_flat.size)
    cell_labels, rc = _compact(cell_flat[starts])  # rc: compact cell index per run, 0 = background
    nuc_labels, rn = _compact(nuc_flat[starts])
    interior = (rc != 0) & ~boundary[starts]
    n_cells, n_nuclei = cell_labels.size - 1, nuc_labels.size - 1

    # 2. Overlapping (cell, nucleus) pairs and their mismatch, sorted by (cell, m, nucleus).
    nuc_size = np.bincount(rn, weights=lengths, minlength=n_nuclei + 1)
    pair_cell, pair_nuc, pair_m = _overlap_pairs(rc, rn, interior, lengths, nuc_size, n_nuclei)

    # 3. Greedy one-to-one pass over the pairs.
    set_order = None
    if aegle_order:
        tie_cells = np.unique(
            pair_cell[1:][(pair_cell[1:] == pair_cell[:-1]) & (pair_m[1:] == pair_m[:-1])]
        )
        set_order = _cpython_set_order(tie_cells, rc, rn, nuc_labels, n_cells, n_nuclei)
    match, n_repaired = _greedy_match(pair_cell, pair_nuc, pair_m, n_cells, n_nuclei, set_order)

    # 4. Assemble the masks run by run.
    matched = np.flatnonzero(match)
    n_matched = int(matched.size)
    new_id = np.zeros(n_cells + 1, dtype=np.uint32)
    new_id[matched] = np.arange(1, n_matched + 1, dtype=np.uint32)
    run_cell = new_id[rc]
    run_nuc = np.where(interior & (rn == match[rc]), run_cell, np.uint32(0))
    cell_matched = np.repeat(run_cell, lengths).reshape(shape)
    nuc_matched = np.repeat(run_nuc, lengths).reshape(shape)
    cytoplasm = cell_matched - nuc_matched  # a nucleus pixel carries its own cell's id
    # A matched cell's boundary pixels are exactly its original boundary pixels: their differing
    # neighbour is background, an unmatched cell (now 0) or a cell with another new id.
    cell_boundary = cell_matched * boundary.reshape(shape)
    del boundary
    nuc_boundary = nuc_matched * boundary_pixels(nuc_matched)

    # 5. Metrics.
    u_cell = n_cells + int(bool((rc == 0).any()))
    u_nuc = n_nuclei + int(bool((rn == 0).any()))
    u_matched = n_matched + int(bool((run_cell == 0).any()))
    return {
        "cell_matched_mask": cell_matched,
        "nucleus_matched_mask": nuc_matched,
        "cell_outside_nucleus_mask": cytoplasm,
        "cell_matched_boundary": cell_boundary,
        "nucleus_matched_boundary": nuc_boundary,
        "matched_fraction": u_matched / (u_cell + u_nuc - u_matched),
        "matching_stats": matching_stats_from_counts(n_cells, n_nuclei, n_matched),
        "n_cells": n_cells,
        "n_nuclei": n_nuclei,
        "n_matched": n_matched,
        "n_repaired": n_repaired,
        "frac_cells_matched": _ratio(n_matched, n_cells),
        "frac_nuclei_matched": _ratio(n_matched, n_nuclei),
        "match_jaccard": _ratio(n_matched, n_cells + n_nuclei - n_matched),
    }


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
    _check_tie_break(tie_break)
    results = []
    for i, item in enumerate(seg_res_batch):
        if not isinstance(item, Mapping) or "cell" not in item or "nucleus" not in item:
            raise InputError(
                f"seg_res_batch[{i}] must be a dict with 'cell' and 'nucleus' label images; got "
                f"{type(item).__name__}"
                + (f" with keys {sorted(map(str, item))}" if isinstance(item, Mapping) else "")
            )
        try:
            results.append(repair_masks(item["cell"], item["nucleus"], tie_break=tie_break))
        except InputError as err:
            raise InputError(f"seg_res_batch[{i}]: {err}") from err
    return results


def matching_stats_from_counts(n_cells: int, n_nuclei: int, n_matched: int) -> dict[str, Any]:
    """Matching statistics in the original pipeline's structure.

    Parameters
    ----------
    n_cells, n_nuclei, n_matched : int
        Cells and nuclei in the input masks (labels > 0) and matched pairs.

    Returns
    -------
    dict
        ``{"nucleus": {"total": (N, 100.0), "matched": (M, pct), "unmatched": (N - M, pct)},
        "whole_cell": {"total": (C, 100.0), "matched": (M, pct), "unmatched": (C - M, pct)}}``
        with ``pct = 100 * count / total`` as a float, or the integer 0 when ``total == 0``.

    Raises
    ------
    InputError
        If a count is negative or `n_matched` exceeds `n_cells` or `n_nuclei`.
    """
    n_cells, n_nuclei, n_matched = int(n_cells), int(n_nuclei), int(n_matched)
    if min(n_cells, n_nuclei, n_matched) < 0 or n_matched > min(n_cells, n_nuclei):
        raise InputError(
            "need 0 <= n_matched <= min(n_cells, n_nuclei) and non-negative counts; got "
            f"n_cells={n_cells}, n_nuclei={n_nuclei}, n_matched={n_matched}"
        )

    def block(total: int) -> dict[str, tuple[int, float | int]]:
        def pct(count: int) -> float | int:
            return 100.0 * count / total if total else 0

        return {
            "total": (total, 100.0),
            "matched": (n_matched, pct(n_matched)),
            "unmatched": (total - n_matched, pct(total - n_matched)),
        }

    return {"nucleus": block(n_nuclei), "whole_cell": block(n_cells)}


# --------------------------------------------------------------------------------------------------
# input checks


def _check_tie_break(tie_break: str) -> bool:
    """Return True for the aegle-cpu order; raise ConfigError for unknown modes."""
    if tie_break not in TIE_BREAKS:
        raise ConfigError(
            f"unknown tie_break {tie_break!r}; use one of {', '.join(map(repr, TIE_BREAKS))}"
        )
    return tie_break == "aegle-cpu"


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


# --------------------------------------------------------------------------------------------------
# kernels


def _run_starts(*flat: np.ndarray) -> npt.NDArray[np.intp]:
    """Start positions of the maximal runs over which every array in `flat` is constant.

    Parameters
    ----------
    *flat : ndarray, shape (P,)
        Arrays of equal length P >= 1.

    Returns
    -------
    ndarray of intp, shape (R,)
        Increasing positions, the first being 0.
    """
    change = np.empty(flat[0].size, dtype=bool)
    change[0] = True
    np.not_equal(flat[0][1:], flat[0][:-1], out=change[1:])
    tmp = np.empty(flat[0].size - 1, dtype=bool)
    for arr in flat[1:]:
        np.not_equal(arr[1:], arr[:-1], out=tmp)
        change[1:] |= tmp
    return np.flatnonzero(change)


def _compact(values: np.ndarray) -> tuple[np.ndarray, npt.NDArray[np.intp]]:
    """Map label values to compact indices 0..K, index 0 being label 0.

    Parameters
    ----------
    values : ndarray of non-negative integers, shape (R,)

    Returns
    -------
    labels : ndarray, shape (K + 1,)
        Sorted distinct labels with 0 prepended when absent (``labels[0] == 0``).
    index : ndarray of intp, shape (R,)
        ``labels[index] == values``.
    """
    vmax = int(values.max())
    if vmax <= 4 * values.size + 65536:  # small labels: a lookup table, O(R)
        present = np.zeros(vmax + 1, dtype=bool)
        present[values] = True
        present[0] = True
        labels = np.flatnonzero(present)
        lut = np.zeros(vmax + 1, dtype=np.intp)
        lut[labels] = np.arange(labels.size)
        return labels, lut[values]
    labels, index = np.unique(values, return_inverse=True)  # huge or sparse labels: sort
    index = index.astype(np.intp, copy=False).ravel()
    if labels[0] != 0:
        labels = np.concatenate([np.zeros(1, labels.dtype), labels])
        index += 1
    return labels, index


def _overlap_pairs(
    rc: np.ndarray,
    rn: np.ndarray,
    interior: np.ndarray,
    lengths: np.ndarray,
    nuc_size: np.ndarray,
    n_nuclei: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Cell-interior/nucleus overlap pairs with their mismatch, sorted by (cell, m, nucleus).

    Parameters
    ----------
    rc, rn : ndarray of intp, shape (R,)
        Compact cell and nucleus index of every run.
    interior : ndarray of bool, shape (R,)
        Whether the run lies in a cell interior.
    lengths : ndarray of intp, shape (R,)
        Run lengths in pixels.
    nuc_size : ndarray of float64, shape (N + 1,)
        Pixels per compact nucleus index.
    n_nuclei : int
        N, the number of nuclei.

    Returns
    -------
    pair_cell, pair_nuc : ndarray of intp, shape (Q,)
        Compact indices of the Q pairs with a positive interior overlap.
    pair_m : ndarray of float64, shape (Q,)
        ``m = (|P(n)| - |P(n) ∩ I(c)|) / |P(n)|``, in [0, 1).
    """
    sel = np.flatnonzero(interior & (rn != 0))
    key = rc[sel].astype(np.int64) * (n_nuclei + 1) + rn[sel]
    keys, inverse = np.unique(key, return_inverse=True)
    overlap = np.bincount(inverse.ravel(), weights=lengths[sel], minlength=keys.size)
    pair_cell = (keys // (n_nuclei + 1)).astype(np.intp)
    pair_nuc = (keys % (n_nuclei + 1)).astype(np.intp)
    size = nuc_size[pair_nuc]
    pair_m = (size - overlap) / size  # one correctly rounded division, as |P \ I| / |P|
    order = np.lexsort((pair_nuc, pair_m, pair_cell))
    return pair_cell[order], pair_nuc[order], pair_m[order]


def _cpython_set_order(
    cells: np.ndarray,
    rc: np.ndarray,
    rn: np.ndarray,
    nuc_labels: np.ndarray,
    n_cells: int,
    n_nuclei: int,
) -> dict[int, dict[int, int]]:
    """Rank of each nucleus in the CPython ``set`` iteration order the original CPU path uses.

    That path iterates ``set(nucleus values under the cell's pixels in row-major order)``. A set's
    order depends only on the distinct values in first-occurrence order (0 and nuclei that touch
    only the membrane included), so building a set from that sequence reproduces it exactly.

    Parameters
    ----------
    cells : ndarray of intp
        Compact indices of the cells that need the order (those with tied candidates).
    rc, rn : ndarray of intp, shape (R,)
        Compact cell and nucleus index of every run, runs in row-major order.
    nuc_labels : ndarray, shape (N + 1,)
        Nucleus label of every compact index.
    n_cells, n_nuclei : int
        C and N.

    Returns
    -------
    dict
        ``{cell index: {nucleus index: rank}}`` for every cell in `cells`.
    """
    if cells.size == 0:
        return {}
    wanted = np.zeros(n_cells + 1, dtype=bool)
    wanted[cells] = True
    sel = np.flatnonzero(wanted[rc])
    key = rc[sel].astype(np.int64) * (n_nuclei + 1) + rn[sel]
    keys, first = np.unique(key, return_index=True)  # first occurrence of each (cell, nucleus)
    key_cell, key_nuc = keys // (n_nuclei + 1), keys % (n_nuclei + 1)
    order = np.lexsort((first, key_cell))
    key_cell, key_nuc = key_cell[order], key_nuc[order]
    bounds = np.flatnonzero(np.diff(key_cell)) + 1
    ranks: dict[int, dict[int, int]] = {}
    for c_idx, nucs in zip(
        key_cell[np.r_[0, bounds]].tolist(), np.split(key_nuc, bounds), strict=True
    ):
        labels = nuc_labels[nucs].tolist()
        label_to_index = dict(zip(labels, nucs.tolist(), strict=True))
        # Build the set from a list: set(dict) pre-sizes its table and iterates differently.
        ranks[c_idx] = {label_to_index[v]: i for i, v in enumerate(set(labels))}
    return ranks


def _greedy_match(
    pair_cell: np.ndarray,
    pair_nuc: np.ndarray,
    pair_m: np.ndarray,
    n_cells: int,
    n_nuclei: int,
    set_order: dict[int, dict[int, int]] | None,
) -> tuple[npt.NDArray[np.intp], int]:
    """Greedy one-to-one matching over pairs sorted by (cell, m, nucleus).

    Returns
    -------
    match : ndarray of intp, shape (C + 1,)
        Compact nucleus index matched to each compact cell index, 0 when unmatched.
    n_repaired : int
        Matched cells whose mismatch is strictly positive.
    """
    match = [0] * (n_cells + 1)
    n_repaired = 0
    claimed = bytearray(n_nuclei + 1)
    cells, nucs, ms = pair_cell.tolist(), pair_nuc.tolist(), pair_m.tolist()
    group_starts = np.flatnonzero(np.r_[True, pair_cell[1:] != pair_cell[:-1]]).tolist()
    for start, stop in zip(group_starts, group_starts[1:] + [len(cells)], strict=True):
        j = start
        while j < stop and claimed[nucs[j]]:
            j += 1
        if j == stop:
            continue
        best, best_m = nucs[j], ms[j]
        if set_order is not None and cells[j] in set_order:
            tied = [best]
            for t in range(j + 1, stop):
                if ms[t] != best_m:
                    break
                if not claimed[nucs[t]]:
                    tied.append(nucs[t])
            if len(tied) > 1:
                best = min(tied, key=set_order[cells[j]].__getitem__)
        claimed[best] = 1
        match[cells[j]] = best
        n_repaired += best_m > 0.0
    return np.asarray(match, dtype=np.intp), n_repaired


def _ratio(num: int, den: int) -> float:
    """``num / den`` as a float, NaN when ``den == 0``."""
    return num / den if den else float("nan")
