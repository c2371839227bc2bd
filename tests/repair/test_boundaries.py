"""Tests of codexdask.repair.boundaries.get_boundary against scikit-image's find_boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from codexdask.errors import InputError
from codexdask.repair.boundaries import boundary_pixels, get_boundary


def skimage_boundary(mask: np.ndarray) -> np.ndarray:
    """The specification: inner, 4-connected, labelled with the object's value."""
    edge = find_boundaries(mask, mode="inner", connectivity=1)
    return np.where(edge, mask, 0).astype(np.uint32)


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Blocky random labels with some background and single-pixel noise."""
    h, w = shape[-2:]
    block = int(rng.integers(1, 5))
    coarse = rng.integers(0, 6, size=(*shape[:-2], -(-h // block), -(-w // block)))
    labels = coarse.repeat(block, axis=-2).repeat(block, axis=-1)[..., :h, :w]
    noise = rng.random(labels.shape) < 0.05
    labels[noise] = rng.integers(0, 6, size=int(noise.sum()))
    return labels.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_matches_skimage_2d(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        mask = random_labels(rng, shape, dtype)
        out = get_boundary(mask)
        assert out.dtype == np.uint32
        assert out.shape == mask.shape
        np.testing.assert_array_equal(out, skimage_boundary(mask))


def test_stack_is_per_image() -> None:
    rng = np.random.default_rng(1)
    stack = random_labels(rng, (5, 17, 23), np.uint32)
    stack[1] = 3  # a uniform image: no boundary at all, whatever its neighbours in the stack are
    out = get_boundary(stack)
    assert out.shape == stack.shape and out.dtype == np.uint32
    for i in range(stack.shape[0]):
        np.testing.assert_array_equal(out[i], skimage_boundary(stack[i]))
    assert not out[1].any()
    # Treating N as a spatial axis would give a different (wrong) answer on this stack.
    assert not np.array_equal(out, skimage_boundary(stack))


def test_image_edge_is_not_boundary() -> None:
    mask = np.zeros((10, 10), dtype=np.uint16)
    mask[0:5, 0:5] = 4
    out = get_boundary(mask)
    expected = np.zeros((10, 10), dtype=np.uint32)
    expected[4, 0:5] = 4
    expected[0:5, 4] = 4
    np.testing.assert_array_equal(out, expected)
    assert not get_boundary(np.full((6, 6), 9, dtype=np.int32)).any()


def test_touching_objects_and_single_pixels() -> None:
    mask = np.zeros((5, 6), dtype=np.int64)
    mask[1:4, 1:3] = 1
    mask[1:4, 3:5] = 2
    mask[0, 5] = 7  # a lone pixel is its own boundary (its neighbours are background)
    out = get_boundary(mask)
    np.testing.assert_array_equal(out, skimage_boundary(mask))
    assert out[2, 2] == 1 and out[2, 3] == 2 and out[0, 5] == 7


def test_large_labels_and_bool() -> None:
    mask = np.zeros((6, 6), dtype=np.uint64)
    mask[1:5, 1:5] = 2**32 - 1
    assert get_boundary(mask)[1, 1] == 2**32 - 1
    binary = mask > 0
    np.testing.assert_array_equal(get_boundary(binary), boundary_pixels(binary).astype(np.uint32))
    assert get_boundary(binary).max() == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(5, dtype=np.uint8),
        np.zeros((2, 2, 3, 3), dtype=np.uint8),
        np.zeros((4, 4), dtype=np.float32),
        np.full((3, 3), -1, dtype=np.int16),
        np.full((3, 3), 2**33, dtype=np.int64),
        np.array([["a", "b"], ["c", "d"]]),
    ],
    ids=["1d", "4d", "float", "negative", "too-large", "str"],
)
def test_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        get_boundary(bad)
