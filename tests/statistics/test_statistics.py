"""Tests of codexdask.statistics.exact beyond the radix passes (see test_mesmer_statistics.py):
percentiles of non-zero pixels equal numpy's, and statistics gathered in passes over boxes."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.boxes import Box
from codexdask.statistics.exact import (
    combine_statistics,
    image_statistics,
    nonzero_percentiles,
    refinement_query,
    small_int_counts,
)
from codexdask.statistics.passes import NonZeroPercentiles, gather_statistics

NUMPY_1 = int(np.__version__.split(".")[0]) < 2
DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "int64", "float64", "float32"]


def chunked(values: np.ndarray, q: float, n_chunks: int) -> float:
    chunks = [c.reshape(-1, 1, 1) for c in np.array_split(values, n_chunks) if c.size]
    partial = combine_statistics([image_statistics(c) for c in chunks])
    while (query := refinement_query(partial, q)) is not None:
        partial = combine_statistics([image_statistics(c, query) for c in chunks])
    return float(nonzero_percentiles(partial, q)[0])


@pytest.mark.parametrize("dtype", [  # float32: numpy 1.x semantics, the reference environment's
    pytest.param(d, marks=pytest.mark.reference) if d == "float32" else d for d in DTYPES])
def test_nonzero_percentile_equals_numpy(dtype: str) -> None:
    if dtype == "float32" and not NUMPY_1:
        pytest.skip("numpy 2 rounds float32 percentiles to float32; the numpy 1.x semantics "
                    "(deepcell's) are checked in the reference environment")
    rng = np.random.default_rng(sum(map(ord, dtype)))
    for trial in range(40):
        size = int(rng.integers(1, 3000))
        if np.dtype(dtype).kind == "f":
            values = rng.standard_normal(size) * 10.0 ** int(rng.integers(-3, 6))
            values = np.round(values) if trial % 4 == 0 else values  # many ties
        else:
            info = np.iinfo(dtype)
            values = (rng.integers(0, 5, size) if trial % 3 == 0 else
                      rng.integers(max(info.min, -10**6), min(info.max, 10**6), size,
                                   endpoint=True))
        values = values.astype(dtype)
        nonzero = values[values != 0]
        if nonzero.size == 0:
            continue
        q = float(rng.choice([99.9, 50.0, 0.0, 100.0, 37.3, 99.99]))
        assert chunked(values, q, int(rng.integers(1, 6))) == float(np.percentile(nonzero, q))


def boxes_of(image: np.ndarray, size: int) -> list[Box]:
    return [Box(y, x, min(y + size, image.shape[0]), min(x + size, image.shape[1]))
            for y in range(0, image.shape[0], size) for x in range(0, image.shape[1], size)]


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "float32", "int32"])
def test_gathered_over_boxes_equal_the_whole_image(dtype: str) -> None:
    rng = np.random.default_rng(7)
    image = (rng.gamma(1.5, 400.0, (97, 131, 2)) * (rng.random((97, 131, 2)) < 0.6)).astype(dtype)
    image[..., 1] = 0 if dtype == "uint8" else image[..., 1]  # an empty channel too

    class Small(NonZeroPercentiles):
        chunk_size = 40  # several boxes, edge boxes smaller

    stats = gather_statistics(Small(99.9), image.shape[:2], lambda box: image[box.slices()])
    assert isinstance(stats, NonZeroPercentiles) and stats.values is not None
    for c in range(2):
        nonzero = image[..., c][image[..., c] != 0]
        if nonzero.size == 0:
            assert np.isnan(stats.values[c])
        elif dtype != "float32" or NUMPY_1:
            assert stats.values[c] == float(np.percentile(nonzero, 99.9))
        counts = small_int_counts(stats.first, c) if stats.first is not None else None
        if np.dtype(dtype).itemsize <= 2:
            assert counts is not None
            values, number = counts
            expected, expected_number = np.unique(nonzero, return_counts=True)
            np.testing.assert_array_equal(values, expected)
            np.testing.assert_array_equal(number, expected_number)
        else:
            assert counts is None
