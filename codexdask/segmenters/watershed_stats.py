"""The image-wide levels of the watershed segmenter, exact from chunks of the image.

Per channel the segmenter divides by the 99.9th percentile of the positive pixels (``scale``) and
clips to [0, 1]. On that scale it needs two more image-wide levels: the nucleus threshold (Otsu's
threshold of the normalised nucleus values, at least ``min_contrast``) with the median of the
values below it (the background), and the whole-cell threshold (a fraction of Otsu's threshold of
the normalised whole-cell values). Both are read from a histogram of the normalised values in
:data:`NORMALISED_BINS` equal bins over [0, 1], so they are exact whether the image is one array
or a slide read chunk by chunk: the histogram comes from the exact value counts of the first pass
(integer pixels of up to 16 bits) or from one more pass over the chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from codexdask.boxes import Box
from codexdask.statistics.exact import small_int_counts
from codexdask.statistics.passes import ImageStatistics, NonZeroPercentiles

__all__ = ["NORMALISED_BINS", "WatershedLevels", "WatershedStatistics", "normalise"]

#: Bins of the histogram of normalised values the thresholds are read from.
NORMALISED_BINS = 1024
#: Whole-cell signal lies above this fraction of the Otsu threshold of the whole-cell values.
WHOLECELL_FACTOR = 0.3
#: Percentile of the positive pixels that maps to 1 on the normalised scale.
SCALE_PERCENTILE = 99.9


@dataclasses.dataclass(frozen=True)
class WatershedLevels:
    """Image-wide levels on the normalised [0, 1] scale.

    Attributes
    ----------
    scale : (float, float)
        Divisor of the nucleus and whole-cell channel (0 for a channel without positive pixels).
    nucleus_threshold : float
        Nucleus foreground lies above it.
    nucleus_background : float
        Median of the normalised nucleus values below the threshold.
    wholecell_threshold : float
        Whole-cell signal lies above it.
    """

    scale: tuple[float, float]
    nucleus_threshold: float
    nucleus_background: float
    wholecell_threshold: float

    @property
    def has_nuclei(self) -> bool:
        """Whether the nucleus channel has any positive pixel."""
        return self.scale[0] > 0

    @property
    def has_wholecell(self) -> bool:
        """Whether the whole-cell channel has any positive pixel."""
        return self.scale[1] > 0


def normalise(channel: np.ndarray, scale: float) -> npt.NDArray[np.float32]:
    """``clip(channel / scale, 0, 1)`` in float32; all zeros for ``scale`` 0."""
    if scale <= 0:
        return np.zeros(channel.shape, dtype=np.float32)
    out = channel.astype(np.float32) / np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


def _bins(normalised: np.ndarray) -> npt.NDArray[np.intp]:
    return np.minimum((normalised * NORMALISED_BINS).astype(np.intp), NORMALISED_BINS - 1)


@dataclasses.dataclass(frozen=True)
class WatershedStatistics(ImageStatistics):
    """Gathers :class:`WatershedLevels` in one to three passes over chunks ``(h, w, 2)``.

    Attributes
    ----------
    min_contrast : float
        Lowest nucleus threshold.
    scales : NonZeroPercentiles
        The percentile passes.
    levels : WatershedLevels or None
        The result, once :attr:`done`.
    """

    min_contrast: float = 0.1
    scales: NonZeroPercentiles = NonZeroPercentiles(SCALE_PERCENTILE)
    levels: WatershedLevels | None = None

    @property
    def done(self) -> bool:
        return self.levels is not None

    def measure(self, raw: np.ndarray, read_box: Box, box: Box, shape: tuple[int, int]) -> Any:
        positive = np.maximum(raw[box.slices(read_box)], raw.dtype.type(0))
        if not self.scales.done:
            return self.scales.measure(positive, box, box, shape)
        return tuple(
            np.bincount(_bins(normalise(positive[..., c], s)).ravel(), minlength=NORMALISED_BINS)
            for c, s in enumerate(self._scale())
        )

    def combine(self, partials: Sequence[Any]) -> Any:
        if not self.scales.done:
            return self.scales.combine(partials)
        return tuple(np.sum([p[c] for p in partials], axis=0) for c in range(2))

    def advance(self, combined: Any) -> WatershedStatistics:
        if not self.scales.done:
            scales = self.scales.advance(combined)
            state = dataclasses.replace(self, scales=scales)
            if not scales.done:
                return state
            counts = state._counts_from_exact()
            return state if counts is None else state.advance(counts)
        return dataclasses.replace(self, levels=self._levels(combined))

    def _scale(self) -> tuple[float, float]:
        values = np.nan_to_num(np.asarray(self.scales.values, dtype=np.float64), nan=0.0)
        return float(values[0]), float(values[1])

    def _counts_from_exact(self) -> tuple[np.ndarray, ...] | None:
        """The normalised histograms from the first pass's exact value counts (pixels of up to
        16 bits), or ``None`` when another pass over the image must count them."""
        first = self.scales.first
        if first is None:
            return None
        out = []
        for c, scale in enumerate(self._scale()):
            exact = small_int_counts(first, c)
            if exact is None and first.nonzero[c] > 0:
                return None
            counts = np.zeros(NORMALISED_BINS, dtype=np.int64)
            counts[0] = first.pixels - first.nonzero[c]
            if exact is not None:
                values, number = exact
                np.add.at(counts, _bins(normalise(values, scale)), number)
            out.append(counts)
        return tuple(out)

    def _levels(self, counts: Sequence[np.ndarray]) -> WatershedLevels:
        nucleus, wholecell = (np.asarray(c, dtype=np.float64) for c in counts)
        threshold = max(_otsu_threshold(nucleus), self.min_contrast)
        below = nucleus[: int(np.ceil(threshold * NORMALISED_BINS))]
        return WatershedLevels(
            scale=self._scale(),
            nucleus_threshold=threshold,
            nucleus_background=_median(below),
            wholecell_threshold=WHOLECELL_FACTOR * _otsu_threshold(wholecell),
        )


def _centres() -> np.ndarray:
    return (np.arange(NORMALISED_BINS) + 0.5) / NORMALISED_BINS


def _otsu_threshold(counts: np.ndarray) -> float:
    """Otsu's threshold of a binned histogram: the upper edge of the lower class's last bin.

    With fewer than two occupied bins there is nothing to separate: the upper edge of the
    highest occupied bin (nothing lies above it), or 0 for an empty histogram.
    """
    occupied = np.flatnonzero(counts)
    if occupied.size < 2:
        return float((occupied[-1] + 1) / NORMALISED_BINS) if occupied.size else 0.0
    centres = _centres()
    weight_low = np.cumsum(counts)[:-1]
    weight_high = counts.sum() - weight_low
    mass_low = np.cumsum(counts * centres)[:-1]
    mass_high = (counts * centres).sum() - mass_low
    valid = (weight_low > 0) & (weight_high > 0)
    between = np.zeros(weight_low.size)
    between[valid] = weight_low[valid] * weight_high[valid] * (
        mass_low[valid] / weight_low[valid] - mass_high[valid] / weight_high[valid]) ** 2
    return float((int(np.argmax(between)) + 1) / NORMALISED_BINS)


def _median(counts: np.ndarray) -> float:
    """Centre of the bin holding the median of a binned histogram (0 when empty)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(counts), total / 2.0))
    return float(_centres()[index])
