"""Deep watershed: instance labels from a network's maxima and interior maps.

Same signature, defaults, steps and labels as ``deepcell_toolbox.deep_watershed.deep_watershed``
(deepcell-toolbox 0.12), with this package's kernels in place of scikit-image's for the h-maxima,
labelling, flood, small-object removal, hole filling and relabelling. Per image of the batch:

1. smooth both maps like ``scipy.ndimage.gaussian_filter`` (bit for bit, see ``smoothing``);
2. optionally dilate the interior map (``pixel_expansion``; scikit-image's ``dilation``);
3. markers: h-maxima of the maxima map with a disk of ``radius`` (or scikit-image's
   ``peak_local_max`` for ``maxima_algorithm="peak_local_max"``), 8-connected components;
4. watershed of ``-interior`` from the markers inside ``interior > interior_threshold``;
5. optionally erode label edges, drop objects under ``small_objects_threshold`` pixels, fill holes
   under ``fill_holes_threshold`` pixels, then number the labels 1..N in marker order.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess.flood import _MAX_PIXELS, flood
from codexdask.postprocess.labels import (
    _apply_map,
    _count_pixels,
    _fill_holes_in_place,
    _label_kernel,
    erode_edges,
    remove_small_objects,
)
from codexdask.postprocess.maxima import h_maxima
from codexdask.postprocess.smoothing import gaussian_filter

__all__ = ["STAGES", "deep_watershed", "warm_up"]

#: Stage names of the ``timings`` dictionary :func:`deep_watershed` can fill.
STAGES = ("smoothing", "h_maxima", "labelling", "watershed", "small_objects", "holes", "relabel")

_DEPRECATED = {"min_distance": "radius", "distance_threshold": "interior_threshold",
               "detection_threshold": "maxima_threshold"}


def deep_watershed(
    outputs: Sequence[np.ndarray],
    radius: int = 10,
    maxima_threshold: float = 0.1,
    interior_threshold: float = 0.01,
    maxima_smooth: float = 0,
    interior_smooth: float = 1,
    maxima_index: int = 0,
    interior_index: int = -1,
    label_erosion: int = 0,
    small_objects_threshold: float = 0,
    fill_holes_threshold: float = 0,
    pixel_expansion: int | None = None,
    maxima_algorithm: str = "h_maxima",
    timings: dict[str, float] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Label objects by a marker watershed of a network's interior map, seeded at its maxima.

    Returns the same labels (values, numbering and dtype) as deepcell-toolbox 0.12's
    ``deep_watershed`` with the same arguments, for 2-D (rank-4) outputs without NaN.

    Parameters
    ----------
    outputs : sequence of numpy.ndarray
        The network's outputs; ``outputs[maxima_index]`` and ``outputs[interior_index]`` are
        ``(B, H, W, C)`` real maps (channel 0 is used), e.g. Mesmer's inner distance and
        interior probability.
    radius : int
        Radius of the disk in which a maximum must stand ``maxima_threshold`` above the rest.
    maxima_threshold : float
        Height ``h`` of the h-maxima (or ``threshold_abs`` of ``peak_local_max``).
    interior_threshold : float
        Pixels with smoothed interior above it are flooded.
    maxima_smooth, interior_smooth : float
        Gaussian sigmas applied to the two maps (0: none).
    maxima_index, interior_index : int
        Positions of the two maps in ``outputs``.
    label_erosion : int
        Boundary layers removed from every label.
    small_objects_threshold : int
        Objects with fewer pixels are removed.
    fill_holes_threshold : int
        Holes with fewer pixels inside an object are filled (deepcell's ``fill_holes`` rule).
    pixel_expansion : int, optional
        Grey dilation of the interior map by a ``2 * pixel_expansion + 1`` square.
    maxima_algorithm : {"h_maxima", "peak_local_max"}
        How markers are found (``peak_local_max`` runs scikit-image's own function).
    timings : dict, optional
        If given, CPU seconds of the calling thread per stage (keys :data:`STAGES`,
        ``time.thread_time``) are added to it.
    **kwargs
        deepcell's deprecated ``min_distance``, ``distance_threshold`` and
        ``detection_threshold`` (each replaces its new name, with a ``DeprecationWarning``) and
        ``exclude_border`` (for ``peak_local_max``, default False).

    Returns
    -------
    numpy.ndarray
        ``(B, H, W, 1)`` ``intp`` labels, 1..N per image in the order of their markers.

    Raises
    ------
    InputError
        ``outputs`` without the two maps, maps of different shapes, not rank 4 (deepcell's
        rank-5 3-D mode is not supported), not real, or with NaN.
    ConfigError
        An unknown ``maxima_algorithm`` or keyword, or ``maxima_threshold == 0`` for h-maxima.

    Notes
    -----
    Deliberate differences from deepcell: no warning that h-maxima is slow above 5000²
    (it is not, here); unknown keywords raise instead of being ignored; an empty batch returns
    an empty array instead of raising.
    """
    try:
        maximas = outputs[maxima_index]
        interiors = outputs[interior_index]
    except (TypeError, KeyError, IndexError) as error:
        raise InputError("outputs must be a list of at least two numpy arrays of equal shape "
                         f"(maxima, interior); indexing it failed: {error}") from None
    if maxima_algorithm not in ("h_maxima", "peak_local_max"):
        raise ConfigError(f"maxima_algorithm must be 'h_maxima' or 'peak_local_max', "
                          f"got {maxima_algorithm!r}")
    exclude_border = kwargs.pop("exclude_border", False)
    values: dict[str, Any] = {"radius": radius, "interior_threshold": interior_threshold,
              "maxima_threshold": maxima_threshold}
    for old, new in _DEPRECATED.items():
        value = kwargs.pop(old, None)
        if value is not None:
            values[new] = value
            warnings.warn(f"`{old}` is deprecated in favor of `{new}`; the value passed for "
                          f"`{old}` is used", DeprecationWarning, stacklevel=2)
    if kwargs:
        raise ConfigError(f"unknown deep_watershed keyword(s): {sorted(kwargs)}")
    radius = values["radius"]
    interior_threshold = values["interior_threshold"]
    maxima_threshold = values["maxima_threshold"]

    maximas = np.asarray(maximas)
    interiors = np.asarray(interiors)
    if maximas.shape[:-1] != interiors.shape[:-1]:
        raise InputError(f"maxima {maximas.shape} and interior {interiors.shape} maps must have "
                         "the same shape (channels aside)")
    if maximas.ndim != 4:
        raise InputError(f"maps must be rank 4 (batch, height, width, channels), got shape "
                         f"{maximas.shape}; 3-D (rank-5) data is not supported")
    for name, maps in (("maxima", maximas), ("interior", interiors)):
        if maps.dtype.kind not in "iuf" or maps.shape[-1] == 0:
            raise InputError(f"the {name} map must be real with at least one channel, got "
                             f"dtype {maps.dtype} and shape {maps.shape}")
    if maximas.shape[1] * maximas.shape[2] > _MAX_PIXELS:
        raise InputError(f"images of {maximas.shape[1]}x{maximas.shape[2]} pixels are too large "
                         "for the exact flood; post-process them in tiles")

    clock = _Clock(timings)
    labels_out = np.zeros(maximas.shape[:3] + (1,), np.intp)
    for index in range(maximas.shape[0]):
        clock.start()
        maxima = gaussian_filter(maximas[index, ..., 0], maxima_smooth)
        interior = gaussian_filter(interiors[index, ..., 0], interior_smooth)
        if pixel_expansion:
            from skimage.morphology import dilation

            side = pixel_expansion * 2 + 1
            interior = dilation(interior, footprint=np.ones((side, side), np.uint8))
        for name, smoothed in (("maxima", maxima), ("interior", interior)):
            if smoothed.dtype.kind == "f" and np.isnan(smoothed).any():
                raise InputError(f"the {name} map contains NaN; replace it (np.nan_to_num)")
        clock.stop("smoothing")

        if maxima_algorithm == "peak_local_max":
            from skimage.feature import peak_local_max

            peaks = peak_local_max(maxima, min_distance=radius, threshold_abs=maxima_threshold,
                                   exclude_border=exclude_border)
            markers = np.zeros(maxima.shape, np.uint8)
            markers[tuple(peaks.T)] = 1
        else:
            from skimage.morphology import disk

            markers = h_maxima(maxima, maxima_threshold, footprint=disk(radius))
        clock.stop("h_maxima")
        components = np.empty(markers.shape, np.int32)  # what label() numbers, in int32
        _label_kernel(markers, True, components)
        del markers, maxima
        clock.stop("labelling")

        labels = flood(interior, components, interior > interior_threshold, 1, negate=True,
                       out_dtype=np.int32)
        del components
        clock.stop("watershed")
        if label_erosion:
            labels = erode_edges(labels, label_erosion)
        if small_objects_threshold:
            remove_small_objects(labels, small_objects_threshold, out=labels)
        clock.stop("small_objects")
        if fill_holes_threshold > 0:
            _fill_holes_in_place(labels, float(fill_holes_threshold), False)
        clock.stop("holes")
        _relabel_into(labels, labels_out[index, ..., 0])
        clock.stop("relabel")
    return labels_out


