"""The compiled kernels of quantification: label compaction, per-object sums and shapes.

Everything here works on one chunk or one window of labels at a time and knows nothing of Dask,
files or slides. Sums of integer pixels are exact (``uint64`` or ``int64``), so adding the
partial sums of any split of the slide gives the same table; shapes are computed from the whole
object as :func:`skimage.measure.regionprops` computes them (``docs/quantification.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from codexdask.postprocess._jit import jit

__all__ = [
    "PERIMETER_WEIGHTS",
    "accumulate",
    "layer_slots",
    "positions_by_table",
    "object_tally",
    "compact_labels",
    "grouped_quantiles",
    "shape_sums",
    "sum_dtype",
    "square_sum_dtype",
]

#: Weight of each neighbourhood code of a boundary pixel (1 + 2 × its boundary 4-neighbours +
#: 10 × its boundary diagonal neighbours) in a 4-connected perimeter, as scikit-image weighs them.
PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0

# A chunk's ids are looked up in a table over their range when the range is at most this many
# times the pixel count (else sorted): ids of one region of a slide are close together.
_TABLE_FACTOR = 4


def sum_dtype(pixels: np.dtype) -> np.dtype:
    """Accumulator of pixel sums: ``uint64``/``int64`` for integers (exact), else ``float64``."""
    pixels = np.dtype(pixels)
    if pixels.kind == "u" or pixels.kind == "b":
        return np.dtype(np.uint64)
    if pixels.kind == "i":
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def square_sum_dtype(pixels: np.dtype) -> np.dtype:
    """Accumulator of squared pixels: exact integers for pixels of at most 16 bits.

    A 16-bit square is below 2**32, so an object of up to 2**32 pixels sums exactly in 64 bits;
    wider pixels are squared and summed in ``float64``.
    """
    pixels = np.dtype(pixels)
    if pixels.kind in "uib" and pixels.itemsize <= 2:
        return np.dtype(np.uint64 if pixels.kind in "ub" else np.int64)
    return np.dtype(np.float64)


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct non-zero labels of ``labels`` and each pixel's position among them.

    Parameters
    ----------
    labels : numpy.ndarray
        Label image, any shape, unsigned integers (0 is background).

    Returns
    -------
    ids : numpy.ndarray
        ``(K,)`` uint32, the distinct non-zero labels, ascending.
    index : numpy.ndarray
        ``labels.shape`` int32: ``ids[index] == labels`` where ``labels > 0``, ``-1`` elsewhere.

    Examples
    --------
    >>> ids, index = compact_labels(np.array([[0, 7], [3, 7]], np.uint32))
    >>> ids.tolist(), index.tolist()
    ([3, 7], [[-1, 1], [0, 1]])
    """
    flat = np.ascontiguousarray(labels, dtype=np.uint32).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.uint32), np.full(labels.shape, -1, np.int32)
    low, high = _nonzero_range(flat)
    if high == 0:
        return np.zeros(0, np.uint32), np.full(labels.shape, -1, np.int32)
    if high - low < _TABLE_FACTOR * flat.size + 1024:
        ids, index = _compact_by_table(flat, low, high)
    else:
        ids, inverse = np.unique(flat, return_inverse=True)
        if ids[0] == 0:
            ids, index = ids[1:], inverse.astype(np.int32) - 1
        else:
            index = inverse.astype(np.int32)
    return ids.astype(np.uint32), index.reshape(labels.shape)


@jit
def _nonzero_range(flat: np.ndarray) -> tuple[int, int]:  # pragma: no cover - compiled
    low = np.uint32(0xFFFFFFFF)
    high = np.uint32(0)
    for value in flat:
        if value != 0:
            if value < low:
                low = value
            if value > high:
                high = value
    return int(low), int(high)


