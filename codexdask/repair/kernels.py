"""The kernels of :mod:`codexdask.repair.matching`: runs, compact labels, sums by key, greedy pass.

Plain numpy, plus one numba kernel for the greedy pass (a loop over the overlapping pairs in cell
order; as Python it held every pair as three Python objects, ~100 bytes a pair, and was the slow
part of large repairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.errors import InputError
from codexdask.postprocess._jit import jit

__all__ = ["compact", "cpython_set_order", "greedy_match", "ratio", "run_starts", "sum_by_key",
           "sum_by_pair", "to_global"]

_EMPTY_LABELS = np.zeros(0, dtype=np.uint64)
_EMPTY_COUNTS = np.zeros(0, dtype=np.int64)



def run_starts(*flat: np.ndarray) -> npt.NDArray[np.intp]:
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


def compact(values: np.ndarray) -> tuple[np.ndarray, npt.NDArray[np.intp]]:
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


def to_global(local: np.ndarray, known: np.ndarray, what: str) -> npt.NDArray[np.intp]:
    """Compact indices in ``known`` of the sorted labels ``local`` (both start with 0)."""
    index = np.searchsorted(known, local).astype(np.intp)
    if index.size and (index[-1] >= known.size or np.any(known[index] != local)):
        raise InputError(
            f"a {what} label of this region is not in the matching; assemble each region with "
            "the matching of its own image"
        )
    return index


def sum_by_key(
    keys: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Distinct keys of all ``keys`` and the sum of their ``values``."""
    all_keys = np.concatenate(keys) if keys else _EMPTY_LABELS
    all_values = np.concatenate(values) if values else _EMPTY_COUNTS
    distinct, inverse = np.unique(all_keys, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=all_values, minlength=distinct.size)
    return distinct.astype(np.uint64), sums.astype(np.int64)  # pixel counts: exact below 2**53


def sum_by_pair(
    keys: Sequence[tuple[np.ndarray, np.ndarray]],
    values: Sequence[np.ndarray],
    reduce: Any = np.add,
) -> tuple[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]], npt.NDArray[np.int64]]:
    """Distinct (a, b) label pairs sorted by (a, b), with ``reduce`` of their values."""
    first = np.concatenate([k[0] for k in keys]).astype(np.uint64)
    second = np.concatenate([k[1] for k in keys]).astype(np.uint64)
    value = np.concatenate(values).astype(np.int64)
    sort = np.lexsort((second, first))
    first, second, value = first[sort], second[sort], value[sort]
    if first.size == 0:
        return (first, second), value
    new = np.flatnonzero(np.r_[True, (first[1:] != first[:-1]) | (second[1:] != second[:-1])])
    return (first[new], second[new]), reduce.reduceat(value, new)


def cpython_set_order(
    cells: np.ndarray,
    order: tuple[np.ndarray, np.ndarray, np.ndarray],
    cell_labels: np.ndarray,
    nucleus_labels: np.ndarray,
) -> dict[int, dict[int, int]]:
    """Rank of each nucleus in the CPython ``set`` iteration order the reference CPU path uses.

    That path iterates ``set(nucleus values under the cell's pixels in row-major order)``. A set's
    order depends only on the distinct values in first-occurrence order (0 and nuclei that touch
    only the membrane included), so building a set from that sequence reproduces it exactly.

    Parameters
    ----------
    cells : ndarray of intp
        Compact indices of the cells that need the order (those with tied candidates).
    order : (cell labels, nucleus labels, first positions)
        :attr:`RepairTally.order`.
    cell_labels, nucleus_labels : ndarray of uint64
        The matching's compact label arrays (0 first).

    Returns
    -------
    dict
        ``{cell index: {nucleus index: rank}}`` for every cell in `cells`.
    """
    if cells.size == 0:
        return {}
    wanted = np.isin(order[0], cell_labels[cells])
    cell_of, nucleus_of, first = order[0][wanted], order[1][wanted], order[2][wanted]
    sort = np.lexsort((first, cell_of))
    cell_of, nucleus_of = cell_of[sort], nucleus_of[sort]
    bounds = np.flatnonzero(cell_of[1:] != cell_of[:-1]) + 1
    ranks: dict[int, dict[int, int]] = {}
    for cell, nucs in zip(
        np.searchsorted(cell_labels, cell_of[np.r_[0, bounds]]).tolist(),
        np.split(nucleus_of, bounds),
        strict=True,
    ):
        labels = nucs.tolist()
        index = np.searchsorted(nucleus_labels, nucs).tolist()
        label_to_index = dict(zip(labels, index, strict=True))
        # Build the set from a list: set(dict) pre-sizes its table and iterates differently.
        ranks[cell] = {label_to_index[v]: i for i, v in enumerate(set(labels))}
    return ranks


def greedy_match(
    pair_cell: np.ndarray,
    pair_nuc: np.ndarray,
    pair_m: np.ndarray,
    n_cells: int,
    n_nuclei: int,
    set_order: dict[int, dict[int, int]] | None,
) -> tuple[npt.NDArray[np.intp], int]:
    """Greedy one-to-one matching over pairs sorted by (cell, m, nucleus).

    Each cell, in order, takes its first unclaimed nucleus; with ``set_order`` (the
    ``aegle-cpu`` tie-break), a cell listed there chooses among its equally good unclaimed nuclei
    by that order instead.

    Returns
    -------
    match : ndarray of intp, shape (C + 1,)
        Compact nucleus index matched to each compact cell index, 0 when unmatched.
    n_repaired : int
        Matched cells whose mismatch is strictly positive.
    """
    pair_cell = np.ascontiguousarray(pair_cell, dtype=np.intp)
    pair_nuc = np.ascontiguousarray(pair_nuc, dtype=np.intp)
    pair_m = np.ascontiguousarray(pair_m, dtype=np.float64)
    if not set_order:
        match, n_repaired = _greedy_kernel(pair_cell, pair_nuc, pair_m, n_cells, n_nuclei)
        return match, int(n_repaired)
    return _greedy_with_order(pair_cell, pair_nuc, pair_m, n_cells, n_nuclei, set_order)


@jit
def _greedy_kernel(pair_cell: Any, pair_nuc: Any, pair_m: Any, n_cells: int,
                   n_nuclei: int) -> Any:  # pragma: no cover - compiled by numba
    match = np.zeros(n_cells + 1, dtype=np.intp)
    claimed = np.zeros(n_nuclei + 1, dtype=np.bool_)
    n_repaired = 0
    total = pair_cell.size
    start = 0
    while start < total:
        cell = pair_cell[start]
        stop = start
        while stop < total and pair_cell[stop] == cell:
            stop += 1
        j = start
        while j < stop and claimed[pair_nuc[j]]:
            j += 1
        if j < stop:
            claimed[pair_nuc[j]] = True
            match[cell] = pair_nuc[j]
            if pair_m[j] > 0.0:
                n_repaired += 1
        start = stop
    return match, n_repaired


def _greedy_with_order(
    pair_cell: np.ndarray,
    pair_nuc: np.ndarray,
    pair_m: np.ndarray,
    n_cells: int,
    n_nuclei: int,
    set_order: dict[int, dict[int, int]],
) -> tuple[npt.NDArray[np.intp], int]:
    """The greedy pass in Python, for the ``aegle-cpu`` tie-break's CPython set order."""
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
        if cells[j] in set_order:
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


def ratio(num: int, den: int) -> float:
    """``num / den`` as a float, NaN when ``den == 0``."""
    return num / den if den else float("nan")
