"""Exact statistics of pixel values, computed from chunks of an image.

Segmenters normalise each image they are given with image-wide statistics (Mesmer clips every
channel at the 99.9th percentile of its non-zero pixels; the watershed segmenter scales by one).
A logical patch too large for memory is read in chunks, so those statistics are assembled from
per-chunk partial results that combine exactly:

1. ``image_statistics(chunk)`` on every chunk, ``combine_statistics`` of the partials;
2. while ``refinement_query(partial, percentile)`` returns a query, run
   ``image_statistics(chunk, query)`` on every chunk again and combine (no more pass for
   8/16-bit pixels, 1 for 32-bit, 3 for 64-bit);
3. ``nonzero_percentiles(partial, percentile)``.

The percentile is a radix selection: pixels are mapped to unsigned keys that sort like the
values (floats through their bit patterns), each pass counts one 16-bit digit of the keys that
share the digits found so far, and the two order statistics that numpy interpolates between are
known exactly once every digit is. The interpolation then repeats numpy 1.26's arithmetic
(the ``linear`` method of ``numpy.percentile``), including its float64 result and its
subtraction in the pixel dtype, whatever numpy is installed.

:mod:`codexdask.statistics.passes` runs these passes over an image's boxes for a segmenter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import reduce

import numpy as np

from codexdask.errors import InputError

__all__ = [
    "DEFAULT_PERCENTILE",
    "StatisticsPartial",
    "StatisticsQuery",
    "combine_statistics",
    "image_statistics",
    "key_values",
    "nonzero_percentiles",
    "order_keys",
    "refinement_query",
    "small_int_counts",
]

#: The percentile both segmenters normalise by (Mesmer's ``percentile_threshold`` default).
DEFAULT_PERCENTILE = 99.9

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _digit_bits(dtype: np.dtype) -> int:
    return 8 if dtype.itemsize == 1 else 16


def _levels(dtype: np.dtype) -> int:
    """Number of passes (digits) that resolve a key of this dtype."""
    return max(1, dtype.itemsize // 2)


def check_statistics_dtype(dtype: np.dtype) -> np.dtype:
    """Return ``dtype`` if Mesmer's statistics support it (integers, float16/32/64)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif" or dtype.itemsize not in _UNSIGNED:
        raise InputError(f"pixels must be integers or float16/32/64, got dtype {dtype}; "
                         "cast the image to uint16 or float32")
    return dtype


def order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integer keys that sort in the same order as ``values`` (same item size).

    Unsigned integers are their own keys, signed integers get their sign bit flipped, and
    floats map through their IEEE bit patterns (negatives inverted, positives with the sign bit
    set). ``-0.0`` and ``+0.0`` get different keys; callers drop zeros first.
    """
    dtype = check_statistics_dtype(values.dtype)
    utype = _UNSIGNED[dtype.itemsize]
    bits = np.ascontiguousarray(values).view(utype)
    sign = utype(1 << (8 * dtype.itemsize - 1))
    if dtype.kind == "u":
        return bits
    if dtype.kind == "i":
        return bits ^ sign
    return np.where((bits & sign) != 0, ~bits, bits | sign)


def key_values(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`order_keys`: the values of ``dtype`` whose keys are ``keys``."""
    dtype = check_statistics_dtype(dtype)
    utype = _UNSIGNED[dtype.itemsize]
    keys = np.asarray(keys).astype(utype)
    sign = utype(1 << (8 * dtype.itemsize - 1))
    if dtype.kind == "u":
        return keys.view(dtype)
    if dtype.kind == "i":
        return (keys ^ sign).view(dtype)
    return np.where((keys & sign) != 0, keys ^ sign, ~keys).view(dtype)


@dataclasses.dataclass(frozen=True)
class StatisticsQuery:
    """What a refinement pass must count: one more 16-bit digit of two order statistics.

    Attributes
    ----------
    dtype : numpy.dtype
        Pixel dtype of the image.
    level : int
        Index of the digit this pass counts (1 = the second most significant).
    nonzero, minimum, maximum : numpy.ndarray
        ``(C,)`` results of the first pass, carried forward.
    prefix : numpy.ndarray
        ``(C, 2)`` uint64: the key digits above ``level`` of the two order statistics.
    rank : numpy.ndarray
        ``(C, 2)`` int64: their ranks among the non-zero pixels whose key starts with the
        prefix (-1 for channels without non-zero pixels).
    """

    dtype: np.dtype
    level: int
    nonzero: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    prefix: np.ndarray
    rank: np.ndarray


