"""codexdask.postprocess label kernels against scikit-image (and deepcell-toolbox where present).

label, remove_small_objects and relabel_sequential are compared with scikit-image's; fill_holes
with deepcell-toolbox's rule written out with scikit-image calls (``_reference_fill_holes``)
and, in the reference environment, with deepcell-toolbox itself. Runs in both environments.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.measure import label as sk_label
from skimage.measure import regionprops
from skimage.morphology import remove_small_holes
from skimage.morphology import remove_small_objects as sk_remove_small_objects
from skimage.segmentation import relabel_sequential as sk_relabel_sequential

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess import (
    erode_edges,
    fill_holes,
    label,
    relabel_sequential,
    remove_small_objects,
)

_NEW_SIZE_API = "max_size" in inspect.signature(sk_remove_small_objects).parameters


def _sk_remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """scikit-image's removal of objects under ``min_size`` pixels, in its 0.25 or 0.26 API."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Only one label was provided")
        if _NEW_SIZE_API:
            return sk_remove_small_objects(labels, max_size=min_size - 1)
        return sk_remove_small_objects(labels, min_size=min_size)


def _reference_fill_holes(labels: np.ndarray, size: int, connectivity: int) -> np.ndarray:
    """deepcell-toolbox's ``fill_holes`` rule spelled out with scikit-image calls."""
    out = labels.copy()
    for region in regionprops(labels.astype(int)):
        if region.euler_number < 1:
            patch = out[region.slice]
            mine = patch == region.label
            if _NEW_SIZE_API:
                filled = remove_small_holes(mine, max_size=size - 1, connectivity=connectivity)
            else:
                filled = remove_small_holes(mine, area_threshold=size, connectivity=connectivity)
            out[region.slice] = np.where(filled, region.label, patch)
    return out


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int, dtype: type
                   ) -> np.ndarray:
    return sk_label(rng.integers(0, n + 1, shape), connectivity=1).astype(dtype)


SHAPES = [(1, 1), (1, 30), (30, 1), (2, 30), (17, 23), (60, 50)]


@pytest.mark.parametrize("connectivity", [None, 1, 2])
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("shape", SHAPES)
def test_label_equals_skimage(shape, dtype, connectivity):
    rng = np.random.default_rng(len(shape) * 1000 + shape[0] * 31 + shape[1])
    for levels in (1, 2, 5):
        image = rng.integers(0, levels + 1, shape).astype(dtype)
        expected = sk_label(image, connectivity=connectivity)
        got = label(image, connectivity=connectivity)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint8])
@pytest.mark.parametrize("shape", SHAPES)
def test_remove_small_objects_and_relabel_equal_skimage(shape, dtype):
    rng = np.random.default_rng(shape[0] * 97 + shape[1])
    for n in (1, 3, 6):
        labels = _random_labels(rng, shape, n, dtype)
        for min_size in (0, 1, 2, 5, 15):
            np.testing.assert_array_equal(remove_small_objects(labels, min_size),
                                          _sk_remove_small(labels, min_size))
        inplace = labels.copy()
        assert remove_small_objects(inplace, 3, out=inplace) is inplace
        np.testing.assert_array_equal(inplace, _sk_remove_small(labels, 3))
        sparse = labels * 7 if int(labels.max()) * 7 <= np.iinfo(dtype).max else labels
        expected, forward, inverse = sk_relabel_sequential(sparse)
        got, got_forward, got_inverse = relabel_sequential(sparse)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        # numpy 2 overflows scikit-image's uint8 maps (its array size is max + 1 in uint8)
        if dtype != np.uint8 or max(int(sparse.max()), int(got.max())) < 255:
            np.testing.assert_array_equal(got_forward, np.asarray(forward))
            np.testing.assert_array_equal(got_inverse, np.asarray(inverse))
            assert got_forward.dtype == np.asarray(forward).dtype
            assert got_inverse.dtype == np.asarray(inverse).dtype


