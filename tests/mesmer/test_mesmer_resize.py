"""Mesmer's resize of codexdask.mesmer.resize: windows equal to the whole, and scikit-image.

scikit-image (installed in both environments) is the reference; deepcell parity (including
OpenCV's single-channel label rule) is in test_mesmer_deepcell_parity.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box
from codexdask.mesmer.resize import (
    gaussian_weights,
    resize_image,
    resize_labels,
    resize_labels_required_box,
    resize_labels_window,
    resize_required_box,
    resize_window,
    resized_shape,
)
from codexdask.synthetic import synthetic_slide

transform = pytest.importorskip("skimage.transform")
ndimage_filters = pytest.importorskip("scipy.ndimage._filters")

MPPS = [0.25, 0.377, 0.65, 1.0, 2.0]


def skimage_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """deepcell's multi-channel resize, written with scikit-image."""
    out = transform.resize(image, shape + image.shape[2:], mode="constant", preserve_range=True,
                           order=1, anti_aliasing=True)
    return out.astype(image.dtype)


def blocky(rng: np.random.Generator, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """Flat 8x8 blocks of small values: sums of Gaussian weights land next to integers."""
    blocks = rng.integers(0, 6, (shape[0] // 8 + 1, shape[1] // 8 + 1, 2))
    return np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:shape[0], :shape[1]].astype(dtype)


def test_resized_shape_rule() -> None:
    assert resized_shape((1000, 777), None) == (1000, 777)
    assert resized_shape((1000, 777), 0.5) == (1000, 777)
    assert resized_shape((1000, 777), 0.377) == (754, 585)  # int() truncation
    assert resized_shape((1000, 777), 1.0) == (2000, 1554)
    with pytest.raises(InputError, match="shrinks"):
        resized_shape((3, 3), 0.1)


def test_gaussian_weights_are_correctly_rounded() -> None:
    for sigma in (0.5, 0.1632, 1.5, 3.7):
        weights = gaussian_weights(sigma)
        radius = int(4.0 * sigma + 0.5)
        assert weights.size == 2 * radius + 1 and np.array_equal(weights, weights[::-1])
        phi = np.array([math.exp(-0.5 / (sigma * sigma) * x * x)
                        for x in range(-radius, radius + 1)])
        assert np.allclose(weights, phi / phi.sum(), rtol=1e-15, atol=0)


@pytest.fixture
def same_gaussian_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give scipy's gaussian_filter the correctly rounded weights (the one known difference)."""
    original = ndimage_filters._gaussian_kernel1d

    def kernel(sigma, order, radius):
        weights = gaussian_weights(float(sigma))
        assert order == 0 and weights.size == 2 * radius + 1
        return weights.copy()

    monkeypatch.setattr(ndimage_filters, "_gaussian_kernel1d", kernel)
    yield
    monkeypatch.setattr(ndimage_filters, "_gaussian_kernel1d", original)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32,
                                   np.float64])
def test_resize_equals_skimage_given_the_same_weights(dtype: type, same_gaussian_weights) -> None:
    rng = np.random.default_rng(np.dtype(dtype).num)
    for shape in [(300, 200), (257, 255), (64, 99)]:
        image = (rng.gamma(1.0, 100.0, shape + (2,)) + (5 if rng.random() < 0.5 else 0))
        image = image.astype(dtype)
        for mpp in MPPS + [0.3, 0.45, 0.1]:
            size = resized_shape(shape, mpp)
            assert np.array_equal(resize_image(image, size), skimage_resize(image, size)), \
                (dtype, shape, mpp)
    image = blocky(rng, (211, 190), dtype)
    for size in [(100, 95), (37, 151), (150, 189)]:
        assert np.array_equal(resize_image(image, size), skimage_resize(image, size))


def test_resize_against_skimage_as_installed() -> None:
    """Without patching: enlarging is exact; shrinking differs only where numpy's exp does."""
    rng = np.random.default_rng(11)
    images = [synthetic_slide(400, 300, seed=1).two_channel(), blocky(rng, (300, 257), np.uint8)]
    differing = total = 0
    for image in images:
        for mpp in MPPS + [0.3, 0.45]:
            size = resized_shape(image.shape[:2], mpp)
            ours, theirs = resize_image(image, size), skimage_resize(image, size)
            if mpp > 0.5:
                assert np.array_equal(ours, theirs)
            gap = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
            assert gap.max() <= 1
            differing += int(np.count_nonzero(gap))
            total += gap.size
    assert differing <= total // 1000, f"{differing} of {total} pixels differ by one unit"


def random_box(rng: np.random.Generator, shape: tuple[int, int]) -> Box:
    top, left = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
    if rng.random() < 0.2:
        return Box(top, left, shape[0], shape[1])
    return Box(top, left, int(rng.integers(top + 1, shape[0] + 1)),
               int(rng.integers(left + 1, shape[1] + 1)))


def test_windows_equal_the_whole_image() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(10):
        shape = (int(rng.integers(8, 500)), int(rng.integers(8, 500)))
        dtype = [np.uint8, np.uint16, np.float32, np.float64, np.int16][trial % 5]
        image = (rng.gamma(1.0, 100.0, shape + (2,)) + 3).astype(dtype)
        value_range = (image.min(), image.max())
        for mpp in MPPS:
            size = resized_shape(shape, mpp)
            whole = resize_image(image, size)
            for _ in range(3):
                box = random_box(rng, size)
                need = resize_required_box(box, shape, size)
                window = resize_window(image[need.slices()], need, box, shape, size, value_range)
                assert np.array_equal(window, whole[box.slices()]), (shape, dtype, mpp, box)
                checked += 1
    assert checked == 150


@pytest.mark.parametrize("channels", [1, 2])
def test_label_windows_equal_the_whole(channels: int) -> None:
    rng = np.random.default_rng(channels)
    labels = rng.integers(0, 500, (333, 271, channels)).astype(np.int64)
    for size in [(166, 135), (217, 176), (666, 542), (1000, 813)]:
        whole = resize_labels(labels, size)
        assert whole.dtype == labels.dtype and whole.shape == size + (channels,)
        if channels > 1:
            reference = transform.resize(labels, size + (channels,), order=0, mode="constant",
                                         preserve_range=True, anti_aliasing=False)
            assert np.array_equal(whole, reference.astype(labels.dtype))
        for _ in range(4):
            box = random_box(rng, size)
            need = resize_labels_required_box(box, labels.shape[:2], size, channels)
            window = resize_labels_window(labels[need.slices()], need, box, labels.shape[:2],
                                          size)
            assert np.array_equal(window, whole[box.slices()])


def test_errors() -> None:
    image = np.ones((20, 20, 2), np.uint8)
    with pytest.raises(InputError, match="dtype"):
        resize_image(image.astype(bool), (10, 10))
    with pytest.raises(InputError, match="required box"):
        resize_window(image[:5], Box(0, 0, 5, 20), Box(0, 0, 10, 10), (20, 20), (10, 10),
                      (1, 1))
