"""Mesmer's image-wide statistics: the clip value and the clipped range of every channel.

Mesmer's preprocessing depends on three numbers per channel of the image it is given: the clip
value ``numpy.percentile(non-zero pixels, 99.9)`` and the minimum and maximum of the clipped
channel (the range ``rescale_intensity`` maps to [0, 1]). They come exactly from chunks of the
image through :mod:`codexdask.statistics.exact` (``image_statistics`` on every chunk,
``combine_statistics``, ``refinement_query`` passes while needed) and
:func:`finalize_statistics` turns the last pass into :class:`MesmerStatistics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from codexdask.statistics.exact import (
    DEFAULT_PERCENTILE,
    StatisticsPartial,
    image_statistics,
    nonzero_percentiles,
    refinement_query,
)

__all__ = ["DEFAULT_PERCENTILE", "MesmerStatistics", "finalize_statistics",
           "whole_image_statistics"]


@dataclasses.dataclass(frozen=True)
class MesmerStatistics:
    """Per-channel statistics that Mesmer's preprocessing takes from a whole image.

    Attributes
    ----------
    dtype : numpy.dtype
        Pixel dtype.
    percentile : float or None
        The clip percentile; None when clipping is off (``threshold=False``).
    nonzero : numpy.ndarray
        ``(C,)`` number of non-zero pixels.
    minimum, maximum : numpy.ndarray
        ``(C,)`` extremes of the raw channel.
    clip_value : numpy.ndarray
        ``(C,)`` float64 ``numpy.percentile(non-zero pixels, percentile)`` as numpy 1.26
        computes it (NaN where the channel is all zero or clipping is off).
    clipped_minimum, clipped_maximum : numpy.ndarray
        ``(C,)`` extremes of the clipped channel, in the pixel dtype.
    """

    dtype: np.dtype
    percentile: float | None
    nonzero: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    clip_value: np.ndarray
    clipped_minimum: np.ndarray
    clipped_maximum: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.nonzero.shape[0])

    @property
    def rescale_low(self) -> np.ndarray:
        """``(C,)`` float32 minimum of the clipped channel after the cast to float32."""
        return self.clipped_minimum.astype(np.float32)

    @property
    def rescale_high(self) -> np.ndarray:
        """``(C,)`` float32 maximum of the clipped channel after the cast to float32."""
        return self.clipped_maximum.astype(np.float32)

    @property
    def uniform(self) -> np.ndarray:
        """``(C,)`` bool: the clipped float32 channel is constant (Mesmer makes it all zero)."""
        return self.rescale_low == self.rescale_high

    def clip(self, values: np.ndarray) -> np.ndarray:
        """Clip ``(..., C)`` pixels as ``percentile_threshold`` does (same dtype, a new array)."""
        out = np.array(values, copy=True)
        for c in range(self.channels):
            out[..., c] = self.clip_channel(out[..., c], c)
        return out

    def clip_channel(self, values: np.ndarray, c: int) -> np.ndarray:
        """Clip pixels of channel ``c`` (any shape, the pixel dtype).

        Pixels above the clip value take the clip value cast to the pixel dtype (truncated for
        integers); a channel without non-zero pixels is returned as it is. Float pixels are
        compared with the cast clip value, as numpy 1.26 compares a float32 array with a
        float64 scalar.
        """
        if np.isnan(self.clip_value[c]):
            return values
        return np.where(values > self._limit(c), self._cast_clip(c), values)

    def _cast_clip(self, c: int) -> Any:
        return np.asarray(self.clip_value[c]).astype(self.dtype)[()]

    def _limit(self, c: int) -> Any:
        return self._cast_clip(c) if self.dtype.kind == "f" else self.clip_value[c]


def finalize_statistics(partial: StatisticsPartial,
                        percentile: float | None = DEFAULT_PERCENTILE) -> MesmerStatistics:
    """Turn the last pass's combined partial into :class:`MesmerStatistics`.

    Parameters
    ----------
    partial : StatisticsPartial
        The combined partial of the whole image from the last pass.
    percentile : float or None
        Clip percentile in [0, 100]; None turns clipping off (``threshold=False``), in which
        case one first pass is enough for any dtype.

    Raises
    ------
    InputError
        If another pass over the image is needed (``refinement_query``).
    """
    source = partial.query if partial.query is not None else partial
    nonzero, minimum, maximum = source.nonzero, source.minimum, source.maximum
    clip_value = (np.full(nonzero.shape, np.nan) if percentile is None
                  else nonzero_percentiles(partial, percentile))
    stats = MesmerStatistics(
        dtype=partial.dtype, percentile=None if percentile is None else float(percentile),
        nonzero=nonzero, minimum=minimum, maximum=maximum, clip_value=clip_value,
        clipped_minimum=minimum.copy(), clipped_maximum=maximum.copy())
    for c in range(stats.channels):
        if np.isnan(clip_value[c]):
            continue
        limit, cast = stats._limit(c), stats._cast_clip(c)
        if minimum[c] > limit:            # every pixel is clipped
            stats.clipped_minimum[c] = stats.clipped_maximum[c] = cast
        elif maximum[c] > limit:          # the brightest pixels are clipped
            stats.clipped_minimum[c] = min(minimum[c], cast)
            stats.clipped_maximum[c] = cast
    return stats


def whole_image_statistics(image: np.ndarray,
                           percentile: float | None = DEFAULT_PERCENTILE) -> MesmerStatistics:
    """:class:`MesmerStatistics` of an in-memory ``(H, W, C)`` image (all passes, one chunk)."""
    partial = image_statistics(image)
    if percentile is not None:
        while (query := refinement_query(partial, percentile)) is not None:
            partial = image_statistics(image, query)
    return finalize_statistics(partial, percentile)
