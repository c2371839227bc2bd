"""The convex area of objects, counted as scikit-image's ``convex_hull_image`` counts it.

Exact integer geometry in doubled coordinates (pixel ``(r, c)`` has the edge midpoints
``(2r ± 1, 2c)`` and ``(2r, 2c ± 1)``), compiled with numba
(``docs/quantification.md``, shape).
"""

from __future__ import annotations

import math

import numpy as np

from codexdask.postprocess._jit import jit

__all__ = ["convex_areas"]


@jit
def convex_areas(
    labels: np.ndarray, ids: np.ndarray, boxes: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Pixels of each object's convex hull image, as scikit-image's ``convex_hull_image`` counts.

    The hull is that of the midpoints of the pixels' edges; a pixel centre on the hull's
    boundary counts. Computed in doubled integer coordinates (pixel ``(r, c)`` has the edge
    midpoints ``(2r ± 1, 2c)`` and ``(2r, 2c ± 1)``), so every decision is exact.

    Parameters
    ----------
    labels, ids, boxes
        As for :func:`shape_sums`.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` int64.
    """
    areas = np.zeros(ids.size, np.int64)
    most = 1
    for k in range(ids.size):
        most = max(most, boxes[k, 2] - boxes[k, 0])
    first = np.empty(most, np.int64)
    last = np.empty(most, np.int64)
    ys = np.empty(4 * most + 4, np.int64)
    xs = np.empty(4 * most + 4, np.int64)
    hull_y = np.empty(8 * most + 9, np.int64)
    hull_x = np.empty(8 * most + 9, np.int64)
    for k in range(ids.size):
        label = ids[k]
        top, left, bottom, right = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        rows = bottom - top
        for row in range(rows):  # each row's leftmost and rightmost pixel (-1: none)
            first[row] = -1
            for col in range(left, right):
                if labels[top + row, col] == label:
                    if first[row] < 0:
                        first[row] = col - left
                    last[row] = col - left
        # The candidate vertices in (y, x) order, doubled coordinates: at an even y = 2r the
        # row's outer side midpoints, at an odd y the top and bottom midpoints of the rows
        # around it. Only each y's leftmost and rightmost point can be a vertex.
        n = 0
        for y in range(-1, 2 * rows):
            low, high = 1 << 40, -(1 << 40)
            if y % 2 == 0:
                if first[y // 2] >= 0:
                    low, high = 2 * first[y // 2] - 1, 2 * last[y // 2] + 1
            else:
                for row in ((y + 1) // 2, (y - 1) // 2):
                    if 0 <= row < rows and first[row] >= 0:
                        low = min(low, 2 * first[row])
                        high = max(high, 2 * last[row])
            if low <= high:
                ys[n], xs[n] = y, low
                n += 1
                if high != low:
                    ys[n], xs[n] = y, high
                    n += 1
        size = _hull(ys, xs, n, hull_y, hull_x)
        areas[k] = _centres_in_polygon(hull_y[:size], hull_x[:size], rows)
    return areas


@jit
def _hull(ys: np.ndarray, xs: np.ndarray, n: int, hull_y: np.ndarray,
          hull_x: np.ndarray) -> int:  # pragma: no cover - compiled
    """The convex hull of the first ``n`` points, given in (y, x) order (monotone chain): its
    vertices into ``hull_y``, ``hull_x`` (room for ``2n + 1``); returns their count."""
    size = 0
    for sweep in range(2):
        start = size
        for j in range(n):
            i = j if sweep == 0 else n - 1 - j
            py, px = ys[i], xs[i]
            while size >= start + 2:
                ay, ax = hull_y[size - 2], hull_x[size - 2]
                by, bx = hull_y[size - 1], hull_x[size - 1]
                if (by - ay) * (px - ax) - (bx - ax) * (py - ay) <= 0:
                    size -= 1
                else:
                    break
            hull_y[size], hull_x[size] = py, px
            size += 1
        size -= 1  # the last point of a sweep starts the next
    return size


@jit
def _centres_in_polygon(
    hull_y: np.ndarray, hull_x: np.ndarray, rows: int
) -> int:  # pragma: no cover - compiled
    """Pixel centres ``(2r, 2c)``, ``0 <= r < rows``, inside or on a convex polygon."""
    n = hull_y.size
    total = 0
    for r in range(rows):
        y = 2 * r
        low = np.inf
        high = -np.inf
        for i in range(n):
            ay, ax = hull_y[i], hull_x[i]
            by, bx = hull_y[(i + 1) % n], hull_x[(i + 1) % n]
            if y < min(ay, by) or y > max(ay, by):
                continue
            if ay == by:
                low = min(low, ax, bx)
                high = max(high, ax, bx)
            else:
                x = ax + (y - ay) * (bx - ax) / (by - ay)
                low = min(low, x)
                high = max(high, x)
        if high >= low:
            first = math.ceil(low / 2.0)
            last = math.floor(high / 2.0)
            if last >= first:
                total += last - first + 1
    return total
