"""Jittered grids, Voronoi cells and ellipses: the geometry the synthetic generators share.

Grid computations work on blocks of grid rows laid out as ``(rows, s, grid_w, s)`` (``s`` the
grid spacing in pixels), so that each pixel only looks at the seeds of the 3x3 grid squares
around its own and temporary memory is bounded by ``ROW_BLOCK`` pixel rows.
"""

from __future__ import annotations

import math

import numpy as np

from codexdask.errors import InputError

__all__ = [
    "ROW_BLOCK",
    "block_coords",
    "check_shape",
    "ellipse_members",
    "jittered_seeds",
    "neighbour",
    "quadratic_form",
    "unblock",
    "voronoi",
]

#: Rows of pixels handled at once by the tessellation (bounds temporary memory on large images).
ROW_BLOCK = 1024


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` as two positive ints; InputError otherwise."""
    if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise InputError(f"shape must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])



def jittered_seeds(
    shape: tuple[int, int], spacing: float, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seed coordinates ``(gy, gx)`` float64: one per grid square, jittered by ±jitter·spacing."""
    grid = (math.ceil(shape[0] / spacing), math.ceil(shape[1] / spacing))
    gy, gx = np.indices(grid, dtype=np.float64)
    seeds_y = (gy + 0.5 + rng.uniform(-jitter, jitter, grid)) * spacing - 0.5
    seeds_x = (gx + 0.5 + rng.uniform(-jitter, jitter, grid)) * spacing - 0.5
    return seeds_y, seeds_x


def block_coords(
    g0: int, g1: int, grid_w: int, spacing: int, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of grid rows ``g0:g1`` in the block layout ``(rows, s, grid_w, s)``."""
    local = np.arange(spacing)
    ys: np.ndarray = (np.arange(g0, g1)[:, None] * spacing + local)[:, :, None, None]
    xs: np.ndarray = (np.arange(grid_w)[:, None] * spacing + local)[None, None]
    return ys.astype(dtype), xs.astype(dtype)


def unblock(blocks: np.ndarray, out: np.ndarray, g0: int, spacing: int) -> None:
    """Write ``(rows, s, grid_w, s)`` blocks into rows ``g0 * s ...`` of ``out`` (cropped)."""
    rows = blocks.shape[0] * spacing
    flat = blocks.reshape(rows, -1)
    y0 = g0 * spacing
    y1 = min(y0 + rows, out.shape[0])
    out[y0:y1] = flat[: y1 - y0, : out.shape[1]]


def neighbour(param: np.ndarray, g0: int, g1: int, dy: int, dx: int) -> np.ndarray:
    """``param`` (padded by 1) of the neighbour ``(dy, dx)`` of grid rows ``g0:g1``, as
    ``(rows, 1, grid_w, 1)``."""
    grid_w = param.shape[1] - 2
    return param[g0 + 1 + dy : g1 + 1 + dy, 1 + dx : 1 + dx + grid_w][:, None, :, None]


def voronoi(
    shape: tuple[int, int],
    spacing: int,
    seeds_y: np.ndarray,
    seeds_x: np.ndarray,
    *,
    max_radius: float,
) -> np.ndarray:
    """``(H, W)`` uint32: each pixel labelled with its nearest seed among the 3×3 grid squares
    around its own.

    Seeds with a NaN ``y`` are absent. This is the exact Voronoi tessellation for a jitter up to
    0.25 of the spacing and a ``max_radius`` up to 1.25 spacings. Labels are the 1-based row-major
    index of the seed in the grid; pixels farther than ``max_radius`` from every seed are 0.
    """
    grid_h, grid_w = seeds_y.shape
    pad_y = np.pad(seeds_y, 1, constant_values=np.nan)
    pad_x = np.pad(seeds_x, 1, constant_values=np.nan)
    ids = np.pad(np.arange(1, grid_h * grid_w + 1, dtype=np.uint32).reshape(grid_h, grid_w), 1)
    labels = np.zeros(shape, dtype=np.uint32)
    step = max(1, ROW_BLOCK // spacing)
    for g0 in range(0, grid_h, step):
        g1 = min(g0 + step, grid_h)
        ys, xs = block_coords(g0, g1, grid_w, spacing)
        best = np.full((g1 - g0, spacing, grid_w, spacing), max_radius**2, dtype=np.float64)
        best_id = np.zeros(best.shape, dtype=np.uint32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sy = neighbour(pad_y, g0, g1, dy, dx)
                sx = neighbour(pad_x, g0, g1, dy, dx)
                d2 = (ys - sy) ** 2 + (xs - sx) ** 2
                closer = d2 < best  # NaN (absent seed) compares False
                np.copyto(best, d2, where=closer)
                np.copyto(best_id, neighbour(ids, g0, g1, dy, dx), where=closer)
        unblock(best_id, labels, g0, spacing)
    return labels


def ellipse_members(
    labels: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    semi_a: np.ndarray,
    semi_b: np.ndarray,
    theta: np.ndarray,
) -> np.ndarray:
    """``(H, W)`` bool: pixels inside the ellipse of their own label (parameters by label)."""
    quad_a, quad_b, quad_c = quadratic_form(semi_a, semi_b, theta)
    mask = np.zeros(labels.shape, dtype=bool)
    xs = np.arange(labels.shape[1], dtype=np.float64)
    for y0 in range(0, labels.shape[0], ROW_BLOCK):
        block = labels[y0 : y0 + ROW_BLOCK]
        ys = np.arange(y0, y0 + block.shape[0], dtype=np.float64)[:, None]
        dy, dx = ys - cy[block], xs - cx[block]
        inside = quad_a[block] * dx * dx + quad_b[block] * dx * dy + quad_c[block] * dy * dy <= 1
        mask[y0 : y0 + block.shape[0]] = inside & (block > 0)
    return mask


def quadratic_form(
    semi_a: np.ndarray, semi_b: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients ``(A, B, C)`` of ellipses ``A dx² + B dx dy + C dy² <= 1``."""
    cos, sin = np.cos(theta), np.sin(theta)
    inv_a2, inv_b2 = 1.0 / semi_a**2, 1.0 / semi_b**2
    return (
        cos**2 * inv_a2 + sin**2 * inv_b2,
        2 * cos * sin * (inv_a2 - inv_b2),
        sin**2 * inv_a2 + cos**2 * inv_b2,
    )
