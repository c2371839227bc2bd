"""Mesmer's preprocessing (percentile clip, rescale, CLAHE), whole-image and per window.

Whole-image functions, equal bit for bit to deepcell_toolbox 0.12.1 / deepcell 0.12.10 (with
scikit-image 0.25) in both supported numpy/scikit-image generations, because they never call
scikit-image and compute in explicitly typed numpy arithmetic:

* :func:`percentile_threshold` == ``deepcell_toolbox.processing.percentile_threshold``
* :func:`histogram_normalization` == ``deepcell_toolbox.processing.histogram_normalization``
* :func:`mesmer_preprocess` == ``deepcell.applications.mesmer.mesmer_preprocess``

Window functions (one code path: the whole-image functions call them with the whole image as
the window). Mesmer's preprocessing of a pixel depends on global statistics of the image and
on the CLAHE contextual regions around the pixel, so a window is computed from:

1. :class:`~codexdask.mesmer.normalisation.MesmerStatistics` of the whole image (clip value and
   clipped range per channel; see :mod:`codexdask.mesmer.normalisation`);
2. the global minimum and maximum of the un-normalised CLAHE levels, which
   ``equalize_adapthist`` rescales by at its end: one more pass, :func:`clahe_extrema` over a
   partition of the image, merged by :func:`combine_clahe_extrema`;
3. the raw pixels of :func:`context_box` (the window plus the CLAHE regions it touches, with
   scikit-image's reflection only at the image's true borders).

Engine flow for an image seen in windows::

    stats = finalize_statistics(...)                         # statistics passes
    plan = preprocess_plan(shape, stats, kernel_size=128)
    parts = [clahe_extrema(raw(plan.required_box(core)), plan.required_box(core), core, plan)
             for core in partition]                          # CLAHE range pass
    plan = plan.with_clahe_range(combine_clahe_extrema(parts))
    values = preprocess_window(raw(read), read, out_box, plan)   # read = plan.required_box(out)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from codexdask.errors import InputError
from codexdask.mesmer.clahe import clahe_required_box, clahe_window, grey_bins, resolve_kernel_size
from codexdask.mesmer.indexing import Box, check_inside, check_window, image_shape_2d
from codexdask.mesmer.normalisation import (
    DEFAULT_PERCENTILE,
    MesmerStatistics,
    whole_image_statistics,
)

#: Mesmer's CLAHE kernel size (``mesmer_preprocess`` default).
DEFAULT_KERNEL_SIZE = 128
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class PreprocessGeometry:
    """Where the preprocessing of a box reads, without the image's statistics.

    Attributes
    ----------
    image_shape : (int, int)
        ``(H, W)`` of the whole image.
    kernel : (int, int)
        CLAHE contextual region size.
    normalize : bool
        Whether CLAHE runs (else a box needs only its own pixels).
    """

    image_shape: tuple[int, int]
    kernel: tuple[int, int]
    normalize: bool = True

    def required_box(self, out_box: Box) -> Box:
        """Raw pixels needed to compute ``out_box`` (:func:`context_box`)."""
        check_inside(out_box, self.image_shape, "out_box")
        if not self.normalize:
            return out_box
        return clahe_required_box(out_box, self.image_shape, self.kernel)


def preprocess_geometry(image_shape: tuple[int, int],
                        kernel_size: int | tuple[int, int] | None = DEFAULT_KERNEL_SIZE,
                        normalize: bool = True) -> PreprocessGeometry:
    """The :class:`PreprocessGeometry` of an ``(H, W)`` image (``kernel_size`` as in
    :func:`preprocess_plan`)."""
    shape = image_shape_2d(image_shape)
    return PreprocessGeometry(shape, resolve_kernel_size(kernel_size, shape), normalize)


@dataclasses.dataclass(frozen=True)
class PreprocessPlan:
    """Everything global that :func:`preprocess_window` needs about one image.

    Attributes
    ----------
    image_shape : (int, int)
        ``(H, W)`` of the whole image.
    statistics : MesmerStatistics
        Clip and rescale statistics of the whole image.
    kernel : (int, int)
        CLAHE contextual region size.
    normalize : bool
        Apply the rescale and CLAHE (``normalize`` of ``mesmer_preprocess``); when False the
        window functions return the clipped pixels in their own dtype.
    clahe_range : numpy.ndarray or None
        ``(C, 2)`` int64 global minimum and maximum of the un-normalised CLAHE levels; None
        until the CLAHE range pass has run (see :meth:`with_clahe_range`).
    """

    image_shape: tuple[int, int]
    statistics: MesmerStatistics
    kernel: tuple[int, int]
    normalize: bool = True
    clahe_range: np.ndarray | None = None

    def required_box(self, out_box: Box) -> Box:
        """Raw pixels needed to compute ``out_box`` (:func:`context_box`)."""
        return PreprocessGeometry(self.image_shape, self.kernel, self.normalize).required_box(
            out_box)

    def with_clahe_range(self, extrema: np.ndarray) -> PreprocessPlan:
        """This plan with the global CLAHE extrema from :func:`combine_clahe_extrema`."""
        extrema = np.asarray(extrema, dtype=np.int64)
        if extrema.shape != (self.statistics.channels, 2):
            raise InputError(f"CLAHE extrema must have shape ({self.statistics.channels}, 2), "
                             f"got {extrema.shape}")
        return dataclasses.replace(self, clahe_range=extrema)


def preprocess_plan(image_shape: tuple[int, int], statistics: MesmerStatistics,
                    kernel_size: int | tuple[int, int] | None = DEFAULT_KERNEL_SIZE,
                    normalize: bool = True) -> PreprocessPlan:
    """Plan the preprocessing of an ``(H, W)`` image from its whole-image statistics.

    ``kernel_size`` None means scikit-image's default, 1/8 of each side.
    """
    shape = image_shape_2d(image_shape)
    stats = statistics
    if normalize:
        span = stats.rescale_high.astype(np.float64) - stats.rescale_low.astype(np.float64)
        if np.any(span > _FLOAT32_MAX):
            raise InputError("the clipped pixel range exceeds float32's range, where Mesmer's "
                             "float32 rescale overflows; scale the image down first")
    plan = PreprocessPlan(shape, stats, resolve_kernel_size(kernel_size, shape), normalize)
    if normalize and stats.uniform.all():
        plan = plan.with_clahe_range(np.zeros((stats.channels, 2), dtype=np.int64))
    return plan


def context_box(out_box: Box, image_shape: tuple[int, int],
                kernel_size: int | tuple[int, int] = DEFAULT_KERNEL_SIZE) -> Box:
    """Raw pixels needed to compute the clipped, rescaled and CLAHE-equalised ``out_box``."""
    shape = image_shape_2d(image_shape)
    check_inside(out_box, shape, "out_box")
    return clahe_required_box(out_box, shape, resolve_kernel_size(kernel_size, shape))


def _unit_values(clipped: np.ndarray, stats: MesmerStatistics, c: int) -> np.ndarray:
    """``rescale_intensity(clipped.astype(float32), out_range=(0, 1))`` with global extremes."""
    low, high = stats.rescale_low[c], stats.rescale_high[c]
    divisor = np.float32(float(high) - float(low))
    unit = clipped.astype(np.float32) - low
    unit /= divisor
    return unit


def _channel_bins(raw: np.ndarray, plan: PreprocessPlan, c: int) -> np.ndarray:
    """CLAHE grey bins (uint8) of one raw channel window."""
    stats = plan.statistics
    plane = raw[..., c]
    if stats.dtype.kind in "ui" and stats.dtype.itemsize <= 2:
        # Small integers: push every possible value through the pipeline once.
        info = np.iinfo(stats.dtype)
        values = np.arange(info.min, info.max + 1).astype(stats.dtype)
        table = grey_bins(_unit_values(stats.clip_channel(values, c), stats, c))
        return table[plane.astype(np.int64) - info.min]
    return grey_bins(_unit_values(stats.clip_channel(plane, c), stats, c))


def _checked(raw: np.ndarray, read_box: Box, out_box: Box, plan: PreprocessPlan) -> None:
    check_inside(read_box, plan.image_shape, "read_box")
    check_window(raw, read_box, plan.required_box(out_box), "raw")
    if raw.ndim != 3 or raw.shape[2] != plan.statistics.channels:
        raise InputError(f"raw must be (h, w, {plan.statistics.channels}), got {raw.shape}")
    if raw.dtype != plan.statistics.dtype:
        raise InputError(f"raw has dtype {raw.dtype} but the statistics were computed on "
                         f"{plan.statistics.dtype} pixels")


def _clahe_levels(raw: np.ndarray, read_box: Box, out_box: Box,
                  plan: PreprocessPlan) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised CLAHE levels of ``out_box`` and their per-channel extremes.

    Returns ``(h, w, C)`` uint16 levels (0 in constant channels) and ``(C, 2)`` int64
    ``[min, max]`` (0 for constant channels).
    """
    stats = plan.statistics
    levels = np.zeros(out_box.shape + (stats.channels,), dtype=np.uint16)
    extrema = np.zeros((stats.channels, 2), dtype=np.int64)
    for c in range(stats.channels):
        if not stats.uniform[c]:
            channel = clahe_window(_channel_bins(raw, plan, c), read_box, out_box,
                                   plan.image_shape, plan.kernel)
            levels[..., c] = channel
            extrema[c] = (channel.min(), channel.max())
    return levels, extrema


