"""codexdask.postprocess.gaussian_filter against scipy.ndimage.gaussian_filter, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi

from codexdask.errors import InputError
from codexdask.postprocess import gaussian_filter, smoothing

SHAPES = [(1, 1), (1, 40), (40, 1), (2, 40), (9, 9), (10, 41), (64, 48)]


@pytest.mark.parametrize("sigma", [0, -1, 1e-16, 0.5, 1, 1.3, 2, 3.7, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_scipy(shape, dtype, sigma):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for scale in (1.0, 1e-4, 1e4):
        image = (rng.random(shape) * scale).astype(dtype)
        expected = ndi.gaussian_filter(image, sigma)
        got = gaussian_filter(image, sigma)
        assert got.dtype == expected.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)


def test_strided_and_other_dtypes_equal_scipy():
    rng = np.random.default_rng(1)
    maps = rng.random((2, 50, 60, 3)).astype(np.float32)
    np.testing.assert_array_equal(gaussian_filter(maps[1, ..., 2], 2),
                                  ndi.gaussian_filter(maps[1, ..., 2], 2))
    for dtype in (np.uint8, np.int32):
        image = (rng.random((30, 30)) * 100).astype(dtype)
        np.testing.assert_array_equal(gaussian_filter(image, 1.5), ndi.gaussian_filter(image, 1.5))
    with pytest.raises(RuntimeError, match="not supported"):  # scipy's own refusal
        gaussian_filter(np.ones((30, 30), np.float16), 1.5)


def test_falls_back_to_scipy_when_the_probe_disagrees(monkeypatch):
    monkeypatch.setitem(smoothing._CHECKED, (2.0, np.dtype(np.float32).str), False)
    calls = []
    monkeypatch.setattr(smoothing, "_filter_axis0", lambda *args: calls.append(args))
    image = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(gaussian_filter(image, 2.0), ndi.gaussian_filter(image, 2.0))
    assert calls == []


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    dtype=st.sampled_from([np.float32, np.float64]),
    sigma=st.sampled_from([0.0, 0.7, 1.0, 2.0, 2.5]),
)
def test_property_equals_scipy(data, shape, dtype, sigma):
    values = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    image = data.draw(hnp.arrays(dtype, shape, elements=values))
    np.testing.assert_array_equal(gaussian_filter(image, sigma), ndi.gaussian_filter(image, sigma))


def test_bad_input_raises_project_error():
    with pytest.raises(InputError, match="2-D"):
        gaussian_filter(np.zeros((2, 3, 4)), 1.0)
