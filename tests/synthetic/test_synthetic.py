"""Tests of the seeded synthetic data generators."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.synthetic import (
    CHANNEL_NAMES,
    MEMBRANE_CHANNELS,
    SyntheticSlide,
    dense_tiling_pairs,
    random_disc_pairs,
    synthetic_slide,
)


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return synthetic_slide(1024, 768, seed=3)


def _inner_boundary(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value (slow, obvious version)."""
    height, width = labels.shape
    out = np.zeros(labels.shape, dtype=bool)
    for y in range(height):
        for x in range(width):
            if labels[y, x] == 0:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and labels[ny, nx] != labels[y, x]:
                    out[y, x] = True
    return out


def test_slide_types_and_shapes(slide: SyntheticSlide) -> None:
    assert slide.image.shape == (len(CHANNEL_NAMES), 1024, 768)
    assert slide.image.dtype == np.uint16
    assert slide.channel_names == list(CHANNEL_NAMES)
    assert slide.channel_names[0] == "DAPI"
    assert slide.cell_labels.shape == slide.nucleus_labels.shape == (1024, 768)
    assert slide.cell_labels.dtype == slide.nucleus_labels.dtype == np.uint32
    assert slide.image_mpp == 0.5
    two = slide.two_channel()
    assert two.shape == (1024, 768, 2) and two.dtype == np.uint16
    assert np.array_equal(two[..., 0], slide.image[0])
    membranes = [slide.channel_names.index(name) for name in MEMBRANE_CHANNELS]
    assert np.array_equal(two[..., 1], slide.image[membranes].max(axis=0))


def test_slide_is_deterministic_per_seed() -> None:
    a = synthetic_slide(256, 320, seed=7)
    b = synthetic_slide(256, 320, seed=7)
    c = synthetic_slide(256, 320, seed=8)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.cell_labels, b.cell_labels)
    assert np.array_equal(a.nucleus_labels, b.nucleus_labels)
    assert not np.array_equal(a.cell_labels, c.cell_labels)


def test_slide_labels_are_sequential_and_shared(slide: SyntheticSlide) -> None:
    cells, nuclei = slide.cell_labels, slide.nucleus_labels
    n = int(cells.max())
    assert n > 500
    assert np.array_equal(np.unique(cells), np.arange(n + 1))
    assert np.array_equal(np.unique(nuclei), np.arange(n + 1))  # every cell has a nucleus


def test_slide_nuclei_lie_strictly_inside_their_cell(slide: SyntheticSlide) -> None:
    cells, nuclei = slide.cell_labels[:200, :200], slide.nucleus_labels[:200, :200]
    inside = nuclei > 0
    assert inside.any()
    assert np.array_equal(cells[inside], nuclei[inside])
    assert not (inside & _inner_boundary(cells)).any()


def test_slide_cell_and_nucleus_sizes_are_realistic(slide: SyntheticSlide) -> None:
    cell_area = np.bincount(slide.cell_labels.ravel())[1:]
    nucleus_area = np.bincount(slide.nucleus_labels.ravel())[1:]
    cell_diameter_um = 2 * np.sqrt(np.median(cell_area) / np.pi) * slide.image_mpp
    nucleus_diameter_um = 2 * np.sqrt(np.median(nucleus_area) / np.pi) * slide.image_mpp
    assert 7 <= cell_diameter_um <= 13
    assert 3 <= nucleus_diameter_um <= 6


def test_slide_has_uninformative_empty_regions(slide: SyntheticSlide) -> None:
    # The reference's patch QC: nucleus non-zero fraction < 0.05 or nucleus mean < 1.
    dapi = slide.image[0]
    flags = []
    for y in range(0, 1024, 256):
        for x in range(0, 768, 256):
            patch = dapi[y : y + 256, x : x + 256]
            flags.append(bool((patch > 0).mean() < 0.05 or patch.mean() < 1))
    assert any(flags) and not all(flags)
    empty = slide.cell_labels == 0
    assert 0.15 < empty.mean() < 0.6
    # Far from tissue, DAPI is almost entirely exact zeros.
    assert (dapi[empty] == 0).mean() > 0.9


