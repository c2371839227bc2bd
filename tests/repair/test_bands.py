"""Tests of the band-wise greedy matching (codexdask.repair.bands).

Every band-wise result is compared with what it must equal: ``match_tally`` of the combined tally
of the whole image (mapping for mapping, metrics) and ``repair_masks`` of the whole image (the
repaired masks assembled core by core from the bands). Images are random rectangles numbered in
raster order of first pixel whose heights reach the largest span the geometry allows, on tiny
blocks, so an object crosses several block rows and a band that read one block row too few, or a
carry that forgot a claimed nucleus, changes the result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.repair.bands import (
    BandCarry,
    Bands,
    band_plan,
    match_band,
    match_by_bands,
    region_matching,
)
from codexdask.repair.masks import repair_masks
from codexdask.repair.matching import RepairTally, combine_tallies, match_tally
from codexdask.seamless.blocks import BlockGrid, block_grid
from codexdask.seamless.regions import REPAIR_MARGIN, TALLY_MARGIN, repair_core, tally_core
from codexdask.seamless.serial import canonical_labels

REPAIRED = ("cell_matched_mask", "nucleus_matched_mask", "cell_outside_nucleus_mask",
            "cell_matched_boundary", "nucleus_matched_boundary")
TIE_BREAKS = ("lowest-label", "aegle-cpu")


def random_masks(seed: int, shape: tuple[int, int], span: int, block: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells and nuclei numbered in raster order, each less than ``span`` rows high.

    Nuclei: several inside some cells (ties), some across two or three cells (shared), none in
    others; whole empty block rows; a few labels removed after numbering (as a stitching conflict
    can). Returns the two masks and the first-pixel row of every label (removed ones included).
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    cell = np.zeros(shape, np.int64)
    nucleus = np.zeros(shape, np.int64)
    n_cells = height * width // 120
    for label in range(1, n_cells + 1):
        h = int(rng.integers(3, span + 1)) if rng.random() < 0.3 else int(rng.integers(3, 12))
        w = int(rng.integers(3, 14))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        cell[y:y + h, x:x + w] = label
        kind = rng.random()
        if kind < 0.2:
            continue  # no nucleus
        count = int(rng.integers(2, 4)) if kind < 0.5 else 1  # several: ties at m = 0
        for k in range(count):
            nh, nw = max(h // 2 - k, 1), max(w // 3, 1)
            ny = y + int(rng.integers(0, h - nh + 1))
            nx = x + int(rng.integers(0, w - nw + 1))
            nucleus[ny:ny + nh, nx:nx + nw] = label * 4 + k
    for _ in range(n_cells // 6):  # nuclei across neighbouring cells, up to the span
        nh, nw = int(rng.integers(2, span + 1)), int(rng.integers(4, 16))
        ny, nx = int(rng.integers(0, height - nh + 1)), int(rng.integers(0, width - nw + 1))
        nucleus[ny:ny + nh, nx:nx + nw] = 10**6 + rng.integers(1, 10**6)
    blank = int(rng.integers(0, math.ceil(height / block)))  # an empty block row
    cell[blank * block:(blank + 1) * block] = 0
    nucleus[blank * block:(blank + 1) * block] = 0
    masks = []
    firsts = []
    for labels in (cell, nucleus):
        labels = canonical_labels(labels)
        ids, first = np.unique(labels.ravel(), return_index=True)
        firsts.append(first[ids > 0] // width)
        gone = rng.choice(ids[ids > 0], size=ids.size // 25, replace=False)
        labels[np.isin(labels, gone)] = 0
        masks.append(labels)
    return masks[0], masks[1], firsts[0], firsts[1]


def core_tallies(cell: np.ndarray, nucleus: np.ndarray, grid: BlockGrid,
                 aegle: bool) -> list[RepairTally]:
    tallies = []
    for index in grid:
        core = grid.core(index)
        around = core.grow(TALLY_MARGIN, grid.shape)
        tallies.append(tally_core(cell[around.slices()], nucleus[around.slices()], around, core,
                                  grid.shape[1], with_order=aegle)[1])
    return tallies


CASES = [  # (seed, shape, block_size, halo): halo < block / 2, halo > block / 2, halo > block
    (0, (150, 90), 16, 4),
    (1, (161, 77), 16, 10),
    (2, (300, 96), 24, 30),
    (3, (150, 70), 32, 0),
    (4, (200, 60), 16, 16),
]


@pytest.mark.parametrize("tie_break", TIE_BREAKS)
@pytest.mark.parametrize("seed, shape, block, halo", CASES)
def test_bands_equal_the_whole_patch_matching(seed: int, shape: tuple[int, int], block: int,
                                              halo: int, tie_break: str) -> None:
    aegle = tie_break == "aegle-cpu"
    grid = block_grid(shape, block, halo)
    cell, nucleus, cell_rows, nucleus_rows = random_masks(seed, shape, block + 2 * halo, block)
    tallies = core_tallies(cell, nucleus, grid, aegle)
    whole = match_tally(combine_tallies(tallies), aegle_order=aegle)
    bands = Bands.of(shape[0], block, halo)
    assert bands.n_rows == grid.n_rows >= 4
    plan = band_plan(bands, cell_rows, nucleus_rows)

    def row_tally(row: int) -> RepairTally:
        return combine_tallies(tallies[row * grid.n_cols:(row + 1) * grid.n_cols])

    results, carry = match_by_bands(plan, row_tally, aegle_order=aegle)
    cells = np.concatenate([r.cell_labels for r in results])
    nuclei = np.concatenate([r.nucleus_labels for r in results])
    np.testing.assert_array_equal(cells, whole.cell_labels[1:])
    np.testing.assert_array_equal(nuclei, whole.nucleus_labels[1:])
    np.testing.assert_array_equal(np.concatenate([r.new_id for r in results]), whole.new_id[1:])
    np.testing.assert_array_equal(np.concatenate([r.matched_nucleus for r in results]),
                                  whole.nucleus_labels[whole.match[1:]])
    assert whole.n_matched > 30 and whole.n_repaired > 0
    assert carry.n_matched == whole.n_matched
    assert repr(carry.metrics()) == repr(whole.metrics())  # the same floats, bit for bit

    # The repaired masks, core by core from the bands of each core's region.
    expected = repair_masks(cell, nucleus, tie_break=tie_break)  # type: ignore[arg-type]
    got = {name: np.zeros(shape, np.uint32) for name in REPAIRED}
    for index in grid:
        core = grid.core(index)
        around = core.grow(REPAIR_MARGIN, shape)
        near = region_matching([results[b] for b in bands.bands_of(around.top, around.bottom)])
        for name, values in repair_core(cell[around.slices()], nucleus[around.slices()], around,
                                        core, near).items():
            got[name][core.slices()] = values
    for name in REPAIRED:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert expected["n_matched"] == carry.n_matched


def test_tie_breaks_disagree_on_these_images() -> None:
    """The two tie-breaks matter here, so both comparisons above test a real choice."""
    grid = block_grid((150, 90), 16, 4)
    cell, nucleus, _, _ = random_masks(0, (150, 90), 24, 16)
    low, aegle = (match_tally(combine_tallies(core_tallies(cell, nucleus, grid, a)),
                              aegle_order=a) for a in (False, True))
    assert np.any(low.match != aegle.match)


def test_carry_forgets_only_unreachable_nuclei() -> None:
    # block rows of 10, span 14: after band r, nuclei starting above row 10 (r + 1) - 13 go
    bands = Bands.of(40, 10, 2)
    plan = band_plan(bands, np.array([0, 12, 25]), np.array([0, 3, 9, 20, 27, 39]))
    np.testing.assert_array_equal(plan.cell_bounds, [0, 1, 2, 3, 3])
    np.testing.assert_array_equal(plan.nucleus_bounds, [0, 3, 3, 5, 6])
    np.testing.assert_array_equal(plan.nucleus_reach, [0, 2, 3, 4])
    np.testing.assert_array_equal(plan.nucleus_near, [[0, 4], [0, 5], [2, 6], [3, 6]])
    assert list(bands.tally_rows(0)) == [0, 1, 2, 3] and list(bands.tally_rows(3)) == [1, 2, 3]
    assert list(bands.bands_of(22, 25)) == [0, 1, 2]
    # cell 1 takes nucleus 2 in band 0; cell 2 (band 1) can still reach it, nothing later can
    tally = RepairTally(
        cell_labels=np.array([1, 2], np.uint64), nucleus_labels=np.array([1, 2], np.uint64),
        nucleus_sizes=np.array([4, 4], np.int64), pair_cell=np.array([1, 2], np.uint64),
        pair_nucleus=np.array([2, 2], np.uint64), pair_overlap=np.array([4, 4], np.int64),
        cell_background=True, nucleus_background=True)
    first, carry = match_band(plan, 0, [tally], BandCarry())
    assert first.new_id.tolist() == [1] and carry.claimed.tolist() == [2]
    second, carry = match_band(plan, 1, [tally], carry)
    assert second.new_id.tolist() == [0] and second.matched_nucleus.tolist() == [0]
    assert carry.claimed.tolist() == [] and carry.n_matched == 1 and carry.n_cells == 2
    assert carry.n_nuclei == 2 and first.nucleus_labels.tolist() == [1, 2]


@pytest.mark.parametrize("rows", [np.array([3, 1]), np.array([-1]), np.array([40])])
def test_bad_first_rows(rows: np.ndarray) -> None:
    with pytest.raises(InputError, match="raster order"):
        band_plan(Bands.of(40, 10, 2), rows, np.zeros(0, np.int64))
