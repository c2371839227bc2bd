"""CLAHE as scikit-image's ``equalize_adapthist`` computes it, for any window of an image.

``equalize_adapthist(image, kernel_size)`` with its defaults (``clip_limit=0.01``,
``nbins=256``) does, on a float image in [0, 1]:

1. ``img_as_uint`` (``rint(x * 65535)`` in float32), then a rescale to 2**14 grey levels in
   float64 with ``round`` (half to even), then grey level ``// 65`` = one of 253 used bins;
2. reflect-pads the image by ``k // 2`` before and ``(k - s % k) % k + ceil(k / 2)`` after
   each axis (``k`` kernel size, ``s`` image size), so that contextual region ``i`` covers image
   pixels ``[i k, (i + 1) k)`` (mirrored past the image end);
3. per region: a 256-bin histogram, clipped at ``int(0.01 * k_y * k_x)`` with skimage's
   redistribution of the excess, and mapped to grey levels by its cumulative sum;
4. per pixel ``x`` (each axis): block ``j = (x + k // 2) // k``, weight ``c = ((x + k // 2) % k)
   / k``, between the mappings of regions ``j - 1`` and ``j`` (clamped to the first/last); the
   four products are summed in float32 in skimage's order and truncated to uint16;
5. a final rescale by the minimum and maximum of step 4 over the WHOLE image.

Steps 1-4 depend only on the pixels of the regions around a pixel, so they are computed here
for any window from the regions it needs; step 5 needs the global extremes of step 4, which a
caller gathers with one more pass (see :mod:`codexdask.mesmer.preprocess`).
"""

from __future__ import annotations

import math

import numpy as np

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box, check_window, padded_source_index, span

#: Grey levels of skimage's CLAHE (``NR_OF_GRAY``).
GREY_LEVELS = 2**14
#: Histogram bins (``nbins`` default).
NBINS = 256
#: Normalised clip limit (``clip_limit`` default).
CLIP_LIMIT = 0.01
_BIN_WIDTH = 1 + GREY_LEVELS // NBINS


def _grey_bin_table() -> np.ndarray:
    """uint8 bin of every uint16 level ``u`` (``img_as_uint`` output) of a non-constant image.

    A non-constant channel handed to CLAHE always spans 0..65535 after ``img_as_uint`` (its
    minimum is rescaled to 0.0, its maximum to 1.0), so ``rescale_intensity(u, out_range=(0,
    16383))`` is the fixed float64 expression below, then numpy's round half to even.
    """
    levels = np.arange(65536, dtype=np.float64)
    grey = np.round(levels / 65535.0 * (GREY_LEVELS - 1))
    return (grey.astype(np.uint16) // _BIN_WIDTH).astype(np.uint8)


_GREY_BIN = _grey_bin_table()


def grey_bins(unit: np.ndarray) -> np.ndarray:
    """CLAHE histogram bin (uint8) of float32 pixels in [0, 1] (step 1 above)."""
    if unit.dtype != np.float32:
        raise InputError(f"grey_bins expects float32 pixels in [0, 1], got {unit.dtype}")
    scaled = np.multiply(unit, np.float32(65535))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 65535, out=scaled)
    return _GREY_BIN[scaled.astype(np.uint16)]


