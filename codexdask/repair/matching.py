"""The cell–nucleus repair in three parts, so that it can run region by region.

:func:`codexdask.repair.masks.repair_masks` is ``tally`` → ``match`` → ``assemble`` on one image. A
whole slide cut into blocks runs the same parts: a :class:`RepairTally` per block (additive: the
tallies of disjoint regions combine into the tally of their union), one :func:`match_tally` on the
combined tally (the greedy pass needs every cell, in label order), then :func:`assemble_region`
per block. Because every part is the same code, the block-wise repair equals the one-image repair
bit for bit. The rule itself is described in ``docs/semantics.md``.

Regions are read as *runs*: maximal stretches of row-major pixels with the same (cell label,
nucleus label, cell-boundary flag). A region's cell boundary must be computed by the caller from
the whole image (or from the region plus a one-pixel margin), because the interior of a cell is
the cell minus its inner boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.config import TIE_BREAKS
from codexdask.errors import ConfigError, InputError
from codexdask.layout import CELL_MATCHED_MASK, CELL_OUTSIDE_NUCLEUS_MASK, NUCLEUS_MATCHED_MASK
from codexdask.repair.counts import matching_metrics
from codexdask.repair.kernels import (
    compact,
    cpython_set_order,
    greedy_match,
    run_starts,
    sum_by_key,
    sum_by_pair,
    to_global,
)

__all__ = [
    "Matching",
    "RegionRuns",
    "RepairTally",
    "assemble_region",
    "check_tie_break",
    "combine_tallies",
    "match_tally",
    "order_table",
    "region_runs",
    "tally_region",
]


@dataclasses.dataclass(frozen=True)
class RegionRuns:
    """One region of a (cell, nucleus) label pair as runs.

    Attributes
    ----------
    shape : (int, int)
        Region height and width.
    starts, lengths : ndarray of intp, shape (R,)
        Row-major start and length of every run.
    cell_labels, nucleus_labels : ndarray of uint64, shape (C + 1,), (N + 1,)
        Sorted distinct labels of the region, 0 first (present or not).
    run_cell, run_nucleus : ndarray of intp, shape (R,)
        Index into ``cell_labels`` / ``nucleus_labels`` of every run.
    interior : ndarray of bool, shape (R,)
        Whether the run lies in a cell interior (a cell pixel off the cell's inner boundary).
    positions : ndarray of int64, shape (R,)
        Position of every run's first pixel in the row-major order of the whole image.
    """

    shape: tuple[int, int]
    starts: npt.NDArray[np.intp]
    lengths: npt.NDArray[np.intp]
    cell_labels: npt.NDArray[np.uint64]
    nucleus_labels: npt.NDArray[np.uint64]
    run_cell: npt.NDArray[np.intp]
    run_nucleus: npt.NDArray[np.intp]
    interior: npt.NDArray[np.bool_]
    positions: npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True)
class RepairTally:
    """Everything the greedy pass needs to know about a region; tallies of disjoint regions add.

    Attributes
    ----------
    cell_labels : ndarray of uint64, shape (C,)
        Sorted distinct cell labels > 0.
    nucleus_labels : ndarray of uint64, shape (N,)
        Sorted distinct nucleus labels > 0.
    nucleus_sizes : ndarray of int64, shape (N,)
        Pixels of each nucleus.
    pair_cell, pair_nucleus : ndarray of uint64, shape (Q,)
        Cell and nucleus labels of every pair whose nucleus overlaps the cell's interior, sorted by
        (cell, nucleus).
    pair_overlap : ndarray of int64, shape (Q,)
        Interior pixels each pair shares.
    cell_background, nucleus_background : bool
        Whether some pixel has cell label 0 / nucleus label 0.
    order : tuple of three ndarrays or None
        For the ``aegle-cpu`` tie-break only: ``(cell, nucleus, position)`` — the first row-major
        position of every (cell label > 0, nucleus label >= 0) value pair among the cell pixels.
    """

    cell_labels: npt.NDArray[np.uint64]
    nucleus_labels: npt.NDArray[np.uint64]
    nucleus_sizes: npt.NDArray[np.int64]
    pair_cell: npt.NDArray[np.uint64]
    pair_nucleus: npt.NDArray[np.uint64]
    pair_overlap: npt.NDArray[np.int64]
    cell_background: bool
    nucleus_background: bool
    order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Matching:
    """The outcome of the greedy pass over a tally.

    Attributes
    ----------
    cell_labels, nucleus_labels : ndarray of uint64, shape (C + 1,), (N + 1,)
        Sorted distinct labels, 0 first; positions in these arrays are the *compact indices*.
    match : ndarray of intp, shape (C + 1,)
        Compact nucleus index matched to each compact cell index, 0 when unmatched.
    new_id : ndarray of uint32, shape (C + 1,)
        New id 1..M of each matched cell in ascending cell-label order, 0 otherwise.
    n_repaired : int
        Matched cells whose nucleus lay partly outside the cell interior (0 < m < 1).
    cell_background, nucleus_background : bool
        As in the tally.
    """

    cell_labels: npt.NDArray[np.uint64]
    nucleus_labels: npt.NDArray[np.uint64]
    match: npt.NDArray[np.intp]
    new_id: npt.NDArray[np.uint32]
    n_repaired: int
    cell_background: bool
    nucleus_background: bool

    @property
    def n_cells(self) -> int:
        """C, the number of distinct cell labels > 0."""
        return int(self.cell_labels.size - 1)

    @property
    def n_nuclei(self) -> int:
        """N, the number of distinct nucleus labels > 0."""
        return int(self.nucleus_labels.size - 1)

    @property
    def n_matched(self) -> int:
        """M, the number of matched pairs."""
        return int(np.count_nonzero(self.match))

    def metrics(self) -> dict[str, Any]:
        """Counts and ratios (see :func:`codexdask.repair.masks.repair_masks`)."""
        return matching_metrics(self.n_cells, self.n_nuclei, self.n_matched, self.n_repaired,
                                self.cell_background, self.nucleus_background)


# --------------------------------------------------------------------------------------------------
# runs and tallies


def region_runs(
    cell: np.ndarray,
    nucleus: np.ndarray,
    boundary: np.ndarray,
    *,
    origin: tuple[int, int] = (0, 0),
    image_width: int | None = None,
) -> RegionRuns:
    """Read one region as runs of equal (cell, nucleus, boundary).

    Parameters
    ----------
    cell, nucleus : ndarray, shape (h, w)
        Non-negative integer labels of the region (C-contiguous is fastest).
    boundary : ndarray of bool, shape (h, w)
        The cells' inner boundary, computed with the region's neighbours in the whole image.
    origin : (int, int)
        Row and column of the region's first pixel in the whole image.
    image_width : int, optional
        Width of the whole image (default: the region's), for row-major positions.

    Returns
    -------
    RegionRuns
    """
    height, width = cell.shape
    cell_flat, nuc_flat = cell.ravel(), nucleus.ravel()
    flags = boundary.ravel()
    starts = run_starts(cell_flat, nuc_flat, flags)
    lengths = np.diff(starts, append=cell_flat.size)
    cell_labels, run_cell = compact(cell_flat[starts])
    nucleus_labels, run_nucleus = compact(nuc_flat[starts])
    full_width = width if image_width is None else int(image_width)
    rows, cols = np.divmod(starts, width)
    positions = (rows + origin[0]).astype(np.int64) * full_width + (cols + origin[1])
    return RegionRuns(
        shape=(height, width),
        starts=starts,
        lengths=lengths,
        cell_labels=cell_labels.astype(np.uint64, copy=False),
        nucleus_labels=nucleus_labels.astype(np.uint64, copy=False),
        run_cell=run_cell,
        run_nucleus=run_nucleus,
        interior=(run_cell != 0) & ~flags[starts],
        positions=positions,
    )


def tally_region(runs: RegionRuns, *, with_order: bool = False) -> RepairTally:
    """The :class:`RepairTally` of one region.

    Parameters
    ----------
    runs : RegionRuns
        From :func:`region_runs`.
    with_order : bool
        Also record the first position of every (cell, nucleus) value pair, which the
        ``aegle-cpu`` tie-break needs.
    """
    n_nuclei = runs.nucleus_labels.size - 1
    rc, rn, lengths = runs.run_cell, runs.run_nucleus, runs.lengths
    nucleus_sizes = np.bincount(rn, weights=lengths, minlength=n_nuclei + 1).astype(np.int64)
    sel = np.flatnonzero(runs.interior & (rn != 0))
    key = rc[sel].astype(np.int64) * (n_nuclei + 1) + rn[sel]
    keys, inverse = np.unique(key, return_inverse=True)
    overlap = np.bincount(inverse.ravel(), weights=lengths[sel], minlength=keys.size)
    return RepairTally(  # every label but the leading 0 occurs in the region
        cell_labels=runs.cell_labels[1:],
        nucleus_labels=runs.nucleus_labels[1:],
        nucleus_sizes=nucleus_sizes[1:],
        pair_cell=runs.cell_labels[keys // (n_nuclei + 1)],
        pair_nucleus=runs.nucleus_labels[keys % (n_nuclei + 1)],
        pair_overlap=overlap.astype(np.int64),
        cell_background=bool(np.any(rc == 0)),
        nucleus_background=bool(np.any(rn == 0)),
        order=order_table(runs) if with_order else None,
    )


def order_table(
    runs: RegionRuns, cells: np.ndarray | None = None
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """First row-major position of every (cell, nucleus) value pair among the cell pixels.

    Parameters
    ----------
    runs : RegionRuns
    cells : ndarray of uint64, optional
        Only these cell labels (default: every cell).

    Returns
    -------
    (cell labels, nucleus labels, positions) : ndarrays of uint64, uint64, int64
        Nucleus label 0 included; sorted by (cell, nucleus).
    """
    n_nuclei = runs.nucleus_labels.size - 1
    rc, rn = runs.run_cell, runs.run_nucleus
    if cells is None:
        wanted = rc != 0
    else:
        flags = np.zeros(runs.cell_labels.size, dtype=bool)
        flags[np.searchsorted(runs.cell_labels, cells)] = True
        flags[0] = False
        wanted = flags[rc]
    sel = np.flatnonzero(wanted)
    keys, first = np.unique(rc[sel].astype(np.int64) * (n_nuclei + 1) + rn[sel], return_index=True)
    return (
        runs.cell_labels[keys // (n_nuclei + 1)],
        runs.nucleus_labels[keys % (n_nuclei + 1)],
        runs.positions[sel[first]],
    )


def combine_tallies(tallies: Sequence[RepairTally]) -> RepairTally:
    """The tally of the union of disjoint regions.

    Raises
    ------
    InputError
        If ``tallies`` is empty, or some carry the ``aegle-cpu`` order and others do not.
    """
    if not tallies:
        raise InputError("combine_tallies needs at least one tally")
    if len(tallies) == 1:
        return tallies[0]
    with_order = [t.order is not None for t in tallies]
    if any(with_order) and not all(with_order):
        raise InputError("tallies must all carry the aegle-cpu order, or none of them")
    cells = np.unique(np.concatenate([t.cell_labels for t in tallies]))
    nuclei, sizes = sum_by_key(
        [t.nucleus_labels for t in tallies], [t.nucleus_sizes for t in tallies]
    )
    (pair_cell, pair_nucleus), overlap = sum_by_pair(
        [(t.pair_cell, t.pair_nucleus) for t in tallies], [t.pair_overlap for t in tallies]
    )
    order = None
    if all(with_order):
        parts = [t.order for t in tallies if t.order is not None]
        (order_cell, order_nucleus), first = sum_by_pair(
            [(o[0], o[1]) for o in parts], [o[2] for o in parts], reduce=np.minimum
        )
        order = (order_cell, order_nucleus, first)
    return RepairTally(
        cell_labels=cells,
        nucleus_labels=nuclei,
        nucleus_sizes=sizes,
        pair_cell=pair_cell,
        pair_nucleus=pair_nucleus,
        pair_overlap=overlap,
        cell_background=any(t.cell_background for t in tallies),
        nucleus_background=any(t.nucleus_background for t in tallies),
        order=order,
    )


# --------------------------------------------------------------------------------------------------
# the greedy pass


def match_tally(
    tally: RepairTally,
    *,
    aegle_order: bool = False,
    order_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> Matching:
    """Match cells to nuclei greedily, cells in ascending label order (see ``docs/semantics.md``).

    Parameters
    ----------
    tally : RepairTally
        Of the whole image (combined over its regions).
    aegle_order : bool
        Break ties between equally good nuclei in the reference CPU path's CPython ``set`` order
        instead of by lowest nucleus label. Needs ``tally.order`` or ``order_of``.
    order_of : callable, optional
        ``order_of(cell labels)`` -> :func:`order_table` of those cells; lets a one-image repair
        read the order of the few cells with ties only.

    Returns
    -------
    Matching
    """
    if aegle_order and tally.order is None and order_of is None:
        raise InputError("the aegle-cpu tie-break needs tallies made with with_order=True")
    cell_labels = np.concatenate([[0], tally.cell_labels]).astype(np.uint64)
    nucleus_labels = np.concatenate([[0], tally.nucleus_labels]).astype(np.uint64)
    n_cells, n_nuclei = cell_labels.size - 1, nucleus_labels.size - 1
    pair_cell = np.searchsorted(cell_labels, tally.pair_cell).astype(np.intp)
    pair_nuc = np.searchsorted(nucleus_labels, tally.pair_nucleus).astype(np.intp)
    size = tally.nucleus_sizes.astype(np.float64)[pair_nuc - 1]
    pair_m = (size - tally.pair_overlap) / size  # one correctly rounded division, |P \ I| / |P|
    sort = np.lexsort((pair_nuc, pair_m, pair_cell))
    pair_cell, pair_nuc, pair_m = pair_cell[sort], pair_nuc[sort], pair_m[sort]

    set_order = None
    if aegle_order:
        same = (pair_cell[1:] == pair_cell[:-1]) & (pair_m[1:] == pair_m[:-1])
        tie_cells = np.unique(pair_cell[1:][same])
        order = tally.order
        if order is None and order_of is not None:
            order = order_of(cell_labels[tie_cells])
        if order is not None:
            set_order = cpython_set_order(tie_cells, order, cell_labels, nucleus_labels)
    match, n_repaired = greedy_match(pair_cell, pair_nuc, pair_m, n_cells, n_nuclei, set_order)
    matched = np.flatnonzero(match)
    new_id = np.zeros(n_cells + 1, dtype=np.uint32)
    new_id[matched] = np.arange(1, matched.size + 1, dtype=np.uint32)
    return Matching(
        cell_labels=cell_labels,
        nucleus_labels=nucleus_labels,
        match=match,
        new_id=new_id,
        n_repaired=n_repaired,
        cell_background=tally.cell_background,
        nucleus_background=tally.nucleus_background,
    )


def assemble_region(runs: RegionRuns, matching: Matching) -> dict[str, np.ndarray]:
    """The repaired masks of one region.

    Parameters
    ----------
    runs : RegionRuns
        The region, as read for its tally.
    matching : Matching
        The greedy pass over the whole image.

    Returns
    -------
    dict
        ``cell_matched_mask``, ``nucleus_matched_mask`` and ``cell_outside_nucleus_mask``, each
        ``(h, w)`` uint32. (The boundaries need the neighbours of the region: the matched cells'
        boundary is ``cell_matched_mask`` on the cell boundary, the trimmed nuclei's boundary is
        that of ``nucleus_matched_mask`` computed with a one-pixel margin.)

    Raises
    ------
    InputError
        If the region holds a label the matching does not know (another image's matching).
    """
    to_cell = to_global(runs.cell_labels, matching.cell_labels, "cell")
    to_nucleus = to_global(runs.nucleus_labels, matching.nucleus_labels, "nucleus")
    run_cell_index = to_cell[runs.run_cell]
    run_cell = matching.new_id[run_cell_index]
    same_nucleus = to_nucleus[runs.run_nucleus] == matching.match[run_cell_index]
    run_nucleus = np.where(runs.interior & same_nucleus, run_cell, np.uint32(0))
    cell_matched = np.repeat(run_cell, runs.lengths).reshape(runs.shape)
    nucleus_matched = np.repeat(run_nucleus, runs.lengths).reshape(runs.shape)
    return {
        CELL_MATCHED_MASK: cell_matched,
        NUCLEUS_MATCHED_MASK: nucleus_matched,
        # a nucleus pixel carries its own cell's id, so the difference is the cytoplasm
        CELL_OUTSIDE_NUCLEUS_MASK: cell_matched - nucleus_matched,
    }


def check_tie_break(tie_break: str) -> bool:
    """Return True for the aegle-cpu order; raise ConfigError for unknown modes."""
    if tie_break not in TIE_BREAKS:
        raise ConfigError(
            f"unknown tie_break {tie_break!r}; use one of {', '.join(map(repr, TIE_BREAKS))}"
        )
    return tie_break == "aegle-cpu"