@dataclasses.dataclass(frozen=True)
class StatisticsPartial:
    """Mergeable statistics of part of an image (one chunk, or several combined).

    Attributes
    ----------
    dtype : numpy.dtype
        Pixel dtype.
    query : StatisticsQuery or None
        The refinement pass these counts answer (None for the first pass).
    pixels : int
        Pixels per channel seen.
    nonzero : numpy.ndarray
        ``(C,)`` int64 count of non-zero pixels (first pass; zeros in refinement passes).
    minimum, maximum : numpy.ndarray
        ``(C,)`` extremes of all pixels (zeros included), in the pixel dtype (refinement passes
        repeat the first pass's values).
    histogram : numpy.ndarray
        ``(C, T, B)`` int64 digit counts of the non-zero pixels: ``T = 1`` in the first pass
        (the most significant digit of every pixel), ``T = 2`` in a refinement pass (one row
        per order statistic); ``B = 256`` for 8-bit pixels, else 65536.
    """

    dtype: np.dtype
    query: StatisticsQuery | None
    pixels: int
    nonzero: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    histogram: np.ndarray


def image_statistics(chunk: np.ndarray, query: StatisticsQuery | None = None) -> StatisticsPartial:
    """Statistics of one chunk of an image.

    Parameters
    ----------
    chunk : numpy.ndarray
        ``(h, w, C)`` pixels (integers or float16/32/64, finite).
    query : StatisticsQuery, optional
        The refinement pass to answer (from :func:`refinement_query`); None for the first pass.

    Returns
    -------
    StatisticsPartial
        Partial statistics; merge partials of all chunks with :func:`combine_statistics`.
    """
    if chunk.ndim != 3 or min(chunk.shape) < 1:
        raise InputError(f"chunk must be a non-empty (height, width, channels) array, "
                         f"got shape {chunk.shape}")
    dtype = check_statistics_dtype(chunk.dtype)
    if query is not None and (query.dtype != dtype or query.nonzero.shape[0] != chunk.shape[2]):
        raise InputError(f"the query is for {query.nonzero.shape[0]} channels of {query.dtype}, "
                         f"the chunk has {chunk.shape[2]} channels of {dtype}")
    if dtype.kind == "f" and not np.isfinite(chunk).all():
        raise InputError("the image holds NaN or infinite pixels; Mesmer's percentile and "
                         "rescale are undefined for them: replace them before segmenting")
    channels = chunk.shape[2]
    bins = 1 << _digit_bits(dtype)
    rows = 1 if query is None else 2
    histogram = np.zeros((channels, rows, bins), dtype=np.int64)
    nonzero = np.zeros(channels, dtype=np.int64)
    minimum = np.zeros(channels, dtype=dtype)
    maximum = np.zeros(channels, dtype=dtype)
    for c in range(channels):
        plane = np.ascontiguousarray(chunk[..., c])
        if query is None:
            nonzero[c], histogram[c, 0] = _first_digit_histogram(plane, bins)
            minimum[c], maximum[c] = _extremes(plane, histogram[c, 0])
        else:
            histogram[c] = _refine_histogram(plane, query, c, bins)
    if query is not None:  # known from the first pass
        minimum, maximum = query.minimum.copy(), query.maximum.copy()
    return StatisticsPartial(dtype=dtype, query=query, pixels=chunk.shape[0] * chunk.shape[1],
                             nonzero=nonzero, minimum=minimum, maximum=maximum,
                             histogram=histogram)


def _small_int(dtype: np.dtype) -> bool:
    return dtype.kind in "ui" and dtype.itemsize <= 2