def _normalized(levels: np.ndarray, stats: MesmerStatistics,
                clahe_range: np.ndarray) -> np.ndarray:
    """``equalize_adapthist``'s final rescale by the global CLAHE range (float32 in [0, 1])."""
    out = np.zeros(levels.shape, dtype=np.float32)
    for c in range(stats.channels):
        if stats.uniform[c]:
            continue  # deepcell normalises a constant channel as zeros
        channel = levels[..., c].astype(np.float32)
        low, high = (float(v) for v in clahe_range[c])
        if low != high:
            channel -= np.float32(low)
            channel /= np.float32(high - low)
        else:
            np.clip(channel, 0.0, 1.0, out=channel)
        out[..., c] = channel
    return out


def clahe_extrema(raw: np.ndarray, read_box: Box, out_box: Box,
                  plan: PreprocessPlan) -> np.ndarray:
    """Per-channel minimum and maximum of the un-normalised CLAHE levels over ``out_box``.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(h, w, C)`` raw pixels over ``read_box`` (which holds ``plan.required_box(out_box)``).
    read_box, out_box : Box
        Boxes in image coordinates.
    plan : PreprocessPlan
        The image's plan (its ``clahe_range`` is not needed yet).

    Returns
    -------
    numpy.ndarray
        ``(C, 2)`` int64 ``[min, max]``; zeros for channels Mesmer leaves all zero. Merge the
        results of boxes partitioning the image with :func:`combine_clahe_extrema`.
    """
    _checked(raw, read_box, out_box, plan)
    return _clahe_levels(raw, read_box, out_box, plan)[1]


