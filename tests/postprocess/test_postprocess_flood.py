"""codexdask.postprocess.watershed against skimage.segmentation.watershed (>= 0.25.1).

Exact equality (labels and dtype) on random and tie-heavy elevations, plateaus, -0.0/+0.0,
negative labels, markers outside the mask, thin and 1-pixel images, all real dtypes, and many
tied markers (the binary-heap phase, then the radix heap). Runs in both environments.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers.mesmer_like import mesmer_like_maps
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.measure import label as sk_label
from skimage.morphology import disk, h_maxima
from skimage.segmentation import watershed as sk_watershed

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess import watershed
from codexdask.postprocess.flood import flood

skimage_version = tuple(int(part) for part in __import__("skimage").__version__.split(".")[:3])
pytestmark = pytest.mark.skipif(
    skimage_version < (0, 25, 1),
    reason="scikit-image < 0.25.1 floods in another order (no running-maximum levels)",
)

SHAPES = [(1, 1), (1, 29), (29, 1), (2, 31), (31, 2), (7, 9), (40, 33)]


def _case(rng: np.random.Generator, shape: tuple[int, int], levels: int, dtype: type,
          n_markers: int, masked: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = (rng.integers(0, levels, shape) / levels).astype(dtype)
    image[rng.random(shape) < 0.2] *= -1  # mixes -0.0 and +0.0 as well
    markers = np.zeros(shape, np.int32)
    count = min(n_markers, image.size)
    flat = rng.choice(image.size, count, replace=False)
    markers.flat[flat] = rng.integers(-3, 6, count)
    mask = rng.random(shape) > 0.25 if masked else None
    return image, markers, mask


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_tie_heavy_cases_equal_skimage(shape, dtype, connectivity):
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype, connectivity)).encode()))
    for trial in range(40):
        levels = [2, 3, 5, 1000][trial % 4]
        image, markers, mask = _case(rng, shape, levels, dtype, 1 + trial % 9, trial % 2 == 1)
        expected = sk_watershed(image, markers, mask=mask, connectivity=connectivity)
        got = watershed(image, markers, mask=mask, connectivity=connectivity)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")


@pytest.mark.parametrize("image_dtype", [np.bool_, np.uint8, np.int16, np.int64, np.float16])
@pytest.mark.parametrize("marker_dtype", [np.uint8, np.int16, np.uint32, np.int64])
def test_other_dtypes_equal_skimage(image_dtype, marker_dtype):
    rng = np.random.default_rng(7)
    image = rng.integers(0, 3, (23, 19)).astype(image_dtype)
    markers = np.zeros((23, 19), marker_dtype)
    markers[rng.integers(0, 23, 6), rng.integers(0, 19, 6)] = rng.integers(1, 4, 6)
    mask = rng.random((23, 19)) > 0.3
    expected = sk_watershed(image, markers, mask=mask)
    got = watershed(image, markers, mask=mask)
    assert got.dtype == expected.dtype == np.dtype(marker_dtype)
    np.testing.assert_array_equal(got, expected)


def test_constant_images_and_empty_markers():
    for value in (0.0, -0.0, 1.0, -1.0):
        image = np.full((12, 17), value, np.float32)
        markers = np.zeros((12, 17), np.int64)
        np.testing.assert_array_equal(watershed(image, markers), sk_watershed(image, markers))
        markers[3, 4], markers[9, 12], markers[0, 16] = 2, 1, 2
        np.testing.assert_array_equal(watershed(image, markers), sk_watershed(image, markers))


def test_many_tied_markers_then_radix_phase():
    """Hundreds of markers sharing a few elevations on a large map: the binary-heap phase runs
    long, hands over to the radix heap, and both heaps grow."""
    rng = np.random.default_rng(3)
    image = np.round(rng.random((300, 280)) * 50).astype(np.float32) / 50
    markers = np.zeros(image.shape, np.int32)
    places = rng.choice(image.size, 900, replace=False)
    markers.flat[places] = np.arange(1, 901)
    for mask in (None, rng.random(image.shape) > 0.1):
        np.testing.assert_array_equal(watershed(image, markers, mask=mask),
                                      sk_watershed(image, markers, mask=mask))


@pytest.mark.parametrize("compartment", ["whole-cell", "nuclear"])
def test_mesmer_like_flood_equals_skimage(compartment):
    maxima, interior = mesmer_like_maps(256, 256, seed=5, compartment=compartment)
    markers = sk_label(h_maxima(maxima[0, ..., 0], 0.1, disk(2)))
    interior = interior[0, ..., 0]
    mask = interior > 0.2
    expected = sk_watershed(-1 * interior, markers, mask=mask)
    np.testing.assert_array_equal(watershed(-1 * interior, markers, mask=mask), expected)
    # the pipeline's variant: negated on the fly, int32 output
    got = flood(interior, markers, mask, 1, negate=True, out_dtype=np.int32)
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    dtype=st.sampled_from([np.float32, np.float64]),
    connectivity=st.sampled_from([1, 2]),
)
def test_property_equals_skimage(data, shape, dtype, connectivity):
    values = st.sampled_from([0.0, -0.0, 0.25, -0.25, 0.5, 1.0, 2.0**-20, np.inf, -np.inf])
    image = data.draw(hnp.arrays(dtype, shape, elements=values))
    markers = data.draw(hnp.arrays(np.int16, shape, elements=st.sampled_from([0, 0, 0, 1, 2, -1])))
    mask = data.draw(st.none() | hnp.arrays(np.bool_, shape))
    expected = sk_watershed(image, markers, mask=mask, connectivity=connectivity)
    got = watershed(image, markers, mask=mask, connectivity=connectivity)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_bad_inputs_raise_project_errors():
    image = np.zeros((4, 4))
    markers = np.zeros((4, 4), np.int32)
    with pytest.raises(InputError, match="2-D"):
        watershed(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), np.int32))
    with pytest.raises(InputError, match="shape"):
        watershed(image, np.zeros((4, 5), np.int32))
    with pytest.raises(InputError, match="integer"):
        watershed(image, markers.astype(float))
    with pytest.raises(InputError, match="NaN"):
        watershed(np.full((4, 4), np.nan), markers)
    with pytest.raises(InputError, match="mask"):
        watershed(image, markers, mask=np.ones((3, 4), bool))
    with pytest.raises(ConfigError, match="connectivity"):
        watershed(image, markers, connectivity=3)
