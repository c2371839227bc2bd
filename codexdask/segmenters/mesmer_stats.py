"""Mesmer's image-wide statistics of a logical patch, gathered exactly in passes over boxes.

Mesmer computes three things per image before any pixel can be preprocessed: the minimum and
maximum of the raw image (the clip range of its resize, when ``image_mpp`` != 0.5), the clip
value and clipped range of each channel of the resized image (the 99.9th percentile of its
non-zero pixels, :mod:`codexdask.mesmer.normalisation`), and the range of the un-normalised CLAHE
levels (:func:`codexdask.mesmer.preprocess.clahe_extrema`). :class:`MesmerImageStatistics`
gathers them in that order, each pass over boxes of the image at model resolution (boxes in
resized coordinates; their raw pixels come from :func:`~codexdask.mesmer.resize.
resize_required_box`), so every window of the patch is preprocessed as the whole patch would be.

Passes: one for the raw range (resizing only), one to four for the percentile (one for pixels of
up to 16 bits; see :mod:`codexdask.statistics.exact`), one for the CLAHE range (skipped when CLAHE
is off or every channel is constant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from codexdask.boxes import Box
from codexdask.errors import StateError
from codexdask.mesmer.normalisation import MesmerStatistics, finalize_statistics
from codexdask.mesmer.preprocess import (
    DEFAULT_KERNEL_SIZE,
    PreprocessPlan,
    clahe_extrema,
    combine_clahe_extrema,
    preprocess_plan,
)
from codexdask.mesmer.resize import MODEL_MPP, resize_required_box, resize_window, resized_shape
from codexdask.statistics.exact import DEFAULT_PERCENTILE, combine_statistics, image_statistics
from codexdask.statistics.passes import ImageStatistics, NonZeroPercentiles

__all__ = ["MesmerImageStatistics"]

KernelSize = int | tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class MesmerImageStatistics(ImageStatistics):
    """What Mesmer computes per image, gathered over a whole (logical) image.

    Attributes
    ----------
    image_mpp : float
        Microns per pixel of the raw image (Mesmer resizes to 0.5).
    percentile : float or None
        Clip percentile of the non-zero pixels (None: no clipping, ``threshold=False``).
    kernel_size : int, (int, int) or None
        CLAHE contextual region size (None: 1/8 of each side).
    normalize : bool
        Rescale and CLAHE (``normalize`` of ``mesmer_preprocess``).
    value_range : (scalar, scalar) or None
        Minimum and maximum of the raw image over all channels (resizing only), once measured.
    percentiles : NonZeroPercentiles or None
        The percentile passes over the resized image, once started.
    stats : MesmerStatistics or None
        Clip and rescale statistics of the resized image, once known.
    clahe_range : numpy.ndarray or None
        ``(C, 2)`` int64 range of the un-normalised CLAHE levels, once known.
    """

    image_mpp: float = MODEL_MPP
    percentile: float | None = DEFAULT_PERCENTILE
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE
    normalize: bool = True
    value_range: tuple[Any, Any] | None = None
    percentiles: NonZeroPercentiles | None = None
    stats: MesmerStatistics | None = None
    clahe_range: np.ndarray | None = None

    @property
    def resizes(self) -> bool:
        """Whether Mesmer resizes the image (``image_mpp`` != 0.5)."""
        return self.image_mpp != MODEL_MPP

    @property
    def stage(self) -> str:
        """The next pass: ``"range"``, ``"percentile"``, ``"clahe"``, or ``"done"``."""
        if self.resizes and self.value_range is None:
            return "range"
        if self.stats is None:
            return "percentile"
        if self.normalize and self.clahe_range is None:
            return "clahe"
        return "done"

    @property
    def done(self) -> bool:
        return self.stage == "done"

    def model_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Size of the image the network sees, for a raw image of ``shape``."""
        return resized_shape(shape, self.image_mpp)

    def plan(self, shape: tuple[int, int]) -> PreprocessPlan:
        """The preprocessing plan of a raw image of ``shape`` (CLAHE range set when known)."""
        if self.stats is None:
            raise StateError("Mesmer's clip statistics are not gathered yet: run the passes "
                             "first (gather_statistics)")
        plan = preprocess_plan(self.model_shape(shape), self.stats, self.kernel_size,
                               self.normalize)
        if self.clahe_range is not None and plan.normalize:
            plan = plan.with_clahe_range(self.clahe_range)
        return plan

    # -- passes ---------------------------------------------------------------------------------

    def boxes(self, shape: tuple[int, int]) -> list[Box]:
        """Raw boxes for the range pass, boxes at model resolution for the others."""
        return super().boxes(shape if self.stage == "range" else self.model_shape(shape))

    def read_box(self, box: Box, shape: tuple[int, int]) -> Box:
        stage = self.stage
        if stage == "range":
            return box
        needed = self.plan(shape).required_box(box) if stage == "clahe" else box
        if not self.resizes:
            return needed
        return resize_required_box(needed, shape, self.model_shape(shape))

    def measure(self, raw: np.ndarray, read_box: Box, box: Box, shape: tuple[int, int]) -> Any:
        stage = self.stage
        if stage == "range":
            part = raw[box.slices(read_box)]
            return part.min(), part.max()
        if stage == "percentile":
            values = self._model_pixels(raw, read_box, box, shape)
            if self.percentile is None:
                return image_statistics(values)
            return self._percentiles().measure(values, box, box, self.model_shape(shape))
        plan = self.plan(shape)
        needed = plan.required_box(box)
        return clahe_extrema(self._model_pixels(raw, read_box, needed, shape), needed, box, plan)

    def combine(self, partials: Sequence[Any]) -> Any:
        stage = self.stage
        if stage == "range":
            return min(p[0] for p in partials), max(p[1] for p in partials)
        if stage == "percentile":
            return combine_statistics(partials)
        return combine_clahe_extrema(partials)

    def advance(self, combined: Any) -> MesmerImageStatistics:
        stage = self.stage
        if stage == "range":
            return dataclasses.replace(self, value_range=tuple(combined))
        if stage == "clahe":
            return dataclasses.replace(self, clahe_range=np.asarray(combined, np.int64))
        if self.percentile is None:
            return self._with_stats(finalize_statistics(combined, None))
        percentiles = self._percentiles().advance(combined)
        if not percentiles.done:
            return dataclasses.replace(self, percentiles=percentiles)
        return self._with_stats(finalize_statistics(combined, self.percentile))

    def _percentiles(self) -> NonZeroPercentiles:
        if self.percentiles is not None:
            return self.percentiles
        return NonZeroPercentiles(float(DEFAULT_PERCENTILE if self.percentile is None
                                        else self.percentile))

    def _with_stats(self, stats: MesmerStatistics) -> MesmerImageStatistics:
        state = dataclasses.replace(self, stats=stats)
        if self.normalize and stats.uniform.all():  # nothing to equalise: every channel is 0
            state = dataclasses.replace(state, clahe_range=np.zeros((stats.channels, 2),
                                                                    np.int64))
        return state

    def _model_pixels(self, raw: np.ndarray, read_box: Box, out_box: Box,
                      shape: tuple[int, int]) -> np.ndarray:
        """Pixels of ``out_box`` of the image at model resolution, from raw pixels of
        ``read_box``."""
        if not self.resizes:
            return raw[out_box.slices(read_box)]
        if self.value_range is None:
            raise StateError("the raw value range must be measured before resizing")
        return resize_window(raw, read_box, out_box, shape, self.model_shape(shape),
                             self.value_range)