def test_relabel_needs_a_wider_dtype_like_skimage():
    labels = np.zeros((20, 20), np.uint8)
    labels.flat[::2] = np.arange(200) % 255 + 1  # 200 labels of uint8, fine
    np.testing.assert_array_equal(relabel_sequential(labels)[0], sk_relabel_sequential(labels)[0])
    big = np.arange(1, 301, dtype=np.int16).reshape(15, 20) * 100  # 300 labels up to 30000
    got, expected = relabel_sequential(big)[0], sk_relabel_sequential(big)[0]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("shape", SHAPES + [(40, 40)])
def test_fill_holes_equals_deepcell_rule(shape, connectivity):
    rng = np.random.default_rng(shape[0] * 13 + shape[1] + connectivity)
    for n in (1, 2, 4):
        labels = _random_labels(rng, shape, n, np.int64)
        for size in (1, 2, 4, 15):
            expected = _reference_fill_holes(labels, size, connectivity)
            np.testing.assert_array_equal(fill_holes(labels, size, connectivity), expected)


def test_fill_holes_rings_and_notches():
    yy, xx = np.mgrid[:40, :40]
    ring = ((yy - 20) ** 2 + (xx - 20) ** 2 < 14**2) & ((yy - 20) ** 2 + (xx - 20) ** 2 > 2**2)
    labels = ring.astype(np.int32)
    labels[18:23, 18:23] = 0
    labels[20, 20] = 2  # a small other label inside the hole: filled over, as deepcell does
    labels[5, 19:22] = 0  # a notch at the bounding box edge, filled too when the ring has a hole
    labels[30:33, 33:36] = 3
    for size in (1, 5, 15, 30):
        np.testing.assert_array_equal(fill_holes(labels, size),
                                      _reference_fill_holes(labels, size, 1))


@pytest.mark.reference
def test_fill_holes_equals_deepcell_toolbox():
    utils = pytest.importorskip("deepcell_toolbox.utils")
    rng = np.random.default_rng(5)
    for trial in range(60):
        labels = _random_labels(rng, (25, 31), 1 + trial % 4, np.int64)
        for size in (3, 15):
            np.testing.assert_array_equal(fill_holes(labels, size), utils.fill_holes(labels, size))


@pytest.mark.reference
def test_erode_edges_equals_deepcell_toolbox():
    utils = pytest.importorskip("deepcell_toolbox.utils")
    rng = np.random.default_rng(6)
    for trial in range(30):
        labels = _random_labels(rng, (20, 26), 1 + trial % 4, np.int64)
        for width in (0, 1, 2, 3):
            np.testing.assert_array_equal(erode_edges(labels, width),
                                          utils.erode_edges(labels, width))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_property_label_fill_relabel(data, shape):
    image = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 3)))
    for connectivity in (1, 2):
        np.testing.assert_array_equal(label(image, connectivity),
                                      sk_label(image, connectivity=connectivity))
    labels = sk_label(image, connectivity=1)
    size = data.draw(st.integers(1, 10))
    np.testing.assert_array_equal(fill_holes(labels, size), _reference_fill_holes(labels, size, 1))
    np.testing.assert_array_equal(relabel_sequential(labels * 3)[0],
                                  sk_relabel_sequential(labels * 3)[0])


def test_bad_inputs_raise_project_errors():
    with pytest.raises(InputError, match="2-D"):
        label(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(InputError, match="integer"):
        label(np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="connectivity"):
        label(np.zeros((2, 2), np.uint8), connectivity=3)
    with pytest.raises(InputError, match="non-negative"):
        remove_small_objects(np.array([[-1, 2]]), 2)
    with pytest.raises(InputError, match="non-negative"):
        relabel_sequential(np.array([[-1, 2]]))
    with pytest.raises(ConfigError, match="connectivity"):
        fill_holes(np.zeros((2, 2), np.int32), 3, connectivity=0)
    with pytest.raises(InputError, match="out"):
        remove_small_objects(np.zeros((2, 2), np.int32), 2, out=np.zeros((2, 2), np.int64))