def _extremes(plane: np.ndarray, counts: np.ndarray) -> tuple[np.generic, np.generic]:
    """Minimum and maximum of a plane (read off the first-pass counts for small integers)."""
    if not _small_int(plane.dtype):
        return plane.min(), plane.max()
    present = np.flatnonzero(counts)
    if counts.sum() < plane.size:  # the plane holds zeros too
        present = np.union1d(present, order_keys(np.zeros(1, dtype=plane.dtype)))
    values = key_values(present, plane.dtype)
    return values[0], values[-1]


def _first_digit_histogram(plane: np.ndarray, bins: int) -> tuple[int, np.ndarray]:
    dtype = plane.dtype
    if _small_int(dtype):
        # Small integers: count every pixel's key, then forget the zeros.
        counts = np.bincount(order_keys(plane).ravel(), minlength=bins)
        zero_key = int(order_keys(np.zeros(1, dtype=dtype))[0])
        counts[zero_key] = 0
        return int(counts.sum()), counts
    keys = order_keys(plane[plane != 0])
    shift = 8 * dtype.itemsize - _digit_bits(dtype)
    digits = (keys >> keys.dtype.type(shift)).astype(np.intp)
    return int(keys.size), np.bincount(digits, minlength=bins)


def _refine_histogram(plane: np.ndarray, query: StatisticsQuery, c: int, bins: int) -> np.ndarray:
    out = np.zeros((2, bins), dtype=np.int64)
    if query.rank[c, 0] < 0:
        return out
    keys = order_keys(plane[plane != 0]).astype(np.uint64)
    total_bits = 8 * plane.dtype.itemsize
    above = np.uint64(total_bits - 16 * query.level)
    below = np.uint64(total_bits - 16 * (query.level + 1))
    heads = keys >> above
    for t in range(2):
        if t == 1 and query.prefix[c, 1] == query.prefix[c, 0]:
            out[1] = out[0]
            break
        selected = keys[heads == query.prefix[c, t]]
        digits = ((selected >> below) & np.uint64(0xFFFF)).astype(np.intp)
        out[t] = np.bincount(digits, minlength=bins)
    return out


def combine_statistics(partials: Sequence[StatisticsPartial]) -> StatisticsPartial:
    """Merge partial statistics of disjoint chunks of one image (same pass)."""
    if len(partials) == 0:
        raise InputError("combine_statistics needs at least one partial")
    first = partials[0]
    for other in partials[1:]:
        if (other.dtype != first.dtype or other.histogram.shape != first.histogram.shape
                or not _same_query(other.query, first.query)):
            raise InputError("partials to combine must come from the same image and pass "
                             "(same dtype, channels and query)")
    return StatisticsPartial(
        dtype=first.dtype, query=first.query, pixels=sum(p.pixels for p in partials),
        nonzero=sum((p.nonzero for p in partials), np.zeros_like(first.nonzero)),
        minimum=reduce(np.minimum, (p.minimum for p in partials)),
        maximum=reduce(np.maximum, (p.maximum for p in partials)),
        histogram=sum((p.histogram for p in partials), np.zeros_like(first.histogram)))


