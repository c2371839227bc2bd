"""Tests of codexdask.statistics: chunked exact histograms and percentiles equal numpy's."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.statistics import (
    histogram,
    merge_histograms,
    order_keys,
    percentile_from_histogram,
    quantile_ranks,
    rank_bins,
    refine,
)

NUMPY_1 = int(np.__version__.split(".")[0]) < 2
DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "int64", "float64", "float32"]


def chunked_percentile(values: np.ndarray, q: float, n_chunks: int) -> float:
    chunks = np.array_split(values, n_chunks)
    coarse = merge_histograms([histogram(c) for c in chunks])
    fine = None
    if not coarse.exact:
        previous, following, _ = quantile_ranks(coarse.total, q)
        bins = rank_bins(coarse, [previous, following])
        fine = merge_histograms([refine(c, bins) for c in chunks])
    return percentile_from_histogram(coarse, fine, q)


def sample(dtype: str, rng: np.random.Generator, trial: int) -> np.ndarray:
    size = int(rng.integers(1, 3000))
    if np.dtype(dtype).kind == "f":
        values = rng.standard_normal(size) * 10.0 ** int(rng.integers(-3, 6))
        if trial % 4 == 0:
            values = np.round(values)  # many ties
        return values.astype(dtype)
    info = np.iinfo(dtype)
    if trial % 3 == 0:
        return rng.integers(0, 5, size).astype(dtype)
    return rng.integers(max(info.min, -10**6), min(info.max, 10**6), size,
                        endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_percentile_equals_numpy(dtype: str) -> None:
    if dtype == "float32" and not NUMPY_1:
        pytest.skip("numpy 2 rounds float32 percentiles to float32; the numpy 1.x semantics "
                    "(deepcell's) are checked in the reference environment")
    rng = np.random.default_rng(abs(hash(dtype)) % 2**32)
    for trial in range(60):
        values = sample(dtype, rng, trial)
        q = float(rng.choice([99.9, 50.0, 0.0, 100.0, 37.3, 99.99]))
        got = chunked_percentile(values, q, int(rng.integers(1, 6)))
        assert got == float(np.percentile(values, q)), (dtype, trial, q)


def test_edge_cases() -> None:
    for values in (np.array([7], np.uint16), np.full(10, 3.5, np.float64),
                   np.array([-2.0, -0.0, 0.0, 2.0]), np.array([np.finfo(np.float64).max, 0.0])):
        for q in (0.0, 99.9, 100.0):
            assert chunked_percentile(values, q, 2 if values.size > 1 else 1) == \
                float(np.percentile(values, q))
    with pytest.raises(InputError):
        quantile_ranks(0, 50)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int64", "uint64", "float16", "float32",
                                   "float64"])
def test_order_keys_preserve_order(dtype: str) -> None:
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f":
        values = np.concatenate([rng.standard_normal(500) * 1e3, [0.0, -0.0, np.inf, -np.inf]])
    else:
        info = np.iinfo(dtype)
        values = np.concatenate([rng.integers(info.min, info.max, 500, endpoint=True,
                                              dtype=dtype),
                                 np.array([info.min, info.max, 0], dtype=dtype)])
    values = values.astype(dtype)
    keys = order_keys(values)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(keys[order].astype(object)) >= 0)
    assert np.all((keys[order][1:] > keys[order][:-1]) == (values[order][1:] > values[order][:-1]))


def test_merge_refuses_mixed_kinds() -> None:
    with pytest.raises(InputError):
        merge_histograms([histogram(np.zeros(3, np.uint8)), histogram(np.zeros(3, np.float32))])
    with pytest.raises(InputError):
        merge_histograms([])


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "float32", "int32"])
def test_non_zero_percentiles_of_chunks_equal_the_whole_image(dtype: str) -> None:
    from codexdask.statistics import NonZeroPercentiles, gather_statistics

    rng = np.random.default_rng(7)
    image = (rng.gamma(1.5, 400.0, (97, 131, 2)) * (rng.random((97, 131, 2)) < 0.6)).astype(dtype)
    image[..., 1] = 0 if dtype == "uint8" else image[..., 1]  # an empty channel too

    def chunks():
        for y in range(0, 97, 40):
            for x in range(0, 131, 50):
                yield image[y:y + 40, x:x + 50]

    stats = gather_statistics(NonZeroPercentiles(99.9), chunks)
    assert stats.channels is not None
    for c, summary in enumerate(stats.channels):
        values = image[..., c]
        nonzero = values[values != 0]
        expected = float(np.percentile(nonzero, 99.9)) if nonzero.size else 0.0
        if dtype != "float32" or NUMPY_1:
            assert summary.percentile == expected
        assert (summary.minimum, summary.maximum) == (float(values.min()), float(values.max()))
        assert summary.n_nonzero == nonzero.size and summary.n_values == values.size
        assert (summary.nonzero is not None) == (np.dtype(dtype).itemsize <= 2)