@jit
def _compact_by_table(
    flat: np.ndarray, low: int, high: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    table = np.full(high - low + 1, -1, np.int32)
    for value in flat:
        if value != 0:
            table[value - low] = 0
    count = 0
    for position in range(table.size):
        if table[position] == 0:
            table[position] = count
            count += 1
    ids = np.empty(count, np.uint32)
    for position in range(table.size):
        if table[position] >= 0:
            ids[table[position]] = low + position
    index = np.full(flat.size, -1, np.int32)
    for i in range(flat.size):
        if flat[i] != 0:
            index[i] = table[flat[i] - low]
    return ids, index


@jit
def positions_by_table(
    labels: np.ndarray, ids: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Each pixel's position in the sorted ``ids`` (``-1``: not one), by a table over their
    range; ``labels`` any shape uint32, returns the same shape int32."""
    low = ids[0]
    table = np.full(int(ids[-1]) - int(low) + 1, -1, np.int32)
    for k in range(ids.size):
        table[ids[k] - low] = k
    flat = labels.reshape(-1)
    out = np.full(flat.size, -1, np.int32)
    for i in range(flat.size):
        value = flat[i]
        if value >= low and value - low < table.size:
            out[i] = table[value - low]
    return out.reshape(labels.shape)


@jit
def accumulate(
    slots: np.ndarray, values: np.ndarray, sums: np.ndarray, squares: np.ndarray,
    minima: np.ndarray, maxima: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Add a group of channels' pixels to per-slot sums (and squares, minima, maxima).

    Parameters
    ----------
    slots : numpy.ndarray
        ``(P,)`` int32, each pixel's slot (an object's layer; ``-1``: none).
    values : numpy.ndarray
        ``(G, P)`` the group's pixels.
    sums : numpy.ndarray
        ``(S, G)`` accumulator (:func:`sum_dtype`), updated in place: a slot's channels side by
        side, so that each pixel touches one row.
    squares, minima, maxima : numpy.ndarray
        ``(S, G)`` accumulators updated in place, or ``(0, 0)`` arrays to skip them.
    """
    extra = squares.size > 0
    channels = values.shape[0]
    for i in range(slots.size):
        k = slots[i]
        if k < 0:
            continue
        for g in range(channels):
            value = values[g, i]
            sums[k, g] += value
            if extra:
                squares[k, g] += value * value
                if value < minima[k, g]:
                    minima[k, g] = value
                if value > maxima[k, g]:
                    maxima[k, g] = value


@jit
def layer_slots(index: np.ndarray) -> tuple[np.ndarray, bool]:  # pragma: no cover - compiled
    """Each pixel's slot ``object * L + layer`` from ``(L, P)`` int32 per-layer objects
    (``-1``: none); and whether some pixel belongs to two layers (then its last layer wins)."""
    layers, pixels = index.shape
    slots = np.full(pixels, -1, np.int32)
    overlap = False
    for layer in range(layers):
        for i in range(pixels):
            k = index[layer, i]
            if k >= 0:
                if slots[i] >= 0:
                    overlap = True
                slots[i] = k * layers + layer
    return slots, overlap


@jit
def object_tally(
    index: np.ndarray, n_objects: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Pixel counts, coordinate sums and boxes of each object, layer by layer.

    Parameters
    ----------
    index : numpy.ndarray
        ``(L, H, W)`` int32, each pixel's object per layer (``-1``: none).
    n_objects : int
        K.

    Returns
    -------
    counts : numpy.ndarray
        ``(L, K)`` int64.
    coords : numpy.ndarray
        ``(L, 2, K)`` int64 sums of the pixels' rows and columns (window coordinates).
    boxes : numpy.ndarray
        ``(K, 4)`` int64 ``(top, left, bottom, right)`` over every layer, exclusive ends
        (``(H, W, -1, -1)`` for an object with no pixel).
    """
    layers, height, width = index.shape
    counts = np.zeros((layers, n_objects), np.int64)
    coords = np.zeros((layers, 2, n_objects), np.int64)
    boxes = np.empty((n_objects, 4), np.int64)
    boxes[:, 0] = height
    boxes[:, 1] = width
    boxes[:, 2] = -1
    boxes[:, 3] = -1
    for layer in range(layers):
        for row in range(height):
            for col in range(width):
                k = index[layer, row, col]
                if k < 0:
                    continue
                counts[layer, k] += 1
                coords[layer, 0, k] += row
                coords[layer, 1, k] += col
                boxes[k, 0] = min(boxes[k, 0], row)
                boxes[k, 1] = min(boxes[k, 1], col)
                boxes[k, 2] = max(boxes[k, 2], row + 1)
                boxes[k, 3] = max(boxes[k, 3], col + 1)
    return counts, coords, boxes


@jit
def shape_sums(
    labels: np.ndarray, ids: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Moments and perimeter codes of whole objects, each inside its box.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` uint32 window holding every object whole.
    ids : numpy.ndarray
        ``(K,)`` uint32 labels of the objects to measure.
    boxes : numpy.ndarray
        ``(K, 4)`` int64 ``(top, left, bottom, right)`` of each object in the window (exclusive
        ends); pixels outside an object's box are not its own.

    Returns
    -------
    moments : numpy.ndarray
        ``(K, 6)`` int64: pixel count, sums of row, column, row², column², row × column, in
        coordinates relative to the box's top-left corner (exact).
    perimeter : numpy.ndarray
        ``(K,)`` float64, the 4-connected perimeter (scikit-image's ``perimeter(image, 4)`` of
        the object's box).
    """
    height, width = labels.shape
    moments = np.zeros((ids.size, 6), np.int64)
    perimeter = np.zeros(ids.size, np.float64)
    weights = np.zeros(50, np.float64)
    for code in (5, 7, 15, 17, 25, 27):
        weights[code] = 1.0
    weights[21] = math.sqrt(2.0)
    weights[33] = math.sqrt(2.0)
    weights[13] = (1.0 + math.sqrt(2.0)) / 2.0
    weights[23] = (1.0 + math.sqrt(2.0)) / 2.0
    for k in range(ids.size):
        label = ids[k]
        top, left, bottom, right = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        histogram = np.zeros(50, np.int64)
        for row in range(top, bottom):
            for col in range(left, right):
                if labels[row, col] != label:
                    continue
                y = row - top
                x = col - left
                moments[k, 0] += 1
                moments[k, 1] += y
                moments[k, 2] += x
                moments[k, 3] += y * y
                moments[k, 4] += x * x
                moments[k, 5] += y * x
                if not _on_boundary(labels, label, row, col, top, left, bottom, right):
                    continue
                code = 1
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if dy == 0 and dx == 0:
                            continue
                        ny, nx = row + dy, col + dx
                        if ny < top or ny >= bottom or nx < left or nx >= right:
                            continue
                        if labels[ny, nx] != label:
                            continue
                        if not _on_boundary(labels, label, ny, nx, top, left, bottom, right):
                            continue
                        code += 2 if dy == 0 or dx == 0 else 10
                histogram[code] += 1
        total = 0.0
        for code in range(50):
            total += histogram[code] * weights[code]
        perimeter[k] = total
    return moments, perimeter


@jit
def _on_boundary(
    labels: np.ndarray, label: Any, row: int, col: int, top: int, left: int, bottom: int,
    right: int,
) -> bool:  # pragma: no cover - compiled
    """Whether pixel (row, col) of ``label`` has a 4-neighbour outside it (or outside the box)."""
    if row == top or row == bottom - 1 or col == left or col == right - 1:
        return True
    return (labels[row - 1, col] != label or labels[row + 1, col] != label
            or labels[row, col - 1] != label or labels[row, col + 1] != label)


def grouped_quantiles(
    index: np.ndarray, values: np.ndarray, n_objects: int, quantiles: np.ndarray
) -> np.ndarray:
    """Quantiles of each object's pixels, as :func:`numpy.quantile` (linear) gives them.

    Parameters
    ----------
    index : numpy.ndarray
        ``(P,)`` int32 object of each pixel (``-1``: none).
    values : numpy.ndarray
        ``(P,)`` pixel values.
    n_objects : int
        K.
    quantiles : numpy.ndarray
        ``(Q,)`` float64 in [0, 1].

    Returns
    -------
    numpy.ndarray
        ``(Q, K)`` float64; NaN for an object without pixels.
    """
    keep = index >= 0
    objects = index[keep]
    picked = values[keep]
    order = np.lexsort((picked, objects))
    ordered = picked[order].astype(np.float64)
    counts = np.bincount(objects, minlength=n_objects)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = np.full((len(quantiles), n_objects), np.nan)
    has = counts > 0
    for row, q in enumerate(np.asarray(quantiles, dtype=np.float64)):
        virtual = q * (counts[has] - 1)
        below = np.floor(virtual).astype(np.int64)
        above = np.minimum(below + 1, counts[has] - 1)
        fraction = virtual - below
        a = ordered[starts[has] + below]
        b = ordered[starts[has] + above]
        diff = b - a
        # numpy's linear interpolation, written the same way for the same rounding.
        out[row, has] = np.where(fraction >= 0.5, b - diff * (1 - fraction), a + diff * fraction)
    return out