def _same_query(a: StatisticsQuery | None, b: StatisticsQuery | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.level == b.level and np.array_equal(a.prefix, b.prefix)


def _target_ranks(nonzero: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """numpy's ``linear`` indices: the two ranks to interpolate between, and the weight."""
    quantile = float(percentile) / 100.0
    ranks = np.full((nonzero.shape[0], 2), -1, dtype=np.int64)
    gamma = np.zeros(nonzero.shape[0], dtype=np.float64)
    for c, n in enumerate(nonzero.tolist()):
        if n == 0:
            continue
        virtual = float(n - 1) * quantile
        if virtual >= n - 1:
            # numpy takes the last value twice (its weight is then irrelevant).
            ranks[c] = (n - 1, n - 1)
            continue
        below = int(np.floor(virtual))
        ranks[c] = (below, below + 1)
        gamma[c] = virtual - float(below)
    return ranks, gamma


def _resolve(partial: StatisticsPartial, percentile: float) -> tuple[StatisticsQuery, bool]:
    """Advance the radix selection by the digit counted in ``partial``.

    Returns the query for the next digit and whether the keys are now complete (then the
    query's ``prefix`` holds the full keys of the two order statistics).
    """
    if partial.query is None:
        nonzero, minimum, maximum = partial.nonzero, partial.minimum, partial.maximum
        rank, _ = _target_ranks(nonzero, percentile)
        prefix = np.zeros((nonzero.shape[0], 2), dtype=np.uint64)
        level = 0
        histograms = np.repeat(partial.histogram, 2, axis=1)
    else:
        query = partial.query
        nonzero, minimum, maximum = query.nonzero, query.minimum, query.maximum
        rank, prefix, level = query.rank.copy(), query.prefix.copy(), query.level
        histograms = partial.histogram
    shift = np.uint64(_digit_bits(partial.dtype))
    for c in range(nonzero.shape[0]):
        for t in range(2):
            if rank[c, t] < 0:
                continue
            cumulative = np.cumsum(histograms[c, t])
            digit = int(np.searchsorted(cumulative, rank[c, t], side="right"))
            if digit >= cumulative.size:
                raise InputError("the partial statistics do not hold the pixels of the query; "
                                 "run the refinement pass over every chunk of the image")
            rank[c, t] -= int(cumulative[digit - 1]) if digit > 0 else 0
            prefix[c, t] = (prefix[c, t] << shift) | np.uint64(digit)
    done = level + 1 >= _levels(partial.dtype)
    return StatisticsQuery(dtype=partial.dtype, level=level + 1, nonzero=nonzero,
                           minimum=minimum, maximum=maximum, prefix=prefix, rank=rank), done


def refinement_query(partial: StatisticsPartial,
                     percentile: float = DEFAULT_PERCENTILE) -> StatisticsQuery | None:
    """The next pass the statistics need, or None when ``partial`` determines them."""
    _check_percentile(percentile)
    query, done = _resolve(partial, percentile)
    return None if done else query


def _lerp_numpy126(low: np.generic, high: np.generic, gamma: float, dtype: np.dtype) -> float:
    """numpy 1.26's ``_lerp`` for one pair of order statistics, as a float64.

    The difference is taken in the pixel dtype (integers wrap, floats round there), the rest in
    float64; weights of at least one half count back from the upper value.
    """
    a = np.asarray([low], dtype=dtype)
    b = np.asarray([high], dtype=dtype)
    with np.errstate(over="ignore"):
        difference = float(np.subtract(b, a)[0])
    a64, b64 = float(a[0]), float(b[0])
    if gamma >= 0.5:
        return b64 - difference * (1.0 - gamma)
    return a64 + difference * gamma


def _check_percentile(percentile: float) -> None:
    if not 0.0 <= float(percentile) <= 100.0:
        raise InputError(f"percentile must be in [0, 100], got {percentile}")


def nonzero_percentiles(partial: StatisticsPartial, percentile: float) -> np.ndarray:
    """``numpy.percentile`` of each channel's non-zero pixels, from the last pass's partial.

    Returns
    -------
    numpy.ndarray
        ``(C,)`` float64; NaN for a channel without non-zero pixels.

    Raises
    ------
    InputError
        If another pass is needed (see :func:`refinement_query`).
    """
    _check_percentile(percentile)
    query, done = _resolve(partial, percentile)
    if not done:
        raise InputError("the statistics need another pass over the image: call "
                         "refinement_query(partial) and image_statistics(chunk, query)")
    _, gamma = _target_ranks(query.nonzero, percentile)
    values = np.full(query.nonzero.shape[0], np.nan)
    for c in range(values.size):
        if query.nonzero[c] > 0:
            low, high = key_values(query.prefix[c], partial.dtype)
            values[c] = _lerp_numpy126(low, high, float(gamma[c]), partial.dtype)
    return values


def small_int_counts(partial: StatisticsPartial, c: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact ``(values, counts)`` of the non-zero pixels of channel ``c`` (first pass only).

    For pixels of up to 16 bits the first pass counts every distinct value; ``None`` otherwise.
    """
    if partial.query is not None or not _small_int(partial.dtype):
        return None
    counts = partial.histogram[c, 0]
    present = np.flatnonzero(counts)
    return key_values(present.astype(np.uint64), partial.dtype), counts[present]
