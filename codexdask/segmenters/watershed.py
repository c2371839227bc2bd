"""A classical CPU segmenter: nuclei by threshold and distance-transform watershed, cells by a
watershed of the whole-cell channel seeded with the nuclei.

It has Mesmer's contract (``(B, H, W, 2)`` nucleus + whole-cell in, ``(B, H, W, 2)`` uint32
whole-cell + nucleus labels out) and needs only NumPy, SciPy and scikit-image, so the demo and
the tests run anywhere. Sizes are physical (µm) and converted to pixels with ``image_mpp``.

Image-wide levels (:mod:`.watershed_stats`) are computed first, over the whole image or, for a
logical patch segmented block by block, over the whole patch: each channel's scale (the 99.9th
percentile of its positive pixels), Otsu's threshold of the normalised nucleus values (never
below ``min_nucleus_contrast``) with the median of the values below it, and 0.3 × Otsu's
threshold of the normalised whole-cell values. Everything else is local, so a window with a halo
gives the one-image result for the objects it owns.

1. ``infer`` (cheap): each channel is divided by its scale and clipped to [0, 1].
2. Nuclei (``postprocess``): Gaussian smoothing; foreground = above the nucleus threshold, or
   above the local mean and half that threshold (dim nuclei beside bright ones); holes filled.
   Touching nuclei are split by a watershed of the distance transform seeded at its peaks (at
   least 0.6 nucleus radius apart). Each nucleus is then trimmed at half its own peak height above
   the background (a full-width-at-half-maximum outline, the same for dim and bright nuclei);
   nuclei below ``min_nucleus_area_um2`` go.
3. Cells: the foreground is every pixel within ``max_expansion_um`` of a nucleus that carries
   whole-cell signal (above the whole-cell threshold, small gaps closed) or that this signal
   encloses (holes no larger than a cell). A watershed grows each nucleus over that foreground,
   on an elevation of whole-cell signal (membranes are ridges) plus distance to the nucleus
   (dark or uniformly stained gaps are split evenly). Without any whole-cell signal in the image,
   cells are their nuclei plus a 1 µm rim.

Cell ``k`` contains nucleus ``k``; both compartments are labelled 1..K. An all-zero patch gives
all-zero labels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_local
from skimage.segmentation import relabel_sequential

from codexdask.errors import ConfigError
from codexdask.postprocess import gaussian_filter, watershed
from codexdask.segmenters.base import MemoryEstimate, Segmenter, WindowInput, check_batch
from codexdask.segmenters.watershed_stats import WatershedLevels, WatershedStatistics, normalise
from codexdask.statistics.passes import gather_statistics

#: (top, bottom, left, right): whether each edge of an image cuts its logical patch.
Edges = tuple[bool, bool, bool, bool]
#: The edges of a whole image: none is cut.
NO_CUT: Edges = (False, False, False, False)

# Host memory per pixel of a patch: postprocess raised peak RSS by about 80 bytes/pixel on 1024²
# and 2048² synthetic patches; add the input (up to 16 bytes/pixel for float64) and the float32
# maps (8), then a 1.5x margin.
_HOST_BYTES_PER_PIXEL = 160
#: Default side of the compute blocks of a logical patch, in pixels.
BLOCK_SIZE = 1536
# Dim nuclei must exceed this fraction of the global threshold (and their local mean).
_LOCAL_FLOOR = 0.5
# Weight of the distance to the nucleus (0 at the nucleus, 1 at max_expansion_um) in the cell
# watershed elevation, against whole-cell signal in [0, 1].
_DISTANCE_WEIGHT = 1.0


@dataclasses.dataclass(frozen=True)
class WatershedMaps:
    """Output of :meth:`WatershedSegmenter.infer`.

    Attributes
    ----------
    maps : numpy.ndarray
        ``(B, H, W, 2)`` float32 normalised nucleus and whole-cell channels in [0, 1].
    image_mpp : float
        Pixel size in µm.
    levels : tuple of WatershedLevels
        The image-wide levels of each image (of its logical patch, for a window).
    cut_edges : tuple of (bool, bool, bool, bool)
        Per image, whether its top, bottom, left and right edges cut the logical patch (a
        window's edges inside the patch). Regions touching a cut edge continue beyond it, so
        their size is unknown: such holes are never filled and such objects never removed.
    """

    maps: np.ndarray
    image_mpp: float
    levels: tuple[WatershedLevels, ...]
    cut_edges: tuple[Edges, ...]


class WatershedSegmenter(Segmenter):
    """Offline nucleus + whole-cell segmentation by seeded watershed (see the module docstring).

    Parameters
    ----------
    nucleus_diameter_um : float
        Typical nucleus diameter: sets the distance between seeds of touching nuclei and the
        window of the local threshold.
    min_nucleus_area_um2 : float
        Nuclei (and so cells) smaller than this are dropped.
    max_expansion_um : float
        How far a cell may extend beyond its nucleus (QuPath's default cell expansion is 5 µm).
    smoothing_um : float
        Standard deviation of the Gaussian smoothing of both channels (0 = none).
    min_nucleus_contrast : float
        Lowest nucleus threshold on the normalised [0, 1] scale; keeps Otsu from turning pure
        background noise into nuclei.
    """

    name = "watershed"
    wants_gpu = False

    def __init__(
        self,
        *,
        nucleus_diameter_um: float = 6.0,
        min_nucleus_area_um2: float = 5.0,
        max_expansion_um: float = 4.0,
        smoothing_um: float = 0.5,
        min_nucleus_contrast: float = 0.1,
    ) -> None:
        positive = {
            "nucleus_diameter_um": nucleus_diameter_um,
            "max_expansion_um": max_expansion_um,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"watershed option {key} must be > 0, got {value}")
        non_negative = {"min_nucleus_area_um2": min_nucleus_area_um2, "smoothing_um": smoothing_um}
        for key, value in non_negative.items():
            if not value >= 0:
                raise ConfigError(f"watershed option {key} must be >= 0, got {value}")
        if not 0 <= min_nucleus_contrast < 1:
            raise ConfigError(
                "watershed option min_nucleus_contrast must be in [0, 1), "
                f"got {min_nucleus_contrast}"
            )
        self.nucleus_diameter_um = float(nucleus_diameter_um)
        self.min_nucleus_area_um2 = float(min_nucleus_area_um2)
        self.max_expansion_um = float(max_expansion_um)
        self.smoothing_um = float(smoothing_um)
        self.min_nucleus_contrast = float(min_nucleus_contrast)

    def __repr__(self) -> str:
        return (
            f"WatershedSegmenter(nucleus_diameter_um={self.nucleus_diameter_um}, "
            f"min_nucleus_area_um2={self.min_nucleus_area_um2}, "
            f"max_expansion_um={self.max_expansion_um}, smoothing_um={self.smoothing_um}, "
            f"min_nucleus_contrast={self.min_nucleus_contrast})"
        )

    def infer(self, batch: np.ndarray, image_mpp: float) -> WatershedMaps:
        """Normalise ``batch`` ``(B, H, W, 2)`` (nucleus, whole-cell; any numeric dtype).

        Returns
        -------
        WatershedMaps
            ``maps`` ``(B, H, W, 2)`` float32 in [0, 1], per image and channel.
        """
        batch = check_batch(batch)
        if not image_mpp > 0:
            raise ConfigError(f"image_mpp must be > 0 µm per pixel, got {image_mpp}")
        levels = tuple(
            self.image_levels(image) for image in batch
        )
        return self.normalise(batch, levels, image_mpp)

    def statistics(self, image_mpp: float) -> WatershedStatistics:
        """The image-wide levels this segmenter needs, to be gathered over a whole image."""
        return WatershedStatistics(min_contrast=self.min_nucleus_contrast)

    def image_levels(self, image: np.ndarray) -> WatershedLevels:
        """:class:`WatershedLevels` of one ``(H, W, 2)`` image held in memory."""
        shape = (int(image.shape[0]), int(image.shape[1]))
        stats = gather_statistics(self.statistics(0.5), shape,
                                  lambda box: image[box.slices()])
        return stats.levels  # type: ignore[attr-defined]

    def normalise(
        self,
        batch: np.ndarray,
        levels: Sequence[WatershedLevels],
        image_mpp: float,
        cut_edges: Sequence[Edges] | None = None,
    ) -> WatershedMaps:
        """``batch`` ``(B, H, W, 2)`` divided by each image's scale and clipped to [0, 1]."""
        maps = np.empty(batch.shape, dtype=np.float32)
        for b, level in enumerate(levels):
            for c in range(2):
                maps[b, ..., c] = normalise(batch[b, ..., c], level.scale[c])
        edges = tuple(cut_edges) if cut_edges is not None else (NO_CUT,) * len(levels)
        return WatershedMaps(maps=maps, image_mpp=float(image_mpp), levels=tuple(levels),
                             cut_edges=edges)

    def postprocess(self, maps: WatershedMaps) -> np.ndarray:
        """Segment normalised maps.

        Returns
        -------
        numpy.ndarray
            ``(B, H, W, 2)`` uint32: channel 0 whole-cell, channel 1 nucleus, each 1..K.
        """
        data = maps.maps
        labels = np.zeros(data.shape, dtype=np.uint32)
        for b, (level, cut) in enumerate(zip(maps.levels, maps.cut_edges, strict=True)):
            nuclei = self._nuclei(data[b, ..., 0], maps.image_mpp, level, cut)
            labels[b, ..., 1] = nuclei
            if nuclei.any():
                labels[b, ..., 0] = self._cells(nuclei, data[b, ..., 1], maps.image_mpp, level,
                                                cut)
        return labels

    def infer_windows(
        self, windows: Sequence[WindowInput], image_mpp: float, statistics: Any
    ) -> list[WatershedMaps]:
        """Normalise windows of a logical patch with the patch's levels (``statistics``)."""
        levels = statistics.levels
        return [self.normalise(w.raw[np.newaxis], [levels], image_mpp, [cut_edges(w)])
                for w in windows]

    def block_size(self, image_mpp: float) -> int:
        """Compute-block side: :data:`BLOCK_SIZE` px.

        Windows of 1536² cores and the default 64-px halo post-process 1.17x the patch's pixels
        (1024²: 1.27x); on a 6000² slide with 2 workers the seamless run took about 0.9x the time
        of 1024² blocks. A window then needs about 450 MB of host memory
        (:meth:`memory_per_patch`); give workers with less a smaller ``block_size``.
        """
        return BLOCK_SIZE

    def memory_per_patch(self, shape: tuple[int, int], image_mpp: float) -> MemoryEstimate:
        """Host bytes one ``shape`` patch needs (no accelerator memory)."""
        height, width = shape
        return MemoryEstimate(device_bytes=0, host_bytes=_HOST_BYTES_PER_PIXEL * height * width)

    def _nuclei(
        self, nucleus: np.ndarray, image_mpp: float, levels: WatershedLevels, cut: Edges
    ) -> np.ndarray:
        """``(H, W)`` uint32 nucleus labels 1..K of one normalised ``(H, W)`` channel."""
        empty = np.zeros(nucleus.shape, dtype=np.uint32)
        radius_px = 0.5 * self.nucleus_diameter_um / image_mpp
        min_area = self.min_nucleus_area_um2 / image_mpp**2
        threshold = levels.nucleus_threshold
        smooth = _smooth(nucleus, self.smoothing_um / image_mpp)
        if not levels.has_nuclei or smooth.max() <= _LOCAL_FLOOR * threshold:
            return empty  # nothing can be foreground

        local = threshold_local(smooth, 2 * int(2 * radius_px) + 1, method="gaussian")
        foreground = (smooth > threshold) | ((smooth > local) & (smooth > _LOCAL_FLOOR * threshold))
        # Fill holes up to a nucleus in size (not, say, a gland lumen ringed by nuclei).
        max_hole = math.pi * radius_px**2
        foreground = _fill_small_holes(foreground, max_hole)
        foreground = _remove_small(foreground, min_area, cut)
        if not foreground.any():
            return empty

        # Split touching nuclei: seeds at peaks of the slightly smoothed distance transform.
        distance = ndi.distance_transform_edt(foreground)
        distance = gaussian_filter(distance, max(0.5, 0.15 * radius_px))
        components, _ = ndi.label(foreground)
        peaks = peak_local_max(
            distance,
            min_distance=max(1, int(0.6 * radius_px)),
            labels=components,
            exclude_border=False,
        )
        markers = np.zeros(nucleus.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)

        # Trim each nucleus at half its own peak height above the background.
        background = levels.nucleus_background
        peak = ndi.maximum(_smooth(nucleus, 0.2 * radius_px), labels, np.arange(1, len(peaks) + 1))
        peak = np.concatenate([[np.inf], np.atleast_1d(np.asarray(peak, dtype=np.float64))])
        labels[smooth < background + 0.5 * (peak[labels] - background)] = 0
        labels = _remove_small_labels(_fill_label_holes(labels, max_hole), min_area, cut)
        return relabel_sequential(labels.astype(np.uint32))[0]

    def _cells(
        self,
        nuclei: np.ndarray,
        wholecell: np.ndarray,
        image_mpp: float,
        levels: WatershedLevels,
        cut: Edges,
    ) -> np.ndarray:
        """``(H, W)`` uint32 cells grown from ``nuclei`` (cell ``k`` contains nucleus ``k``)."""
        reach_px = self.max_expansion_um / image_mpp
        radius_px = 0.5 * self.nucleus_diameter_um / image_mpp
        in_nucleus = nuclei > 0
        distance = ndi.distance_transform_edt(~in_nucleus)
        within = distance <= reach_px
        smooth = _smooth(wholecell, self.smoothing_um / image_mpp)
        if levels.has_wholecell:
            signal = smooth > levels.wholecell_threshold
            signal = ndi.binary_closing(signal, structure=np.ones((3, 3)))
            max_cell_area = math.pi * (reach_px + radius_px) ** 2
            enclosed = _fill_small_holes(signal | in_nucleus, max_cell_area)
            foreground = (enclosed & within) | in_nucleus
        else:
            # No whole-cell signal at all: cells are their nuclei plus a 1 µm rim.
            foreground = distance <= max(1.0, 1.0 / image_mpp)
        elevation = smooth + _DISTANCE_WEIGHT * (distance / reach_px)
        return watershed(elevation, nuclei, mask=foreground).astype(np.uint32)


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return gaussian_filter(image, sigma_px) if sigma_px > 0 else image


def cut_edges(window: WindowInput) -> Edges:
    """Which edges of a window cut its logical patch: (top, bottom, left, right)."""
    box, (height, width) = window.window, window.patch_shape
    return box.top > 0, box.bottom < height, box.left > 0, box.right < width


def _touching_cut_edges(components: np.ndarray, cut: Edges) -> np.ndarray:
    """Ids of the ``components`` that reach an edge marked in ``cut``."""
    edges = [components[0], components[-1], components[:, 0], components[:, -1]]
    hits = [edge for edge, is_cut in zip(edges, cut, strict=True) if is_cut]
    return np.unique(np.concatenate(hits)) if hits else np.zeros(0, dtype=components.dtype)


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with its holes under ``max_area`` pixels filled.

    A hole is a 4-connected background region that does not reach the edge of the image: what
    lies beyond the edge is unknown (and for a window of a logical patch it is the rest of the
    patch), so only enclosed regions count. This keeps the rule local: a window with a halo
    fills exactly the holes the whole patch fills around the objects it owns.
    """
    holes, _ = ndi.label(~mask)
    small = np.bincount(holes.ravel()) < max_area
    small[0] = False
    small[_touching_cut_edges(holes, (True, True, True, True))] = False
    return mask | small[holes]


def _fill_label_holes(labels: np.ndarray, max_hole: float) -> np.ndarray:
    """``labels`` with enclosed background regions smaller than ``max_hole`` pixels given the
    label of the nearest object."""
    objects = labels > 0
    holes = _fill_small_holes(objects, max_hole) & ~objects
    if not holes.any():
        return labels
    _, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    return np.where(holes, labels[iy, ix], labels)


def _remove_small(mask: np.ndarray, min_area: float, cut: Edges) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_area`` pixels."""
    components, _ = ndi.label(mask, structure=np.ones((3, 3)))
    return _remove_small_labels(components, min_area, cut) > 0


def _remove_small_labels(labels: np.ndarray, min_area: float, cut: Edges) -> np.ndarray:
    """``labels`` with the objects smaller than ``min_area`` pixels (not reaching a cut edge) set
    to 0."""
    small = np.bincount(labels.ravel()) < min_area
    small[0] = False
    small[_touching_cut_edges(labels, cut)] = False
    return np.where(small[labels], 0, labels) if small.any() else labels