def combine_clahe_extrema(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Merge :func:`clahe_extrema` results of boxes that together cover the image."""
    if len(parts) == 0:
        raise InputError("combine_clahe_extrema needs at least one part")
    stacked = np.stack([np.asarray(p, dtype=np.int64) for p in parts])
    return np.stack([stacked[:, :, 0].min(axis=0), stacked[:, :, 1].max(axis=0)], axis=1)


def preprocess_window(raw: np.ndarray, read_box: Box, out_box: Box,
                      plan: PreprocessPlan) -> np.ndarray:
    """Mesmer-preprocessed pixels of ``out_box``, equal to ``mesmer_preprocess(image)[out_box]``.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(h, w, C)`` raw pixels over ``read_box``, which must hold ``plan.required_box(out_box)``.
    read_box, out_box : Box
        Boxes in image coordinates.
    plan : PreprocessPlan
        The image's plan, with its CLAHE range set when ``plan.normalize``.

    Returns
    -------
    numpy.ndarray
        ``(out_h, out_w, C)`` float32 in [0, 1] (the clipped raw dtype when not normalising).
    """
    _checked(raw, read_box, out_box, plan)
    if not plan.normalize:
        return plan.statistics.clip(raw[out_box.slices(read_box)])
    if plan.clahe_range is None:
        raise InputError("the plan has no CLAHE range yet: run clahe_extrema over the image "
                         "and pass combine_clahe_extrema(...) to plan.with_clahe_range")
    levels = _clahe_levels(raw, read_box, out_box, plan)[0]
    return _normalized(levels, plan.statistics, plan.clahe_range)


def _as_batch(image: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    if image.ndim == 3:
        return image[None], True
    if image.ndim == 4:
        return image, False
    raise InputError(f"{name} must be (H, W, C) or (B, H, W, C), got shape {image.shape}")


def mesmer_preprocess(image: np.ndarray, threshold: bool = True,
                      percentile: float = DEFAULT_PERCENTILE, normalize: bool = True,
                      kernel_size: int | tuple[int, int] | None = DEFAULT_KERNEL_SIZE,
                      ) -> np.ndarray:
    """Mesmer's preprocessing of whole images.

    Equal bit for bit to ``deepcell.applications.mesmer.mesmer_preprocess(image,
    threshold=..., percentile=..., normalize=..., kernel_size=...)``: per image and channel,
    clip at the percentile of the non-zero pixels, cast to float32, rescale to [0, 1] and
    equalise with CLAHE; constant channels become zeros.

    Parameters
    ----------
    image : numpy.ndarray
        ``(B, H, W, C)`` or ``(H, W, C)`` pixels (integers or float16/32/64, finite).
    threshold, percentile : bool, float
        Clip at this percentile of the non-zero pixels of each channel.
    normalize, kernel_size : bool, int or (int, int) or None
        Rescale and equalise with CLAHE regions of this size (None: 1/8 of each side).

    Returns
    -------
    numpy.ndarray
        Same shape; float32 when ``normalize``, else the input dtype.
    """
    batch, single = _as_batch(image, "image")
    outputs = []
    for item in batch:
        stats = whole_image_statistics(item, percentile if threshold else None)
        plan = preprocess_plan(item.shape[:2], stats, kernel_size, normalize)
        whole = Box.whole(plan.image_shape)
        if not normalize:
            outputs.append(preprocess_window(item, whole, whole, plan))
            continue
        # The window path, with the CLAHE levels computed once for both passes.
        _checked(item, whole, whole, plan)
        levels, extrema = _clahe_levels(item, whole, whole, plan)
        clahe_range = extrema if plan.clahe_range is None else plan.clahe_range
        outputs.append(_normalized(levels, stats, clahe_range))
    out = np.stack(outputs)
    return out[0] if single else out


def percentile_threshold(image: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Clip every image and channel at the percentile of its non-zero pixels.

    Equal to ``deepcell_toolbox.processing.percentile_threshold``: same dtype; pixels above
    ``numpy.percentile(non-zero, percentile)`` take that value cast to the dtype (integers
    truncate); all-zero channels stay zero. ``image`` is ``(B, H, W, C)`` or ``(H, W, C)``.
    """
    return mesmer_preprocess(image, threshold=True, percentile=percentile, normalize=False)


def histogram_normalization(image: np.ndarray,
                            kernel_size: int | tuple[int, int] | None = None) -> np.ndarray:
    """CLAHE normalisation of every image and channel.

    Equal to ``deepcell_toolbox.processing.histogram_normalization``: cast to float32, constant
    channels become zeros, the others are rescaled to [0, 1] and equalised with
    ``skimage.exposure.equalize_adapthist(kernel_size=kernel_size)`` (None: 1/8 of each side).
    ``image`` is ``(B, H, W, C)`` or ``(H, W, C)``; the result is float32.
    """
    batch, single = _as_batch(image, "image")
    as_float = batch.astype(np.float32)
    out = mesmer_preprocess(as_float, threshold=False, normalize=True, kernel_size=kernel_size)
    return out[0] if single else out
