"""Marker-controlled watershed of 2-D images with scikit-image's exact order of flooding.

scikit-image (>= 0.25.1) floods from the markers with a binary min-heap of items
``(level, age)``: the markers enter first, in raster order, at their own elevation and age 0;
each popped pixel gives its label to its unlabelled in-mask neighbours (up, left, right, down,
then the diagonals for ``connectivity=2``) and pushes them with ages 2, 3, 4, ... at level
``max(own elevation, popped level)``. Levels therefore never decrease, and ages make every
``(level, age)`` unique, except among markers of equal elevation: those leave the heap in an
order set by the heap's layout.

This module reproduces that order exactly, faster:

- while markers of equal elevation are still queued, it runs the same binary heap (same sift-up
  and sift-down comparisons), so they leave in scikit-image's order;
- after that (from the start, if no two markers share an elevation) the order is fixed by
  ``(level, age)`` alone, and a radix heap produces it: items sit in buckets by the highest bit
  in which their level differs from the last popped level, so a push is an append and each item
  moves down a few buckets in total instead of sifting through a deep heap;
- levels are the elevations' bit patterns mapped to order-preserving unsigned integers (-0.0
  folded onto +0.0), computed once per pixel;
- each pixel's level and label sit side by side in one array of "cells" bordered by one pixel
  whose label, like that of pixels outside the mask, says "never flood": a neighbour costs one
  memory access and no bounds check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess._jit import jit, jit_inline

__all__ = ["watershed"]

_AGE_SHIFT = np.uint64(33)  # item tag = age << 33 | padded pixel index
_INDEX_MASK = np.uint64((1 << 33) - 1)
_MAX_PIXELS = (1 << 31) - 2  # scikit-image keeps ages in an int32
_N_BUCKETS = 65


def watershed(
    image: np.ndarray,
    markers: np.ndarray,
    mask: np.ndarray | None = None,
    connectivity: int = 1,
) -> np.ndarray:
    """Flood ``image`` from ``markers`` inside ``mask``.

    Equal, label for label and dtype for dtype, to ``skimage.segmentation.watershed(image,
    markers, connectivity=connectivity, mask=mask)`` of scikit-image >= 0.25.1 (``offset=None``,
    ``compactness=0``, ``watershed_line=False``) for 2-D real images without NaN, integer
    markers and fewer than 2**31 - 2 pixels, ties included.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` elevation, any real dtype (float32 and float64 are used as they are, others
        as float64, like scikit-image).
    markers : numpy.ndarray
        ``(H, W)`` integer labels of the seeds, 0 elsewhere.
    mask : numpy.ndarray, optional
        ``(H, W)``; only non-zero pixels are flooded (markers outside it are dropped).
    connectivity : {1, 2}
        1: 4-connected; 2: 8-connected.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` labels of ``markers``' dtype.
    """
    image = np.asarray(image)
    markers = np.asarray(markers)
    if image.ndim != 2:
        raise InputError(f"image must be a 2-D array, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise InputError(f"image must be real, got dtype {image.dtype}")
    if markers.shape != image.shape:
        raise InputError(f"markers {markers.shape} must have the image's shape {image.shape}")
    if markers.dtype.kind not in "iu":
        raise InputError(f"markers must be integer labels, got dtype {markers.dtype}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise InputError(f"mask {mask.shape} must have the image's shape {image.shape}")
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity must be 1 or 2 for 2-D images, got {connectivity}")
    return flood(image, markers, mask, connectivity, negate=False, out_dtype=markers.dtype)


def flood(image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None, connectivity: int,
          negate: bool, out_dtype: np.dtype | type) -> np.ndarray:
    """:func:`watershed` of ``-image`` if ``negate`` (without a copy), into ``out_dtype``."""
    if image.dtype.kind == "f" and np.isnan(image).any():
        raise InputError("image contains NaN; replace NaN (e.g. np.nan_to_num) first")
    if image.size > _MAX_PIXELS:
        raise InputError(f"image has {image.size} pixels; the exact flood supports fewer than "
                         f"{_MAX_PIXELS}: split it into smaller patches")
    if image.dtype == np.float32:
        bits = np.ascontiguousarray(image).view(np.uint32)
        sign = np.uint64(1 << 31)
    else:
        bits = np.ascontiguousarray(image, dtype=np.float64).view(np.uint64)
        sign = np.uint64(1 << 63)
    inside = np.ones(image.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    low, high = (int(markers.min()), int(markers.max())) if markers.size else (0, 0)
    narrow = image.dtype == np.float32 and -(2**31) < low and high < 2**31
    cell_dtype, signed = (np.uint32, np.int32) if narrow else (np.uint64, np.int64)
    never = np.iinfo(signed).min
    if low == never or high >= 2**63:
        raise InputError(f"marker labels must lie in ({never}, 2**63); relabel them")

    # One row of (level key, label bits) per pixel of the image bordered by one pixel; label 0
    # is still to flood, the sign bit alone (`never`) is the border or outside the mask.
    height, width = image.shape
    cells = np.zeros(((height + 2) * (width + 2), 2), cell_dtype)
    cells[:, 1] = cell_dtype(-never)
    _fill_cells(bits, sign, sign if negate else np.uint64(0), np.ascontiguousarray(markers),
                np.ascontiguousarray(inside), cells)
    if height and width:
        row = width + 2
        steps = np.array([-row, -1, 1, row, -row - 1, -row + 1, row - 1, row + 1], np.int64)
        _flood_cells(cells, steps[: 8 if connectivity == 2 else 4])
    out = np.empty(image.shape, out_dtype)
    _crop(cells[:, 1].view(signed).reshape(height + 2, width + 2), signed(never), out)
    return out


@jit
def _fill_cells(
    bits: np.ndarray, sign: Any, flip: Any, markers: np.ndarray, inside: np.ndarray,
    cells: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Level keys of the elevations and labels of the masked markers into the padded cells."""
    height, width = markers.shape
    row = width + 2
    for y in range(height):
        for x in range(width):
            p = (y + 1) * row + x + 1
            b = np.uint64(bits[y, x]) ^ flip
            if (b & (sign - np.uint64(1))) == 0:  # +0.0 and -0.0 are equal
                b = np.uint64(0)
            cells[p, 0] = (~b & (sign | (sign - np.uint64(1)))) if b & sign else (b | sign)
            if inside[y, x]:
                cells[p, 1] = markers[y, x]  # wraps negative labels; _crop wraps them back