def resolve_kernel_size(kernel_size: int | tuple[int, int] | None,
                        image_shape: tuple[int, int]) -> tuple[int, int]:
    """Per-axis CLAHE kernel as skimage resolves it (None: 1/8 of each side, at least 1)."""
    if kernel_size is None:
        return (max(image_shape[0] // 8, 1), max(image_shape[1] // 8, 1))
    sizes = [kernel_size] * 2 if isinstance(kernel_size, (int, np.integer)) else list(kernel_size)
    if len(sizes) != 2:
        raise InputError(f"kernel_size must be an int or a pair of ints, got {kernel_size!r}")
    resolved = (int(sizes[0]), int(sizes[1]))
    if min(resolved) < 1:
        raise InputError(f"kernel_size must be at least 1 pixel, got {kernel_size!r}")
    return resolved


def _axis_pad(size: int, kernel: int) -> tuple[int, int]:
    return kernel // 2, (kernel - size % kernel) % kernel + int(math.ceil(kernel / 2.0))


def _regions_for(start: int, stop: int, size: int, kernel: int) -> tuple[int, int]:
    """First and last contextual region used by the pixels ``[start, stop)`` of one axis."""
    last = -(-size // kernel) - 1
    first_block = (start + kernel // 2) // kernel
    last_block = (stop - 1 + kernel // 2) // kernel
    return min(max(first_block - 1, 0), last), min(max(last_block, 0), last)


def _region_source(first: int, last: int, size: int, kernel: int) -> np.ndarray:
    """Image index of every pixel of regions ``first..last`` along one axis (reflected)."""
    before, after = _axis_pad(size, kernel)
    padded = padded_source_index(size, before, after, "reflect")
    return padded[before + first * kernel: before + (last + 1) * kernel]


def clahe_required_box(out_box: Box, image_shape: tuple[int, int],
                       kernel: tuple[int, int]) -> Box:
    """Pixels whose grey bins :func:`clahe_window` needs to compute ``out_box``."""
    ranges = []
    for (start, stop), size, k in zip((out_box.rows, out_box.cols), image_shape, kernel):
        first, last = _regions_for(start, stop, size, k)
        low, high = span(_region_source(first, last, size, k))
        ranges.append((min(low, start), max(high, stop)))
    return Box.from_ranges(*ranges)


def clip_histograms(histograms: np.ndarray, limit: int) -> np.ndarray:
    """skimage's ``clip_histogram`` applied to every row of ``(R, NBINS)`` int64 counts.

    Bins above ``limit`` are cut, the excess is spread evenly, bins that the even share would
    lift past the limit are filled to it, and what is left is handed out one count at a time
    over bins below the limit, with skimage's strides and starting offsets.
    """
    hist = np.minimum(histograms, limit)
    excess = (histograms - hist).sum(axis=1)
    increment = excess // NBINS
    upper = (limit - increment)[:, None]
    low = hist < upper
    excess -= low.sum(axis=1) * increment
    hist += low * increment[:, None]
    mid = (hist >= upper) & (hist < limit)
    excess += np.where(mid, hist, 0).sum(axis=1) - mid.sum(axis=1) * limit
    hist[mid] = limit
    columns = np.arange(NBINS)
    active = np.flatnonzero(excess > 0)
    while active.size:
        before = excess[active].copy()
        running = active
        for index in range(NBINS):
            if running.size == 0:
                break
            under = hist[running] < limit
            step = np.maximum(1, under.sum(axis=1) // excess[running])[:, None]
            chosen = under & (columns >= index) & ((columns - index) % step == 0)
            hist[running] += chosen
            excess[running] -= chosen.sum(axis=1)
            running = running[excess[running] > 0]
        # Rows that broke out have excess <= 0; the others stop when a sweep changed nothing.
        stalled = excess[active] == before
        active = active[(excess[active] > 0) & ~stalled]
    return hist


def region_maps(bins: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """Grey-level mappings of contextual regions tiling ``bins``.

    Parameters
    ----------
    bins : numpy.ndarray
        ``(ny * k_y, nx * k_x)`` uint8 CLAHE bins, the pixels of ``ny x nx`` whole regions.
    kernel : (int, int)
        Region size ``(k_y, k_x)``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx, NBINS)`` int64 mapped grey level of every bin of every region.
    """
    ky, kx = kernel
    ny, nx = bins.shape[0] // ky, bins.shape[1] // kx
    region = (np.arange(ny)[:, None, None, None] * nx + np.arange(nx)[None, None, :, None])
    flat = (region * NBINS + bins.reshape(ny, ky, nx, kx)).ravel()
    hist = np.bincount(flat, minlength=ny * nx * NBINS).reshape(ny * nx, NBINS)
    pixels = ky * kx
    limit = max(1, int(CLIP_LIMIT * pixels))
    clipped = clip_histograms(hist, limit)
    mapped = np.cumsum(clipped, axis=1).astype(np.float64)
    mapped *= (GREY_LEVELS - 1) / pixels
    np.minimum(mapped, GREY_LEVELS - 1, out=mapped)
    return mapped.astype(np.int64).reshape(ny, nx, NBINS)


def clahe_window(bins: np.ndarray, read_box: Box, out_box: Box, image_shape: tuple[int, int],
                 kernel: tuple[int, int]) -> np.ndarray:
    """Un-normalised CLAHE levels (skimage steps 2-4) of ``out_box``.

    Parameters
    ----------
    bins : numpy.ndarray
        ``(h, w)`` uint8 grey bins (:func:`grey_bins`) of the pixels in ``read_box``, which must
        hold :func:`clahe_required_box` of ``out_box``.
    read_box, out_box : Box
        Boxes in the image's coordinates.
    image_shape : (int, int)
        ``(H, W)`` of the whole image.
    kernel : (int, int)
        Contextual region size.

    Returns
    -------
    numpy.ndarray
        ``(out_h, out_w)`` uint16 levels in [0, 16383], equal to skimage's ``_clahe`` output
        over ``out_box`` of the whole image.
    """
    check_window(bins, read_box, clahe_required_box(out_box, image_shape, kernel), "bins")
    axes = []
    for (start, stop), size, k, offset in zip((out_box.rows, out_box.cols), image_shape, kernel,
                                              (read_box.top, read_box.left)):
        first, last = _regions_for(start, stop, size, k)
        source = _region_source(first, last, size, k) - offset
        position = np.arange(start, stop) + k // 2
        block = position // k
        weight = (position % k) / k
        n_regions = -(-size // k)
        near = np.clip(block - 1, 0, n_regions - 1) - first
        far = np.clip(block, 0, n_regions - 1) - first
        axes.append((source, near, far, weight))
    (src_y, near_y, far_y, c_y), (src_x, near_x, far_x, c_x) = axes
    maps = region_maps(bins[np.ix_(src_y, src_x)], kernel)
    n_cols = maps.shape[1]
    flat_maps = maps.reshape(-1)
    own = bins[out_box.slices(read_box)].astype(np.intp)
    row_weight = (1 - c_y, c_y)
    col_weight = (1 - c_x, c_x)
    result = np.zeros(out_box.shape, dtype=np.float32)
    for edge_y, rows in enumerate((near_y, far_y)):
        for edge_x, cols in enumerate((near_x, far_x)):
            weight = col_weight[edge_x][None, :] * row_weight[edge_y][:, None]
            region = (rows[:, None] * n_cols + cols[None, :]) * NBINS
            mapped = flat_maps.take(region + own)
            result += (mapped * weight).astype(np.float32)
    return result.astype(np.uint16)
