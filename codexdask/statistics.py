"""Exact statistics of pixel values gathered chunk by chunk.

Segmenters normalise each image they are given with image-wide statistics (Mesmer clips every
channel at the 99.9th percentile of its non-zero pixels). A logical patch too large for memory is
read in chunks, so those statistics are assembled from per-chunk partial results that combine
exactly: a :class:`ValueHistogram` counts every distinct value (integer pixels of up to 16 bits)
or, for other dtypes, counts values by the top 16 bits of an order-preserving key, and a second
pass (:func:`refine`) counts the distinct values of the few key ranges that hold the ranks a
quantile needs. :func:`percentile_from_histogram` then equals ``numpy.percentile`` with linear
interpolation (numpy 1.x arithmetic; see its docstring).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.errors import InputError

__all__ = [
    "ChannelSummary",
    "ImageStatistics",
    "NonZeroPercentiles",
    "ValueHistogram",
    "gather_statistics",
    "histogram",
    "merge_histograms",
    "percentile_from_histogram",
    "rank_bins",
    "refine",
]

#: Bits of the order-preserving key that index the coarse bins of a non-exact histogram.
COARSE_BITS = 16


@dataclasses.dataclass(frozen=True)
class ValueHistogram:
    """Counts of pixel values.

    Attributes
    ----------
    dtype : numpy.dtype
        The pixels' dtype.
    exact : bool
        ``values``/``counts`` list every distinct value (True), or ``counts`` are per coarse bin
        ``key >> (key_bits - COARSE_BITS)`` of the order-preserving key (False).
    values : ndarray, shape (V,)
        Sorted distinct values (exact) or the coarse bins present (coarse), as uint64 for coarse.
    counts : ndarray of int64, shape (V,)
    """

    dtype: np.dtype
    exact: bool
    values: np.ndarray
    counts: npt.NDArray[np.int64]

    @property
    def total(self) -> int:
        """Number of values counted."""
        return int(self.counts.sum())


def _is_small_int(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" and dtype.itemsize <= 2


def order_keys(values: np.ndarray) -> npt.NDArray[np.uint64]:
    """Unsigned keys with the order of ``values`` (integers or floats without NaN)."""
    values = np.asarray(values)
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "u":
        return values.astype(np.uint64)
    if kind == "i":
        return (values.astype(np.int64) - np.int64(np.iinfo(values.dtype).min)).astype(np.uint64)
    if kind == "f":
        bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[size]
        raw = (values + values.dtype.type(0)).view(bits).astype(np.uint64)  # -0.0 becomes 0.0
        sign = np.uint64(1 << (8 * size - 1))
        flip = np.where(raw & sign, np.uint64(2 ** (8 * size) - 1), sign)
        return raw ^ flip
    raise InputError(f"pixel values must be integers or floats, got dtype {values.dtype}")


def _coarse_shift(dtype: np.dtype) -> np.uint64:
    return np.uint64(max(8 * dtype.itemsize - COARSE_BITS, 0))


def histogram(values: np.ndarray) -> ValueHistogram:
    """Counts of ``values`` (any shape): exact for integers of up to 16 bits, coarse otherwise."""
    values = np.asarray(values).ravel()
    dtype = values.dtype
    if _is_small_int(dtype):
        info = np.iinfo(dtype)
        counts = np.bincount((values.astype(np.int64) - info.min), minlength=0)
        present = np.flatnonzero(counts)
        return ValueHistogram(dtype, True, (present + info.min).astype(dtype),
                              counts[present].astype(np.int64))
    bins = order_keys(values) >> _coarse_shift(dtype)
    present, counts = np.unique(bins, return_counts=True)
    return ValueHistogram(dtype, False, present.astype(np.uint64), counts.astype(np.int64))


def merge_histograms(parts: Sequence[ValueHistogram]) -> ValueHistogram:
    """The histogram of all values counted by ``parts`` (all of one dtype and kind)."""
    if not parts:
        raise InputError("merge_histograms needs at least one histogram")
    first = parts[0]
    if any(p.dtype != first.dtype or p.exact != first.exact for p in parts):
        raise InputError("histograms of different dtypes or kinds cannot be merged")
    values = np.concatenate([p.values for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    distinct, inverse = np.unique(values, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=counts, minlength=distinct.size)
    return ValueHistogram(first.dtype, first.exact, distinct, summed.astype(np.int64))


def rank_bins(hist: ValueHistogram, ranks: Sequence[int]) -> npt.NDArray[np.uint64]:
    """The coarse bins that hold the 0-based ``ranks`` of the sorted values."""
    cumulative = np.cumsum(hist.counts)
    return np.unique(hist.values[np.searchsorted(cumulative, np.asarray(ranks), side="right")])


def refine(values: np.ndarray, bins: np.ndarray) -> ValueHistogram:
    """Exact counts of the ``values`` whose coarse bin is in ``bins`` (the second pass)."""
    values = np.asarray(values).ravel()
    keep = np.isin(order_keys(values) >> _coarse_shift(values.dtype), bins)
    distinct, counts = np.unique(values[keep], return_counts=True)
    return ValueHistogram(values.dtype, True, distinct, counts.astype(np.int64))


def value_at_ranks(
    coarse: ValueHistogram, fine: ValueHistogram, ranks: Sequence[int]
) -> list[float | int]:
    """Values at 0-based ``ranks`` from a coarse histogram and the refined bins holding them.

    For an exact ``coarse`` histogram, ``fine`` may be the same histogram.
    """
    if coarse.exact:
        cumulative = np.cumsum(coarse.counts)
        return [coarse.values[int(np.searchsorted(cumulative, r, side="right"))].item()
                for r in ranks]
    cumulative = np.cumsum(coarse.counts)
    fine_bins = order_keys(fine.values) >> _coarse_shift(coarse.dtype)
    out = []
    for rank in ranks:
        k = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[k - 1]) if k else 0
        in_bin = fine_bins == coarse.values[k]
        local = np.cumsum(fine.counts[in_bin])
        out.append(fine.values[in_bin][int(np.searchsorted(local, rank - before,
                                                           side="right"))].item())
    return out


def quantile_ranks(n: int, percentile: float) -> tuple[int, int, float]:
    """The two ranks and the weight numpy's linear percentile interpolates between.

    ``virtual = (n - 1) * (percentile / 100)`` in float64, as numpy computes it.
    """
    if n < 1:
        raise InputError("a percentile of no values is undefined")
    virtual = (n - 1) * np.true_divide(np.float64(percentile), 100)
    if virtual >= n - 1:
        return n - 1, n - 1, float(virtual - (n - 1))
    previous = int(np.floor(virtual))
    return previous, previous + 1, float(virtual - previous)


def percentile_from_histogram(
    coarse: ValueHistogram, fine: ValueHistogram | None, percentile: float
) -> float:
    """``numpy.percentile(values, percentile)`` (linear) of the values a histogram counted.

    The interpolation repeats numpy 1.x's arithmetic, whatever numpy is installed: the difference
    of the two order statistics in the pixels' dtype, then ``a + d * g`` (or ``b - d * (1 - g)``
    when ``g >= 0.5``) in float64. numpy 2 gives the same for integer and float64 pixels but
    rounds float32 results to float32; deepcell runs on numpy 1.x, so its semantics are kept.

    Parameters
    ----------
    coarse : ValueHistogram
        Counts of all the values (exact, or coarse with ``fine`` refining the needed bins).
    fine : ValueHistogram, optional
        :func:`refine` of the bins :func:`rank_bins` names for :func:`quantile_ranks`.
    percentile : float
        In [0, 100].
    """
    previous, following, gamma = quantile_ranks(coarse.total, percentile)
    a_value, b_value = value_at_ranks(coarse, fine or coarse, (previous, following))
    a = np.asarray([a_value], dtype=coarse.dtype)
    b = np.asarray([b_value], dtype=coarse.dtype)
    t = np.asarray([gamma], dtype=np.float64)
    diff = np.subtract(b, a)
    result = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=result, where=t >= 0.5, casting="unsafe")
    return float(result[0])


# --------------------------------------------------------------------------------------------
# statistics gathered in passes over the chunks of an image


class ImageStatistics(abc.ABC):
    """Image-wide statistics gathered in passes over chunks of an image (a segmenter's needs).

    Instances are small, picklable and immutable: the engine sends one to the workers, calls
    :meth:`measure` on every chunk of the image, :meth:`combine` on the partial results and
    :meth:`advance` on the combination, until :attr:`done`. Chunks are ``(h, w, C)`` raw pixels
    and together cover the image exactly once.
    """

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the statistics are complete."""

    @abc.abstractmethod
    def measure(self, chunk: np.ndarray) -> Any:
        """The partial result of the current pass over one chunk."""

    @abc.abstractmethod
    def combine(self, partials: Sequence[Any]) -> Any:
        """The partial result of the union of the chunks of ``partials``."""

    @abc.abstractmethod
    def advance(self, combined: Any) -> ImageStatistics:
        """The statistics after a pass whose combined result is ``combined``."""


def gather_statistics(
    stats: ImageStatistics, chunks: Callable[[], Iterable[np.ndarray]], *, max_passes: int = 8
) -> ImageStatistics:
    """Run every pass of ``stats`` over the chunks ``chunks()`` yields, in this process."""
    for _ in range(max_passes):
        if stats.done:
            return stats
        stats = stats.advance(stats.combine([stats.measure(chunk) for chunk in chunks()]))
    if not stats.done:
        raise InputError(f"{type(stats).__name__} did not finish in {max_passes} passes")
    return stats


@dataclasses.dataclass(frozen=True)
class ChannelSummary:
    """What :class:`NonZeroPercentiles` found about one channel.

    Attributes
    ----------
    percentile : float
        The requested percentile of the channel's non-zero values (0.0 when there are none).
    minimum, maximum : float
        Smallest and largest value of the channel (zeros included).
    n_values, n_nonzero : int
        Pixels, and pixels whose value is not 0.
    nonzero : ValueHistogram or None
        Exact counts of the non-zero values when the dtype allows it (integers of up to 16 bits).
    """

    percentile: float
    minimum: float
    maximum: float
    n_values: int
    n_nonzero: int
    nonzero: ValueHistogram | None


@dataclasses.dataclass(frozen=True)
class NonZeroPercentiles(ImageStatistics):
    """A percentile of the non-zero values of every channel, exactly, plus min and max.

    One pass for integer pixels of up to 16 bits, two otherwise (the second refines the coarse
    bins holding the two ranks the percentile interpolates between).

    Attributes
    ----------
    percentile : float
        In [0, 100], e.g. 99.9.
    coarse : tuple of per-channel partials, or None
        Set after the first pass.
    channels : tuple of ChannelSummary, or None
        The result, once :attr:`done`.
    """

    percentile: float = 99.9
    coarse: tuple[Any, ...] | None = None
    channels: tuple[ChannelSummary, ...] | None = None

    @property
    def done(self) -> bool:
        return self.channels is not None

    def measure(self, chunk: np.ndarray) -> Any:
        chunk = np.asarray(chunk)
        channels = [chunk[..., c].ravel() for c in range(chunk.shape[-1])]
        if self.coarse is None:
            return tuple(
                (histogram(v[v != 0]), _min_max(v), int(v.size)) for v in channels
            )
        return tuple(
            refine(v[v != 0], bins) if bins is not None else None
            for v, bins in zip(channels, self._bins(), strict=True)
        )

    def combine(self, partials: Sequence[Any]) -> Any:
        if self.coarse is None:
            return tuple(
                (merge_histograms([p[c][0] for p in partials]),
                 (min(p[c][1][0] for p in partials), max(p[c][1][1] for p in partials)),
                 sum(p[c][2] for p in partials))
                for c in range(len(partials[0]))
            )
        return tuple(
            merge_histograms([p[c] for p in partials]) if partials[0][c] is not None else None
            for c in range(len(partials[0]))
        )

    def advance(self, combined: Any) -> NonZeroPercentiles:
        coarse = self.coarse if self.coarse is not None else combined
        fine = combined if self.coarse is not None else (None,) * len(coarse)
        if self.coarse is None and not all(h.exact or h.total == 0 for h, _, _ in coarse):
            return dataclasses.replace(self, coarse=coarse)  # a second pass is needed
        summaries = []
        for (hist, (low, high), n_values), refined in zip(coarse, fine, strict=True):
            value = 0.0 if hist.total == 0 else percentile_from_histogram(
                hist, refined, self.percentile)
            summaries.append(ChannelSummary(value, low, high, n_values, hist.total,
                                            hist if hist.exact else None))
        return dataclasses.replace(self, coarse=coarse, channels=tuple(summaries))

    def _bins(self) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for hist, _, _ in self.coarse or ():
            if hist.exact or hist.total == 0:
                out.append(None)
            else:
                previous, following, _ = quantile_ranks(hist.total, self.percentile)
                out.append(rank_bins(hist, [previous, following]))
        return out


def _min_max(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("inf"), float("-inf")
    return float(values.min()), float(values.max())