@jit
def _crop(labels: np.ndarray, never: Any, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The inner pixels of the padded ``(H + 2, W + 2)`` labels into ``out`` (never -> 0)."""
    height, width = out.shape
    for y in range(height):
        for x in range(width):
            value = labels[y + 1, x + 1]
            out[y, x] = 0 if value == never else value


@jit
def _flood_cells(cells: np.ndarray, steps: np.ndarray) -> None:  # pragma: no cover - compiled
    """Flood the padded cells in scikit-image's order (see the module docstring)."""
    never = cells[0, 1]
    n_markers = 0
    for p in range(cells.shape[0]):
        if cells[p, 1] != 0 and cells[p, 1] != never:
            n_markers += 1
    marker_keys = np.empty(n_markers, np.uint64)
    marker_tags = np.empty(n_markers, np.uint64)
    i = 0
    for p in range(cells.shape[0]):
        if cells[p, 1] != 0 and cells[p, 1] != never:
            marker_keys[i] = cells[p, 0]
            marker_tags[i] = np.uint64(p)
            i += 1
    # Largest elevation shared by two markers: until it is passed, only the binary heap
    # reproduces scikit-image's order.
    ordered = np.sort(marker_keys)
    tied = False
    tie_key = np.uint64(0)
    for i in range(1, n_markers):
        if ordered[i] == ordered[i - 1]:
            tied = True
            tie_key = ordered[i]

    age = np.uint64(1)
    heap_keys = np.empty(max(64, 2 * n_markers), np.uint64)
    heap_tags = np.empty(heap_keys.size, np.uint64)
    n = 0
    if tied:
        for i in range(n_markers):
            _heap_push(heap_keys, heap_tags, n, marker_keys[i], marker_tags[i])
            n += 1
        while n > 0:
            key = heap_keys[0]
            tag = heap_tags[0]
            if key > tie_key or (key == tie_key and (tag >> _AGE_SHIFT) != 0):
                break
            _heap_pop(heap_keys, heap_tags, n)
            n -= 1
            if n + steps.size > heap_keys.size:
                heap_keys = _grown(heap_keys, n)
                heap_tags = _grown(heap_tags, n)
            p = np.int64(tag & _INDEX_MASK)
            label = cells[p, 1]
            for k in range(steps.size):
                q = p + steps[k]
                if cells[q, 1] == 0:
                    age += np.uint64(1)
                    cells[q, 1] = label
                    level = np.uint64(cells[q, 0])
                    _heap_push(heap_keys, heap_tags, n, level if level > key else key,
                               (age << _AGE_SHIFT) | np.uint64(q))
                    n += 1
    else:
        heap_keys, heap_tags, n = marker_keys, marker_tags, n_markers
    if n > 0:
        _radix_flood(cells, steps, heap_keys[:n], heap_tags[:n], age)


@jit
def _radix_flood(
    cells: np.ndarray, steps: np.ndarray, start_keys: np.ndarray, start_tags: np.ndarray, age: Any,
) -> None:  # pragma: no cover
    """Continue the flood from the queued items in ``(level, age)`` order with a radix heap.

    Bucket ``b >= 1`` holds items whose level differs from ``last`` (the level being popped)
    at bit ``b - 1`` at most; bucket 0 holds the items at level ``last`` in age order. The
    queued items start in the top bucket, so the first pop sorts them out.
    """
    bucket_keys = [np.empty(16, np.uint64) for _ in range(_N_BUCKETS)]
    bucket_tags = [np.empty(16, np.uint64) for _ in range(_N_BUCKETS)]
    sizes = np.zeros(_N_BUCKETS, np.int64)
    top = _N_BUCKETS - 1
    bucket_keys[top] = start_keys.copy()
    bucket_tags[top] = start_tags.copy()
    sizes[top] = start_keys.size
    queued = start_keys.size
    last = np.uint64(0)
    head = 0  # next item of bucket 0
    while queued > 0:
        if head == sizes[0]:
            # Bucket 0 is used up: the lowest level of the first non-empty bucket becomes
            # `last`, and that bucket's items move down (those at `last` into bucket 0).
            head = 0
            sizes[0] = 0
            b = 1
            while sizes[b] == 0:
                b += 1
            moving_keys = bucket_keys[b]
            moving_tags = bucket_tags[b]
            count = sizes[b]
            sizes[b] = 0
            last = moving_keys[0]
            for i in range(1, count):
                if moving_keys[i] < last:
                    last = moving_keys[i]
            for i in range(count):
                key = moving_keys[i]
                to = 64 - leading_zeros(key ^ last)  # type: ignore[call-arg]
                if sizes[to] == bucket_keys[to].size:
                    bucket_keys[to] = _grown(bucket_keys[to], sizes[to])
                    bucket_tags[to] = _grown(bucket_tags[to], sizes[to])
                bucket_keys[to][sizes[to]] = key
                bucket_tags[to][sizes[to]] = moving_tags[i]
                sizes[to] += 1
            if sizes[0] > 1:
                _sort_head(bucket_tags[0], sizes[0])  # equal levels leave by age
        tag = bucket_tags[0][head]
        head += 1
        queued -= 1
        p = np.int64(tag & _INDEX_MASK)
        label = cells[p, 1]
        for k in range(steps.size):
            q = p + steps[k]
            if cells[q, 1] != 0:
                continue
            age += np.uint64(1)
            cells[q, 1] = label
            key = np.uint64(cells[q, 0])
            if key < last:
                key = last
            to = 64 - leading_zeros(key ^ last)  # type: ignore[call-arg]
            if sizes[to] == bucket_keys[to].size:
                bucket_keys[to] = _grown(bucket_keys[to], sizes[to])
                bucket_tags[to] = _grown(bucket_tags[to], sizes[to])
            bucket_keys[to][sizes[to]] = key
            bucket_tags[to][sizes[to]] = (age << _AGE_SHIFT) | np.uint64(q)
            sizes[to] += 1
            queued += 1


@jit
def _sort_head(values: np.ndarray, count: Any) -> None:  # pragma: no cover - compiled
    """Sort ``values[:count]`` in place (insertion sort for the usual handful)."""
    if count > 32:
        values[:count].sort()
        return
    for i in range(1, count):
        value = values[i]
        j = i - 1
        while j >= 0 and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


@jit
def _grown(array: np.ndarray, used: Any) -> Any:  # pragma: no cover - compiled
    grown = np.empty(2 * array.size + 16, array.dtype)
    grown[:used] = array[:used]
    return grown


@jit_inline
def _before(key_a: Any, tag_a: Any, key_b: Any, tag_b: Any) -> Any:  # pragma: no cover - compiled
    """scikit-image's heap order: lower level first, then lower age (index ignored)."""
    if key_a != key_b:
        return key_a < key_b
    return (tag_a >> _AGE_SHIFT) < (tag_b >> _AGE_SHIFT)


@jit_inline
def _heap_push(
    keys: np.ndarray, tags: np.ndarray, n: Any, key: Any, tag: Any,
) -> None:  # pragma: no cover - compiled
    """Append to the ``n``-item heap and sift up past strictly later parents."""
    child = n
    while child > 0:
        parent = (child - 1) >> 1
        if not _before(key, tag, keys[parent], tags[parent]):
            break
        keys[child] = keys[parent]
        tags[child] = tags[parent]
        child = parent
    keys[child] = key
    tags[child] = tag


@jit_inline
def _heap_pop(keys: np.ndarray, tags: np.ndarray, n: Any) -> None:  # pragma: no cover - compiled
    """Drop the root of the ``n``-item heap: the last item moves to the root and sifts down as
    in scikit-image (the left child if strictly earlier, then the right child if strictly
    earlier than the current choice)."""
    key = keys[n - 1]
    tag = tags[n - 1]
    n -= 1
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        best = left if _before(keys[left], tags[left], key, tag) else i
        right = left + 1
        if right < n:
            if best == i:
                if _before(keys[right], tags[right], key, tag):
                    best = right
            elif _before(keys[right], tags[right], keys[left], tags[left]):
                best = right
        if best == i:
            break
        keys[i] = keys[best]
        tags[i] = tags[best]
        i = best
    if n > 0:
        keys[i] = key
        tags[i] = tag