def warm_up() -> float:
    """Compile, or load from numba's on-disk cache, what :func:`deep_watershed` runs on float32
    and float64 maps; return the seconds it took.

    A cold compile takes several seconds, a cache load well under one. Call it once per worker
    process (e.g. where the Mesmer model is loaded) so the first patch is not slowed down.
    """
    start = time.perf_counter()
    yy, xx = np.mgrid[:24, :24]
    blob = np.exp(-((yy - 11.5) ** 2 + (xx - 11.5) ** 2) / 30.0)
    for dtype in (np.float32, np.float64):
        maps = blob.astype(dtype)[None, ..., None]
        deep_watershed([maps, maps], radius=2, maxima_threshold=0.075, interior_threshold=0.2,
                       interior_smooth=2, small_objects_threshold=15, fill_holes_threshold=15)
    return time.perf_counter() - start


def _relabel_into(labels: np.ndarray, out: np.ndarray) -> None:
    """Write ``labels`` renumbered 1..N in increasing order (0 kept) into ``out``."""
    counts = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    _count_pixels(labels, counts)
    forward = np.zeros(counts.size, out.dtype)
    present = np.flatnonzero(counts[1:]) + 1
    forward[present] = np.arange(1, present.size + 1)
    _apply_map(labels, forward, out)


class _Clock:
    """Adds the seconds between consecutive ``stop`` calls to a timings dict (if any)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.last = 0.0

    def start(self) -> None:
        if self.timings is not None:
            self.last = time.thread_time()

    def stop(self, stage: str) -> None:
        if self.timings is not None:
            now = time.thread_time()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now
