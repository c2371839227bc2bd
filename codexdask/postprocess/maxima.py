"""Grayscale reconstruction by dilation and h-maxima of 2-D images.

The reconstruction of ``seed`` under ``mask`` is the limit of repeated geodesic dilations: every
pixel rises to the highest seed value that can reach it along a path of footprint steps whose
mask values all stay at or above that value. It is unique, and it uses no arithmetic (only
maxima and minima of seed and mask values), so any correct algorithm gives scikit-image's result
bit for bit. Here it is computed with Vincent's hybrid algorithm (IEEE Trans. Image Process. 2(2),
1993): one raster scan, one anti-raster scan, then a FIFO queue for the few pixels the two scans
leave unfinished. That is linear in the pixel count, where scikit-image sorts every pixel of the
padded seed and mask stack.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess._jit import jit

__all__ = ["h_maxima", "reconstruction"]


def reconstruction(
    seed: np.ndarray, mask: np.ndarray, footprint: np.ndarray | None = None
) -> np.ndarray:
    """Grayscale reconstruction by dilation of ``seed`` under ``mask``.

    Equal, value for value and dtype for dtype, to
    ``skimage.morphology.reconstruction(seed, mask, method="dilation", footprint=footprint)`` for
    2-D real arrays without NaN and a footprint with odd sides (scikit-image's ``offset=None``).

    Parameters
    ----------
    seed, mask : numpy.ndarray
        ``(H, W)`` real arrays of the same shape, ``seed <= mask`` everywhere.
    footprint : numpy.ndarray, optional
        2-D array with odd sides; its non-zero elements other than the centre are the steps along
        which values spread (from ``p`` to ``p + step``). Default: the 3x3 square.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 if ``mask`` is float16 or float32, else float64.

    Raises
    ------
    InputError
        Arrays that are not 2-D and real, of different shapes, with NaN, or ``seed > mask``
        somewhere; a footprint that is not 2-D with odd sides.
    """
    seed = _as_real_2d(seed, "seed")
    mask = _as_real_2d(mask, "mask")
    if seed.shape != mask.shape:
        raise InputError(f"seed {seed.shape} and mask {mask.shape} must have the same shape")
    if np.any(seed > mask):
        raise InputError("seed must not exceed mask anywhere for a reconstruction by dilation")
    float_dtype = np.float32 if mask.dtype in (np.float16, np.float32) else np.float64
    rec = _reconstruction_of(seed.astype(float_dtype, copy=False),
                             mask.astype(float_dtype, copy=False), footprint)
    return np.ascontiguousarray(rec)


def h_maxima(image: np.ndarray, h: float, footprint: np.ndarray | None = None) -> np.ndarray:
    """Maxima of ``image`` at least ``h`` above every path to a higher maximum.

    Equal, element for element, to ``skimage.morphology.h_maxima(image, h, footprint)`` for 2-D
    real images without NaN, including its float tolerance (the seed is ``image - h`` lowered by
    ``2 * finfo(dtype).resolution * |image|``), its early exit when ``h`` exceeds the image's
    range, and, for integer images, its clipped subtraction or float64 conversion.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` integer or float image.
    h : float
        Minimal height of the returned maxima (not 0).
    footprint : numpy.ndarray, optional
        Neighbourhood with odd sides (see :func:`reconstruction`); default the 3x3 square.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8, 1 on the h-maxima, 0 elsewhere.

    Raises
    ------
    ConfigError
        ``h == 0``; a negative ``h`` that lifts the seed above the image somewhere (where
        scikit-image's reconstruction raises); an integer ``h`` beyond the dtype's range.
    InputError
        A bad image or footprint (see :func:`reconstruction`).
    """
    image = _as_real_2d(image, "image")
    if image.size == 0 or h > np.ptp(image):
        return np.zeros(image.shape, dtype=np.uint8)
    if np.issubdtype(type(h), np.floating) and np.issubdtype(image.dtype, np.integer):
        if h % 1 != 0:
            warnings.warn(
                "h_maxima: a fractional h on an integer image converts the image to float64; "
                "pass a float image or an integer h to avoid the conversion",
                stacklevel=2,
            )
            image = image.astype(np.float64)
        else:
            h = image.dtype.type(h)
    if h == 0:
        raise ConfigError("h_maxima needs h != 0 (h = 0 would mark every regional maximum)")
    if np.issubdtype(image.dtype, np.floating):
        # The float tolerance keeps the seed strictly h below the image despite rounding.
        tolerance = 2 * np.finfo(image.dtype).resolution * np.abs(image)
        seed = image - h - tolerance
        del tolerance
    else:
        seed = _subtract_clipped(image, h)
    if h < 0 and np.any(seed > image):  # scikit-image's reconstruction refuses this seed
        raise ConfigError(f"h_maxima needs h > 0, got {h}")
    float_dtype = np.float32 if image.dtype in (np.float16, np.float32) else np.float64
    rec = _reconstruction_of(seed.astype(float_dtype, copy=False),
                             image.astype(float_dtype, copy=False), footprint)
    del seed
    residue = image - rec
    del rec
    return (residue >= h).astype(np.uint8)


def _subtract_clipped(image: np.ndarray, h: object) -> np.ndarray:
    """``image - h`` for an integer image, clipped at the dtype's minimum instead of wrapping."""
    info = np.iinfo(image.dtype)
    if h > int(info.max) - int(info.min):  # type: ignore[operator]
        raise ConfigError(f"h_maxima: h={h} exceeds the range of the image dtype {image.dtype}")
    shifted = image - h
    shifted[image < h + info.min] = info.min  # type: ignore[operator]
    return shifted


def _as_real_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{name} must have an integer or float dtype, got {array.dtype}")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InputError(f"{name} contains NaN; replace NaN (e.g. np.nan_to_num) first")
    return array


def _footprint_steps(footprint: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column steps ``(K,)`` int64 of ``footprint``'s non-zero elements, centre excluded."""
    if footprint is None:
        footprint = np.ones((3, 3), dtype=bool)
    footprint = np.asarray(footprint).astype(bool)
    if footprint.ndim != 2 or footprint.shape[0] % 2 == 0 or footprint.shape[1] % 2 == 0:
        raise InputError(f"footprint must be 2-D with odd sides, got shape {footprint.shape}")
    center = (footprint.shape[0] // 2, footprint.shape[1] // 2)
    footprint[center] = False
    rows, cols = np.nonzero(footprint)
    return (rows - center[0]).astype(np.int64), (cols - center[1]).astype(np.int64)


def _reconstruction_of(seed: np.ndarray, mask: np.ndarray, footprint: np.ndarray | None
                       ) -> np.ndarray:
    """Reconstruction of ``seed`` under ``mask`` (same float dtype), as a view of a padded array.

    Both are padded by the footprint's reach with -inf, which neither spreads nor receives, so
    the kernel needs no bounds checks.
    """
    step_y, step_x = _footprint_steps(footprint)
    if not step_y.size or not seed.size:
        return np.array(seed, dtype=mask.dtype, order="C")
    reach_y, reach_x = int(np.abs(step_y).max()), int(np.abs(step_x).max())
    height, width = seed.shape
    padded_shape = (height + 2 * reach_y, width + 2 * reach_x)
    inner = (slice(reach_y, reach_y + height), slice(reach_x, reach_x + width))
    rec = np.full(padded_shape, -np.inf, mask.dtype)
    rec[inner] = seed
    limit = np.full(padded_shape, -np.inf, mask.dtype)
    limit[inner] = mask
    offsets = step_y * padded_shape[1] + step_x
    _hybrid_reconstruction(rec.reshape(-1), limit.reshape(-1), offsets, padded_shape[1],
                           reach_y, reach_x, height, width)
    return rec[inner]


@jit
def _hybrid_reconstruction(
    rec: np.ndarray, limit: Any, offsets: np.ndarray, row: Any, reach_y: Any, reach_x: Any,
    height: Any, width: Any,
) -> None:  # pragma: no cover - compiled
    """Vincent's hybrid reconstruction by dilation, in place on the flat padded ``rec``.

    Values spread from ``p`` to ``p + offset``. "Forward" offsets point to later pixels in
    raster order: the raster scan pulls values through them, the anti-raster scan through the
    others, and queues each pixel that rose and can still raise a later neighbour (a pixel that
    did not rise was already pulled by those neighbours in the raster scan); a FIFO pass then
    spreads from the queued pixels until nothing changes.
    """
    forward = offsets[offsets > 0]
    backward = offsets[offsets < 0]
    for y in range(reach_y, reach_y + height):
        for p in range(y * row + reach_x, y * row + reach_x + width):
            value = rec[p]
            for k in range(forward.size):
                source = rec[p - forward[k]]
                value = source if source > value else value
            bound = limit[p]
            rec[p] = bound if bound < value else value

    queue = np.empty(1024, np.int64)
    head = 0
    count = 0
    for y in range(reach_y + height - 1, reach_y - 1, -1):
        for p in range(y * row + reach_x + width - 1, y * row + reach_x - 1, -1):
            before = rec[p]
            value = before
            for k in range(backward.size):
                source = rec[p - backward[k]]
                value = source if source > value else value
            bound = limit[p]
            value = bound if bound < value else value
            if value == before:
                continue  # later neighbours already pulled this value in the raster scan
            rec[p] = value
            raises = False
            for k in range(forward.size):
                q = p + forward[k]
                bound = limit[q]
                raises |= rec[q] < (bound if bound < value else value)
            if raises:
                if count == queue.size:
                    queue = _grown_queue(queue, head, count)
                    head = 0
                queue[(head + count) & (queue.size - 1)] = p
                count += 1

    while count > 0:
        p = queue[head]
        head = (head + 1) & (queue.size - 1)
        count -= 1
        value = rec[p]
        if count + offsets.size > queue.size:
            queue = _grown_queue(queue, head, count)
            head = 0
        wrap = queue.size - 1
        for k in range(offsets.size):
            # Branch-free: every neighbour is written to the queue's tail, which only advances
            # for those that rose.
            q = p + offsets[k]
            current = rec[q]
            bound = limit[q]
            target = value if value < bound else bound
            rises = current < target
            rec[q] = target if rises else current
            queue[(head + count) & wrap] = q
            count += rises


@jit
def _grown_queue(queue: np.ndarray, head: Any, count: Any) -> Any:  # pragma: no cover - compiled
    """The circular ``queue``'s ``count`` items from ``head``, in a twice larger array (sizes
    stay powers of two, so positions wrap with a bit mask)."""
    grown = np.empty(2 * queue.size, queue.dtype)
    for i in range(count):
        grown[i] = queue[(head + i) & (queue.size - 1)]
    return grown