def test_slide_markers_follow_the_masks(slide: SyntheticSlide) -> None:
    dapi = slide.image[0].astype(float)
    nuclei, cells = slide.nucleus_labels > 0, slide.cell_labels > 0
    assert dapi[nuclei].mean() > 10 * dapi[cells & ~nuclei].mean() / 2
    membrane = slide.two_channel()[..., 1].astype(float)
    boundary = _inner_boundary(slide.cell_labels[:256, :256])
    interior = (slide.cell_labels[:256, :256] > 0) & ~boundary
    assert membrane[:256, :256][boundary].mean() > 2 * membrane[:256, :256][interior].mean()


def test_slide_parameters() -> None:
    small = synthetic_slide(300, 200, seed=1, cell_radius=6, empty_fraction=0.0, noise=0.0)
    large = synthetic_slide(300, 200, seed=1, cell_radius=12, empty_fraction=0.0)
    assert small.cell_labels.max() > 2 * large.cell_labels.max()
    assert (small.cell_labels > 0).mean() > 0.9
    assert synthetic_slide(40, 60, seed=0).image.shape == (6, 40, 60)
    with pytest.raises(InputError):
        synthetic_slide(0, 10)
    with pytest.raises(InputError):
        synthetic_slide(64, 64, empty_fraction=1.0)


def _paint_in_order(n: int, shape: tuple[int, int], seed: int, scale: float) -> np.ndarray:
    """Reference painter: the same random draws, objects painted in label order on empty pixels."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    r_cell = np.maximum(1, np.round(rng.integers(20, 50, n) * scale)).astype(int)
    yy, xx = np.indices(shape)
    cell = np.zeros(shape, dtype=np.uint32)
    for i in range(n):
        disc = (yy - cy[i]) ** 2 + (xx - cx[i]) ** 2 <= r_cell[i] ** 2
        cell[disc & (cell == 0)] = i + 1
    return cell


def test_random_discs_match_paint_in_order_reference() -> None:
    cell, nucleus = random_disc_pairs(60, (120, 90), seed=5, radius_scale=0.3)
    assert cell.dtype == nucleus.dtype == np.uint32
    assert cell.shape == nucleus.shape == (120, 90)
    assert np.array_equal(cell, _paint_in_order(60, (120, 90), 5, 0.3))


def test_random_discs_have_gaps_and_vanished_objects() -> None:
    cell, nucleus = random_disc_pairs(1000, (1000, 1000), seed=42)
    present = np.unique(cell)[1:]
    # Like the reference's stress case (726 cells / 952 nuclei of 1000 on 1000²).
    assert 650 < present.size < 800
    assert 900 < np.unique(nucleus).size - 1 < 1000
    assert present.max() > present.size  # gapped labels
    # Ties: some cell overlaps two nuclei with exactly the same pixel count.
    inside = (cell > 0) & (nucleus > 0)
    pairs, counts = np.unique(
        cell[inside].astype(np.int64) * 10**6 + nucleus[inside], return_counts=True
    )
    owners = pairs // 10**6
    same = (owners[1:] == owners[:-1]) & (counts[1:] == counts[:-1])
    assert same.any()


def test_random_discs_are_deterministic() -> None:
    a = random_disc_pairs(50, (200, 200), seed=1)
    b = random_disc_pairs(50, (200, 200), seed=1)
    c = random_disc_pairs(50, (200, 200), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    empty = random_disc_pairs(0, (10, 10))
    assert not empty[0].any() and not empty[1].any()


def test_dense_tiling_pairs() -> None:
    cell, nucleus = dense_tiling_pairs((400, 330), cell_size=16, seed=0)
    assert cell.dtype == nucleus.dtype == np.uint32
    assert cell.shape == nucleus.shape == (400, 330)
    assert (cell > 0).all()  # no background among cells
    n_nuclei = np.unique(nucleus).size - 1
    assert n_nuclei > 0.8 * (np.unique(cell).size - 1)
    inside = nucleus > 0
    pairs = np.unique(cell[inside].astype(np.int64) * 10**6 + nucleus[inside])
    cells_per_nucleus = np.bincount((pairs % 10**6).astype(np.int64))
    nuclei_per_cell = np.bincount((pairs // 10**6).astype(np.int64))
    assert (cells_per_nucleus >= 2).any()  # some nuclei straddle a border
    assert (nuclei_per_cell >= 2).any()  # some cells hold two nuclei
    again = dense_tiling_pairs((400, 330), cell_size=16, seed=0)
    assert np.array_equal(again[0], cell) and np.array_equal(again[1], nucleus)
    with pytest.raises(InputError):
        dense_tiling_pairs((10, 10), cell_size=2)
