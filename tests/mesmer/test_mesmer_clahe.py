"""CLAHE pieces of codexdask.mesmer.clahe against scikit-image's own implementation.

scikit-image is installed in both environments, so its ``equalize_adapthist`` internals serve as
the reference here; whole-image parity with deepcell is in test_mesmer_deepcell_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.mesmer.clahe import (
    GREY_LEVELS,
    NBINS,
    clahe_required_box,
    clahe_window,
    clip_histograms,
    grey_bins,
    region_maps,
    resolve_kernel_size,
)
from codexdask.mesmer.indexing import Box

adapthist = pytest.importorskip("skimage.exposure._adapthist")
exposure = pytest.importorskip("skimage.exposure")


def skimage_levels(unit: np.ndarray) -> np.ndarray:
    """The 2**14 grey levels equalize_adapthist hands to _clahe (uint16)."""
    from skimage.util import img_as_uint

    levels = np.round(exposure.rescale_intensity(img_as_uint(unit),
                                                 out_range=(0, GREY_LEVELS - 1)))
    return levels.astype(np.uint16)


@pytest.mark.parametrize("case", ["every_level", "random"])
def test_grey_bins_match_skimage(case: str) -> None:
    if case == "every_level":
        unit = (np.arange(65536, dtype=np.float32) / np.float32(65535)).reshape(256, 256)
    else:
        unit = np.random.default_rng(0).random((300, 200), dtype=np.float32)
        unit[0, 0], unit[-1, -1] = 0.0, 1.0  # equalize_adapthist sees a full-range image
    expected = skimage_levels(unit) // (1 + GREY_LEVELS // NBINS)
    assert np.array_equal(grey_bins(unit), expected)


def test_clip_histograms_match_skimage_rows() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(300):
        counts = np.zeros(NBINS, np.int64)
        used = rng.integers(1, 253)
        shape = float(rng.choice([0.05, 1, 20]))
        counts[:used] = rng.multinomial(int(rng.choice([16384, 1024, 64, 5000])),
                                        rng.dirichlet(np.full(used, shape)))
        rows.append(counts)
    hist = np.stack(rows)
    for limit in (1, 10, 163, 600):
        ours = clip_histograms(hist, limit)
        theirs = np.stack([adapthist.clip_histogram(row.copy(), limit) for row in hist])
        assert np.array_equal(ours, theirs)


def test_region_maps_match_skimage() -> None:
    rng = np.random.default_rng(2)
    kernel = (16, 24)
    bins = rng.integers(0, 253, (3 * 16, 2 * 24)).astype(np.uint8)
    bins[:16] = rng.integers(40, 44, (16, 48))  # a peaked region: heavy clipping
    maps = region_maps(bins, kernel)
    limit = max(1, int(0.01 * 16 * 24))
    for i in range(3):
        for j in range(2):
            block = bins[i * 16:(i + 1) * 16, j * 24:(j + 1) * 24].ravel()
            hist = adapthist.clip_histogram(np.bincount(block, minlength=NBINS), limit)
            expected = adapthist.map_histogram(hist, 0, GREY_LEVELS - 1, 16 * 24)
            assert np.array_equal(maps[i, j], expected)


@pytest.mark.parametrize("shape,kernel", [((200, 300), 128), ((37, 301), 16), ((5, 9), 128),
                                          ((130, 129), (64, 33)), ((1, 40), 7)])
def test_clahe_levels_match_skimage(shape: tuple[int, int], kernel) -> None:
    rng = np.random.default_rng(3)
    unit = rng.random(shape, dtype=np.float32) ** 3
    unit[0, 0], unit[-1, -1] = 0.0, 1.0
    kernel = resolve_kernel_size(kernel, shape)
    whole = Box.whole(shape)
    ours = clahe_window(grey_bins(unit), whole, whole, shape, kernel)
    theirs = adapthist._clahe(skimage_levels(unit), list(kernel), 0.01, NBINS)
    assert ours.dtype == np.uint16 and np.array_equal(ours, theirs)
    for box in (Box(0, 0, 1, 1), Box(shape[0] // 2, shape[1] // 3, shape[0], shape[1])):
        if box.is_empty():
            continue
        need = clahe_required_box(box, shape, kernel)
        window = clahe_window(grey_bins(unit)[need.slices()], need, box, shape, kernel)
        assert np.array_equal(window, ours[box.slices()])


def test_required_box_of_an_aligned_core() -> None:
    # A 1024² core on the 128-px grid needs one contextual region on every side.
    assert clahe_required_box(Box(1024, 2048, 2048, 3072), (8192, 8192), (128, 128)) == \
        Box(896, 1920, 2176, 3200)
    # At the image border only reflected pixels of the image itself are read.
    assert clahe_required_box(Box(0, 0, 100, 100), (100, 100), (128, 128)) == Box(0, 0, 100, 100)


def test_kernel_size_resolution() -> None:
    assert resolve_kernel_size(None, (100, 7)) == (12, 1)
    assert resolve_kernel_size(128, (10, 10)) == (128, 128)
    with pytest.raises(Exception, match="at least 1"):
        resolve_kernel_size(0, (10, 10))
