"""Exact chunked statistics: codexdask.statistics.exact (radix passes) and Mesmer's on top of it.

The reference for the clip value is an independent sort-based evaluation of numpy 1.26's
``linear`` percentile (the arithmetic deepcell's ``percentile_threshold`` runs); the reference
environment's parity tests also compare with ``numpy.percentile`` itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.normalisation import finalize_statistics, whole_image_statistics
from codexdask.statistics.exact import (
    combine_statistics,
    image_statistics,
    key_values,
    order_keys,
    refinement_query,
)

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
          np.float16, np.float32, np.float64]


def sorted_percentile(values: np.ndarray, percentile: float) -> float:
    """numpy 1.26's linear percentile of the non-zero ``values``, from a full sort."""
    data = np.sort(values[values != 0])
    n = data.size
    virtual = float(n - 1) * (percentile / 100.0)
    if virtual >= n - 1:
        return float(data[-1])
    below = int(np.floor(virtual))
    gamma = virtual - below
    with np.errstate(over="ignore"):
        diff = float(np.subtract(data[below + 1:below + 2], data[below:below + 1])[0])
    if gamma >= 0.5:
        return float(data[below + 1]) - diff * (1.0 - gamma)
    return float(data[below]) + diff * gamma


def adversarial(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """Ties, all zero, constant, one non-zero pixel, negatives, huge ranges, tiny values."""
    kind = int(rng.integers(0, 9))
    if np.dtype(dtype).kind == "f":
        info = np.finfo(dtype)
        low, high = float(info.min) / 4, float(info.max) / 4
    else:
        iinfo = np.iinfo(dtype)
        low, high = float(iinfo.min), float(iinfo.max)
    values: np.ndarray
    if kind == 0:
        values = np.zeros(shape)
    elif kind == 1:
        values = np.full(shape, 3.0)
    elif kind == 2:
        values = np.zeros(shape)
        values[tuple(int(rng.integers(0, s)) for s in shape)] = 5
    elif kind == 3:
        values = rng.integers(-5, 6, shape).astype(float)
    elif kind == 4:
        values = rng.standard_normal(shape) * 1e6
    elif kind == 5:
        values = rng.choice([low, 0.0, high, 1.0, -1.0], shape)
    elif kind == 6:
        values = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
    elif kind == 7:
        values = rng.gamma(0.5, 1000, shape) * (rng.random(shape) > 0.5)
    else:
        values = rng.integers(0, 3, shape) * 1e-3
    values = np.clip(values, low, high)
    if np.dtype(dtype).kind in "ui" and np.dtype(dtype).itemsize == 8:
        values = np.trunc(values / 4096)  # keep 64-bit integers exact in float64
    with np.errstate(all="ignore"):
        out = values.astype(dtype)
    if out.dtype.kind == "f":
        out[~np.isfinite(out)] = 0
    return out


def chunked(image: np.ndarray, rng: np.random.Generator, percentile: float):
    """Statistics from a random chunking; returns (statistics, number of passes)."""
    height, width = image.shape[:2]
    ys = sorted({0, height, *rng.integers(0, height + 1, 3).tolist()})
    xs = sorted({0, width, *rng.integers(0, width + 1, 3).tolist()})
    chunks = [image[a:b, c:d] for a, b in zip(ys[:-1], ys[1:]) for c, d in zip(xs[:-1], xs[1:])
              if b > a and d > c]
    partial = combine_statistics([image_statistics(chunk) for chunk in chunks])
    passes = 1
    while (query := refinement_query(partial, percentile)) is not None:
        partial = combine_statistics([image_statistics(chunk, query) for chunk in chunks])
        passes += 1
    return finalize_statistics(partial, percentile), passes


@pytest.mark.parametrize("dtype", DTYPES)
def test_order_keys_sort_like_values_and_invert(dtype: type) -> None:
    rng = np.random.default_rng(1)
    values = np.unique(np.concatenate([adversarial(rng, dtype, (500,)) for _ in range(12)]))
    keys = order_keys(values)
    assert keys.dtype.kind == "u" and keys.dtype.itemsize == np.dtype(dtype).itemsize
    assert np.all(np.diff(keys.astype(np.float64)) >= 0) and np.all(keys[1:] != keys[:-1])
    assert np.array_equal(key_values(keys, np.dtype(dtype)), values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_statistics_are_exact(dtype: type) -> None:
    rng = np.random.default_rng(int(np.dtype(dtype).num))
    expected_passes = max(1, np.dtype(dtype).itemsize // 2)
    checked = 0
    for _ in range(30):
        shape = (int(rng.integers(1, 50)), int(rng.integers(1, 50)), 2)
        image = adversarial(rng, dtype, shape)
        percentile = float(rng.choice([99.9, 50.0, 0.0, 100.0, 12.345, 99.99]))
        stats, passes = chunked(image, rng, percentile)
        assert passes <= expected_passes
        clipped = stats.clip(image)
        assert clipped.dtype == image.dtype
        for c in range(2):
            plane = image[..., c]
            assert stats.nonzero[c] == np.count_nonzero(plane)
            assert stats.minimum[c] == plane.min() and stats.maximum[c] == plane.max()
            if stats.nonzero[c]:
                assert stats.clip_value[c] == sorted_percentile(plane, percentile)
                checked += 1
            else:
                assert np.isnan(stats.clip_value[c])
        assert np.array_equal(stats.clipped_minimum, clipped.min(axis=(0, 1)))
        assert np.array_equal(stats.clipped_maximum, clipped.max(axis=(0, 1)))
        whole = whole_image_statistics(image, percentile)
        assert np.array_equal(whole.clip_value, stats.clip_value, equal_nan=True)
    assert checked > 10


def test_refinement_passes_per_dtype() -> None:
    rng = np.random.default_rng(3)
    for dtype, passes in [(np.uint16, 1), (np.float32, 2), (np.int32, 2), (np.float64, 4)]:
        image = (rng.random((40, 30, 1)) * 1000 + 1).astype(dtype)
        assert chunked(image, rng, 99.9)[1] == passes


def test_clip_truncates_integers_and_keeps_all_zero_channels() -> None:
    image = np.zeros((10, 10, 2), np.uint16)
    image[..., 0] = np.arange(100).reshape(10, 10)
    stats = whole_image_statistics(image, 99.9)
    clipped = stats.clip(image)
    assert stats.clip_value[0] == sorted_percentile(image[..., 0], 99.9)
    assert clipped[..., 0].max() == int(stats.clip_value[0])  # 98.902 -> 98
    assert not clipped[..., 1].any() and np.isnan(stats.clip_value[1])
    assert stats.uniform[1] and not stats.uniform[0]


def test_no_threshold_keeps_raw_range() -> None:
    image = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    stats = finalize_statistics(image_statistics(image), None)
    assert np.array_equal(stats.clip(image), image)
    assert np.array_equal(stats.clipped_maximum, image.max(axis=(0, 1)))


def test_errors_say_what_to_do() -> None:
    with pytest.raises(InputError, match="NaN"):
        image_statistics(np.full((2, 2, 1), np.nan, np.float32))
    with pytest.raises(InputError, match="dtype"):
        image_statistics(np.ones((2, 2, 1), bool))
    with pytest.raises(InputError, match="channels"):
        image_statistics(np.ones((2, 2), np.uint8))
    float_partial = image_statistics(np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2))
    with pytest.raises(InputError, match="another pass"):
        finalize_statistics(float_partial)
    with pytest.raises(InputError, match="percentile"):
        refinement_query(float_partial, 101)
    with pytest.raises(InputError, match="same image"):
        combine_statistics([float_partial, image_statistics(np.ones((2, 2, 2), np.uint8))])
