"""codexdask.postprocess.reconstruction / h_maxima against scikit-image's.

Exact equality (values and dtype) on random, quantized (plateaus, equal maxima), constant, thin
and 1-pixel images, float and integer dtypes, symmetric and asymmetric footprints, and
Mesmer-like maps. Runs in both environments.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
from helpers.mesmer_like import adversarial_maps, mesmer_like_maps
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.morphology import disk
from skimage.morphology import h_maxima as sk_h_maxima
from skimage.morphology import reconstruction as sk_reconstruction

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess import h_maxima, reconstruction

SHAPES = [(1, 1), (1, 40), (40, 1), (2, 40), (40, 2), (9, 7), (48, 52)]
FOOTPRINTS = {
    "default": None,
    "disk0": disk(0),
    "disk1": disk(1),
    "disk2": disk(2),
    "disk4": disk(4),
    "row": np.ones((1, 5), bool),
    "asymmetric": np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0]], bool),
    "sparse5x3": np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], bool),
}


def _image(rng: np.random.Generator, shape: tuple[int, int], kind: int, dtype: type) -> np.ndarray:
    values = rng.random(shape)
    if kind == 1:
        values = np.round(values * 4) / 4  # plateaus and equal maxima
    elif kind == 2:
        values = np.zeros(shape)
    elif kind == 3:
        values = np.ones(shape)
    return values.astype(dtype)


@pytest.mark.parametrize("footprint", list(FOOTPRINTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_reconstruction_equals_skimage(shape, dtype, footprint):
    rng = np.random.default_rng(zlib.crc32(repr((shape, footprint)).encode()))
    for kind in range(4):
        mask = _image(rng, shape, kind, dtype)
        seed = mask - rng.random(shape).astype(dtype) * 0.6
        if kind == 1:
            seed = np.round(seed * 4) / 4
            seed = np.minimum(seed, mask)
        expected = sk_reconstruction(seed, mask, footprint=FOOTPRINTS[footprint])
        got = reconstruction(seed, mask, FOOTPRINTS[footprint])
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected, err_msg=f"kind {kind}")


@pytest.mark.parametrize("footprint", ["default", "disk0", "disk1", "disk2", "disk4", "asymmetric"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_h_maxima_equals_skimage(shape, dtype, footprint):
    rng = np.random.default_rng(zlib.crc32(repr((shape, footprint, 1)).encode()))
    for kind in range(4):
        image = _image(rng, shape, kind, dtype)
        for h in (0.075, 0.1, 0.25, 0.5, 2.0):
            expected = sk_h_maxima(image, h, FOOTPRINTS[footprint])
            got = h_maxima(image, h, FOOTPRINTS[footprint])
            assert got.dtype == expected.dtype == np.uint8
            np.testing.assert_array_equal(got, expected, err_msg=f"kind {kind}, h {h}")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int64])
def test_h_maxima_integer_images_equal_skimage(dtype):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 60, (33, 35)).astype(dtype)
    for h in (1, 5, 20, 3.0):
        np.testing.assert_array_equal(h_maxima(image, h, disk(2)), sk_h_maxima(image, h, disk(2)))
    with warnings.catch_warnings():  # a fractional h converts both to float64, with a warning
        warnings.simplefilter("ignore")
        expected = sk_h_maxima(image, 2.5, disk(1))
    with pytest.warns(UserWarning, match="float64"):
        got = h_maxima(image, 2.5, disk(1))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("compartment", ["whole-cell", "nuclear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_h_maxima_of_mesmer_like_maps(compartment, dtype):
    maxima, _ = mesmer_like_maps(300, 260, seed=2, compartment=compartment, dtype=dtype)
    image = maxima[0, ..., 0]
    for radius, h in ((2, 0.075), (2, 0.1), (10, 0.1)):
        np.testing.assert_array_equal(h_maxima(image, h, disk(radius)),
                                      sk_h_maxima(image, h, disk(radius)))


def test_h_maxima_of_adversarial_maps():
    count = 0
    for name, maxima, _ in adversarial_maps():
        image = maxima[0, ..., 0]
        for radius, h in ((2, 0.075), (2, 0.1), (10, 0.1), (1, 0.5)):
            np.testing.assert_array_equal(h_maxima(image, h, disk(radius)),
                                          sk_h_maxima(image, h, disk(radius)), err_msg=name)
            count += 1
    assert count > 200


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 14), st.integers(1, 14)),
    dtype=st.sampled_from([np.float32, np.float64]),
    radius=st.integers(0, 3),
    h=st.sampled_from([0.075, 0.1, 0.25, 1.0]),
)
def test_property_h_maxima_equals_skimage(data, shape, dtype, radius, h):
    values = st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.875, 1.0, 0.0625, 0.09375])
    image = data.draw(hnp.arrays(dtype, shape, elements=values))
    np.testing.assert_array_equal(h_maxima(image, h, disk(radius)),
                                  sk_h_maxima(image, h, disk(radius)))


def test_bad_inputs_raise_project_errors():
    image = np.random.default_rng(0).random((8, 8))
    with pytest.raises(ConfigError, match="h"):
        h_maxima(image, 0.0)
    with pytest.raises(ConfigError, match="h > 0"):
        h_maxima(image, -0.1)
    with pytest.raises(InputError, match="NaN"):
        h_maxima(np.full((3, 3), np.nan), 0.1)
    with pytest.raises(InputError, match="2-D"):
        h_maxima(np.zeros((2, 3, 3)), 0.1)
    with pytest.raises(InputError, match="odd"):
        h_maxima(image, 0.1, np.ones((2, 3)))
    with pytest.raises(InputError, match="exceed"):
        reconstruction(image, image - 1)
    with pytest.raises(InputError, match="shape"):
        reconstruction(image[:4], image)
    assert h_maxima(np.zeros((0, 5)), 0.1).shape == (0, 5)
