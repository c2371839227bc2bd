"""The greedy matching of a patch computed in blocks, band by band, in memory bounded by a few
block rows.

:func:`codexdask.repair.matching.match_tally` visits the cells of a whole patch in ascending label
order. In a stitched logical patch (``codexdask.seamless``) labels are numbered in raster order of
each object's first pixel, and an object lies within the window of the block that owns it (or
within a grown window of at most ``max_window`` rows, :mod:`codexdask.seamless.regrow`), so it
spans fewer than ``span = max(block_size + 2 * halo, max_window)`` rows from its first pixel. Hence
the visit can be cut into *bands*: band ``r`` holds the cells whose first pixel lies in block row
``r`` (a range of labels). Its cells and their candidate nuclei lie in a few block rows around
``r`` (:meth:`Bands.tally_rows`), whose combined tally gives their complete overlaps and nucleus
sizes. Between bands only a :class:`BandCarry` travels: the claimed nuclei that later cells can
still reach, the running match count (the next new id) and the counts behind the metrics.

Every band runs :func:`~codexdask.repair.matching.match_tally` on the band's part of the tally, with
the pairs of already claimed nuclei removed (a cell skips them anyway; for the ``aegle-cpu``
tie-break the set order of a cell is built from its own, complete, order table). The result is the
whole patch's matching bit for bit, band by band.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.errors import InputError
from codexdask.repair.counts import matching_metrics
from codexdask.repair.matching import Matching, RepairTally, combine_tallies, match_tally

__all__ = ["BandCarry", "BandMatching", "BandPlan", "Bands", "band_plan", "match_band",
           "match_by_bands", "region_matching"]

_NO_LABELS = np.zeros(0, dtype=np.uint64)


@dataclasses.dataclass(frozen=True)
class Bands:
    """The band geometry of a patch computed in blocks: one band per row of blocks.

    Attributes
    ----------
    block_size : int
        Height of a block row (the last one may be shorter).
    span : int
        An object's rows lie in ``[first row, first row + span)``: the window height
        ``block_size + 2 * halo``, or ``max_window`` if larger.
    n_rows : int
        Rows of blocks, hence bands.
    """

    block_size: int
    span: int
    n_rows: int

    @classmethod
    def of(cls, height: int, block_size: int, halo: int, max_window: int = 0) -> Bands:
        """The bands of a patch ``height`` rows high, in blocks of ``block_size`` and ``halo``;
        objects regrown in windows up to ``max_window`` rows high span up to that many."""
        return cls(int(block_size), max(int(block_size) + 2 * int(halo), int(max_window)),
                   math.ceil(int(height) / int(block_size)))

    def _rows(self, first_row: int, last_row: int) -> range:
        """Block rows holding pixel rows ``first_row..last_row`` (clipped to the patch)."""
        return range(max(first_row // self.block_size, 0),
                     min(last_row // self.block_size, self.n_rows - 1) + 1)

    def tally_rows(self, band: int) -> range:
        """Block rows whose tallies band ``band`` needs.

        Its cells start in rows ``[r T, (r + 1) T)`` and end before ``(r + 1) T - 1 + span``; a
        candidate nucleus shares a row with its cell, so it lies within ``span - 1`` rows of them.
        """
        top = band * self.block_size - (self.span - 1)
        bottom = (band + 1) * self.block_size - 1 + 2 * (self.span - 1)
        return self._rows(top, bottom)

    def bands_of(self, top: int, bottom: int) -> range:
        """Bands of every object (cell or nucleus) with a pixel in rows ``[top, bottom)``."""
        return self._rows(top - (self.span - 1), bottom - 1)


@dataclasses.dataclass(frozen=True)
class BandPlan:
    """Which labels each band holds.

    Attributes
    ----------
    bands : Bands
    cell_bounds, nucleus_bounds : ndarray of int64, shape (n_rows + 1,)
        Band ``r`` holds the labels ``bounds[r] < label <= bounds[r + 1]``.
    nucleus_near : ndarray of int64, shape (n_rows, 2)
        Band ``r``'s cells can share a row only with nuclei labelled
        ``nucleus_near[r, 0] < label <= nucleus_near[r, 1]``.
    nucleus_reach : ndarray of int64, shape (n_rows,)
        After band ``r``, no later cell can reach a nucleus labelled ``<= nucleus_reach[r]``.
    """

    bands: Bands
    cell_bounds: npt.NDArray[np.int64]
    nucleus_bounds: npt.NDArray[np.int64]
    nucleus_near: npt.NDArray[np.int64]
    nucleus_reach: npt.NDArray[np.int64]


def band_plan(bands: Bands, cell_first_rows: np.ndarray,
              nucleus_first_rows: np.ndarray) -> BandPlan:
    """The labels of every band from the row of each object's first pixel.

    Parameters
    ----------
    bands : Bands
    cell_first_rows, nucleus_first_rows : ndarray of int, shape (C,), (N,)
        Row of the first pixel of label ``1..C`` / ``1..N`` (non-decreasing: labels are numbered
        in raster order of first pixel). Labels that vanished when stitching may be included.

    Raises
    ------
    InputError
        If the rows decrease or fall outside the patch's block rows.
    """
    tops = np.arange(bands.n_rows + 1, dtype=np.int64) * bands.block_size
    found = []
    for rows in (cell_first_rows, nucleus_first_rows):
        rows = np.asarray(rows, dtype=np.int64)
        if np.any(np.diff(rows) < 0) or (rows.size and (rows[0] < 0 or rows[-1] >= tops[-1])):
            raise InputError("first-pixel rows must be non-decreasing and inside the patch: "
                             "number the labels in raster order of first pixel")
        found.append(rows)
    cell_rows, nucleus_rows = found
    reach = bands.span - 1
    # band r's cells lie in rows [r T, (r + 1) T - 1 + reach], so a nucleus sharing one of
    # their rows starts at most `reach` rows above or in them
    near = np.stack([np.searchsorted(nucleus_rows, tops[:-1] - reach, side="left"),
                     np.searchsorted(nucleus_rows, tops[1:] - 1 + reach, side="right")], axis=1)
    return BandPlan(
        bands=bands,
        cell_bounds=np.searchsorted(cell_rows, tops).astype(np.int64),
        nucleus_bounds=np.searchsorted(nucleus_rows, tops).astype(np.int64),
        nucleus_near=near.astype(np.int64),
        # later cells start at row (r + 1) T or below, so their nuclei end there or below
        nucleus_reach=np.searchsorted(nucleus_rows, tops[1:] - reach).astype(np.int64),
    )


@dataclasses.dataclass(frozen=True)
class BandCarry:
    """What one band passes to the next.

    Attributes
    ----------
    claimed : ndarray of uint64, shape (K,)
        Sorted labels of the nuclei claimed so far that later cells can still reach.
    n_cells, n_nuclei, n_matched, n_repaired : int
        Counts over the bands so far (``n_matched`` is also the last new id given).
    cell_background, nucleus_background : bool
        Whether a block row seen so far has a pixel with cell / nucleus label 0.
    """

    claimed: npt.NDArray[np.uint64] = dataclasses.field(default_factory=lambda: _NO_LABELS)
    n_cells: int = 0
    n_nuclei: int = 0
    n_matched: int = 0
    n_repaired: int = 0
    cell_background: bool = False
    nucleus_background: bool = False

    def metrics(self) -> dict[str, Any]:
        """After the last band: :meth:`codexdask.repair.matching.Matching.metrics` of the patch."""
        return matching_metrics(self.n_cells, self.n_nuclei, self.n_matched, self.n_repaired,
                                self.cell_background, self.nucleus_background)


@dataclasses.dataclass(frozen=True)
class BandMatching:
    """The matching of one band's labels.

    Attributes
    ----------
    cell_labels : ndarray of uint64, shape (c,)
        Sorted cell labels of the band present in the patch.
    new_id : ndarray of uint32, shape (c,)
        New id of each cell, 0 when unmatched.
    matched_nucleus : ndarray of uint64, shape (c,)
        Label of each cell's nucleus, 0 when unmatched.
    nucleus_labels : ndarray of uint64, shape (n,)
        Sorted nucleus labels of the band present in the patch.
    """

    cell_labels: npt.NDArray[np.uint64]
    new_id: npt.NDArray[np.uint32]
    matched_nucleus: npt.NDArray[np.uint64]
    nucleus_labels: npt.NDArray[np.uint64]


def _between(labels: np.ndarray, bounds: np.ndarray, band: int) -> npt.NDArray[np.bool_]:
    return (labels > np.uint64(bounds[band])) & (labels <= np.uint64(bounds[band + 1]))


def _band_part(plan: BandPlan, band: int, tally: RepairTally,
               claimed: np.ndarray) -> RepairTally:
    """The part of a region's tally the band needs: its cells, their pairs with unclaimed
    nuclei, their order, and the nuclei that can share a row with its cells (each one under a
    cell of the band needs an index, the band's candidates their sizes)."""
    nuclei = _between(tally.nucleus_labels, plan.nucleus_near[band], 0)
    pairs = _between(tally.pair_cell, plan.cell_bounds, band)
    pairs &= ~np.isin(tally.pair_nucleus, claimed)
    order = tally.order
    if order is not None:
        keep = _between(order[0], plan.cell_bounds, band)
        order = (order[0][keep], order[1][keep], order[2][keep])
    return dataclasses.replace(
        tally,
        cell_labels=tally.cell_labels[_between(tally.cell_labels, plan.cell_bounds, band)],
        nucleus_labels=tally.nucleus_labels[nuclei],
        nucleus_sizes=tally.nucleus_sizes[nuclei],
        pair_cell=tally.pair_cell[pairs],
        pair_nucleus=tally.pair_nucleus[pairs],
        pair_overlap=tally.pair_overlap[pairs],
        order=order,
    )


def match_band(
    plan: BandPlan,
    band: int,
    tallies: Iterable[RepairTally],
    carry: BandCarry,
    *,
    aegle_order: bool = False,
) -> tuple[BandMatching, BandCarry]:
    """The greedy pass over the cells of one band.

    Parameters
    ----------
    plan : BandPlan
    band : int
        Visited in order 0, 1, ..., each with the carry of the one before.
    tallies : iterable of RepairTally
        Of disjoint regions covering the block rows ``plan.bands.tally_rows(band)`` (e.g. their
        cores); each is cut to what the band needs as it comes, so a generator that loads them
        one by one never holds them all.
    carry : BandCarry
        From the band before (``BandCarry()`` for band 0).
    aegle_order : bool
        The ``aegle-cpu`` tie-break (the tallies must carry the order).

    Returns
    -------
    BandMatching, BandCarry
    """
    tally = combine_tallies([_band_part(plan, band, t, carry.claimed) for t in tallies])
    # Every nucleus near the band is known, with sizes complete for the band's candidates.
    matching = match_tally(tally, aegle_order=aegle_order)
    new_id = matching.new_id[1:]
    new_id = np.where(new_id > 0, new_id + np.uint32(carry.n_matched), np.uint32(0))
    matched_nucleus = matching.nucleus_labels[matching.match[1:]]
    nuclei = tally.nucleus_labels[_between(tally.nucleus_labels, plan.nucleus_bounds, band)]
    claimed = np.union1d(carry.claimed, matched_nucleus[matched_nucleus > 0])
    claimed = claimed[claimed > np.uint64(plan.nucleus_reach[band])].astype(np.uint64)
    result = BandMatching(matching.cell_labels[1:], new_id.astype(np.uint32), matched_nucleus,
                          nuclei)
    return result, BandCarry(
        claimed=claimed,
        n_cells=carry.n_cells + matching.n_cells,
        n_nuclei=carry.n_nuclei + int(nuclei.size),
        n_matched=carry.n_matched + matching.n_matched,
        n_repaired=carry.n_repaired + matching.n_repaired,
        cell_background=carry.cell_background or tally.cell_background,
        nucleus_background=carry.nucleus_background or tally.nucleus_background,
    )


def match_by_bands(
    plan: BandPlan, row_tally: Callable[[int], RepairTally], *, aegle_order: bool = False
) -> tuple[list[BandMatching], BandCarry]:
    """Every band in order, in one process (the engine runs the bands as a chain of tasks).

    Parameters
    ----------
    plan : BandPlan
    row_tally : callable
        ``row_tally(block row)`` -> the combined tally of that block row's cores.
    aegle_order : bool

    Returns
    -------
    list of BandMatching, BandCarry
        One matching per band, and the carry after the last band (its metrics are the patch's).
    """
    carry = BandCarry()
    results = []
    for band in range(plan.bands.n_rows):
        tallies = (row_tally(row) for row in plan.bands.tally_rows(band))
        result, carry = match_band(plan, band, tallies, carry, aegle_order=aegle_order)
        results.append(result)
    return results, carry


def region_matching(parts: Sequence[BandMatching]) -> Matching:
    """A :class:`~codexdask.repair.matching.Matching` of the labels of some bands, for
    :func:`~codexdask.repair.matching.assemble_region`.

    Parameters
    ----------
    parts : sequence of BandMatching
        Consecutive bands in ascending order: :meth:`Bands.bands_of` a region.

    Returns
    -------
    Matching
        Knows every label of those bands and the nuclei their cells matched; its
        ``n_repaired`` and background flags are not the patch's (0 and False).
    """
    cells = np.concatenate([_NO_LABELS, *[p.cell_labels for p in parts]]).astype(np.uint64)
    matched = np.concatenate([_NO_LABELS, *[p.matched_nucleus for p in parts]]).astype(np.uint64)
    new_id = np.concatenate([np.zeros(0, np.uint32), *[p.new_id for p in parts]])
    nuclei = np.union1d(np.concatenate([_NO_LABELS, *[p.nucleus_labels for p in parts]]),
                        matched)
    nucleus_labels = np.union1d(np.zeros(1, np.uint64), nuclei).astype(np.uint64)
    return Matching(
        cell_labels=np.concatenate([np.zeros(1, np.uint64), cells]),
        nucleus_labels=nucleus_labels,
        match=np.concatenate([[0], np.searchsorted(nucleus_labels, matched)]).astype(np.intp),
        new_id=np.concatenate([np.zeros(1, np.uint32), new_id]).astype(np.uint32),
        n_repaired=0,
        cell_background=False,
        nucleus_background=False,
    )
