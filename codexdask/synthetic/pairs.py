"""Label pairs (cell, nucleus) for the repair: the stress case and dense tilings."""

from __future__ import annotations

import numpy as np

from codexdask.errors import InputError
from codexdask.synthetic.lattice import (
    ROW_BLOCK,
    block_coords,
    check_shape,
    jittered_seeds,
    neighbour,
    quadratic_form,
    unblock,
    voronoi,
)

__all__ = ["dense_tiling_pairs", "random_disc_pairs"]


def random_disc_pairs(
    n_cells: int,
    shape: tuple[int, int],
    *,
    seed: int = 0,
    radius_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random concentric cell and nucleus discs, painted like the original pipeline's stress case.

    Object ``i`` (1-based, in generation order) has a random integer centre, a cell disc of
    radius ``randint(20, 50) * radius_scale`` and a nucleus disc of radius
    ``randint(10, 25) * radius_scale``. Objects paint only pixels that are still empty in their
    mask, so lower labels win; discs covered entirely by earlier ones vanish, leaving gaps in the
    labels, and many cells overlap several nuclei equally (ties).

    Parameters
    ----------
    n_cells : int
        Number of centres (objects that vanish are not replaced).
    shape : (int, int)
        Image height and width.
    seed : int
        Seed of the random generator.
    radius_scale : float
        Factor applied to both radius ranges (e.g. 0.25 for small test images).

    Returns
    -------
    cell, nucleus : numpy.ndarray
        ``(H, W)`` uint32 label images.
    """
    height, width = check_shape(shape)
    if n_cells < 0:
        raise InputError(f"n_cells must be >= 0, got {n_cells}")
    if radius_scale <= 0:
        raise InputError(f"radius_scale must be > 0, got {radius_scale}")
    rng = np.random.default_rng(seed)
    centre_y = rng.integers(0, height, n_cells)
    centre_x = rng.integers(0, width, n_cells)
    r_cell = np.maximum(1, np.round(rng.integers(20, 50, n_cells) * radius_scale)).astype(int)
    r_nuc = np.maximum(1, np.round(rng.integers(10, 25, n_cells) * radius_scale)).astype(int)
    cell = np.zeros((height, width), dtype=np.uint32)
    nucleus = np.zeros((height, width), dtype=np.uint32)
    # Painting in reverse label order with overwriting gives "lowest label wins", i.e. the same
    # result as painting in label order onto empty pixels only.
    stamps: dict[int, np.ndarray] = {}
    for i in range(n_cells - 1, -1, -1):
        for out, r in ((cell, int(r_cell[i])), (nucleus, int(r_nuc[i]))):
            stamp = stamps.get(r)
            if stamp is None:
                yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
                stamp = stamps[r] = yy * yy + xx * xx <= r * r
            y, x = int(centre_y[i]), int(centre_x[i])
            y0, y1 = max(y - r, 0), min(y + r + 1, height)
            x0, x1 = max(x - r, 0), min(x + r + 1, width)
            window = stamp[y0 - (y - r) : y1 - (y - r), x0 - (x - r) : x1 - (x - r)]
            np.copyto(out[y0:y1, x0:x1], np.uint32(i + 1), where=window)
    return cell, nucleus


def dense_tiling_pairs(
    shape: tuple[int, int],
    *,
    cell_size: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense touching cells (no background) with nuclei, for the repair at any scale.

    Cells are the Voronoi tessellation of a jittered grid of spacing ``cell_size`` covering every
    pixel. Most cells hold one elliptic nucleus; about 8 % hold two smaller ones, about 4 % none,
    and about 6 % of the nuclei are shifted so that they straddle a border with a neighbour.
    Where nuclei overlap the lower nucleus label wins. Nucleus labels are sequential in
    generation order, independent of cell labels.

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    cell_size : int
        Grid spacing in pixels (about the cell diameter); at least 6.
    seed : int
        Seed of the random generator.

    Returns
    -------
    cell, nucleus : numpy.ndarray
        ``(H, W)`` uint32 label images; ``cell`` has no zero pixels.
    """
    height, width = check_shape(shape)
    if cell_size < 6:
        raise InputError(f"cell_size must be at least 6 pixels, got {cell_size}")
    rng = np.random.default_rng(seed)
    spacing = float(cell_size)
    seeds_y, seeds_x = jittered_seeds((height, width), spacing, 0.2, rng)
    cell = voronoi((height, width), cell_size, seeds_y, seeds_x, max_radius=np.inf)

    # Up to two nucleus slots per grid cell; slot k of grid cell g is nucleus candidate (g, k).
    grid_shape = seeds_y.shape
    kind = rng.random(grid_shape)
    two = kind < 0.08
    none = (kind >= 0.08) & (kind < 0.12)
    straddle = (rng.random(grid_shape) < 0.06) & ~none
    angle = rng.uniform(0, 2 * np.pi, grid_shape)
    offset = np.where(straddle, 0.5, 0.0) + np.where(two, 0.2, 0.0)
    slots: list[tuple[np.ndarray, ...]] = []
    for k, sign in enumerate((1.0, -1.0)):
        present = ~none if k == 0 else two
        size = np.where(two, 0.17, 0.25) * spacing
        slots.append(
            (
                np.where(present, seeds_y + sign * offset * spacing * np.sin(angle), np.nan),
                seeds_x + sign * offset * spacing * np.cos(angle),
                size * rng.uniform(1.0, 1.3, grid_shape),
                size * rng.uniform(0.7, 1.0, grid_shape),
                rng.uniform(0, np.pi, grid_shape),
            )
        )
    # Number present nuclei sequentially (grid order, first slot before second).
    present_all = np.stack([~np.isnan(s[0]) for s in slots], axis=-1)
    ids = np.zeros(present_all.shape, dtype=np.int64)
    ids[present_all] = np.arange(1, int(present_all.sum()) + 1)
    nucleus = _paint_grid_ellipses((height, width), cell_size, slots, ids)
    return cell, nucleus



def _paint_grid_ellipses(
    shape: tuple[int, int],
    spacing: int,
    slots: list[tuple[np.ndarray, ...]],
    ids: np.ndarray,
) -> np.ndarray:
    """``(H, W)`` uint32 nucleus image: each pixel takes the lowest ID among the nuclei of the
    3×3 grid squares around its own whose ellipse contains it.

    ``slots[k] = (cy, cx, semi_a, semi_b, theta)``, each ``(grid_h, grid_w)``, NaN ``cy`` for no
    nucleus; ``ids[..., k]`` holds the nucleus IDs of slot ``k``.
    """
    grid_h, grid_w = slots[0][0].shape
    none = np.iinfo(np.uint32).max
    padded: list[tuple[list[np.ndarray], np.ndarray]] = []
    for k, (cy, cx, semi_a, semi_b, theta) in enumerate(slots):
        slot = (cy, cx, *quadratic_form(semi_a, semi_b, theta))
        padded.append(
            (
                [np.pad(p.astype(np.float32), 1, constant_values=np.nan) for p in slot],
                np.pad(ids[..., k].astype(np.uint32), 1, constant_values=none),
            )
        )
    out = np.zeros(shape, dtype=np.uint32)
    step = max(1, ROW_BLOCK // spacing)
    for g0 in range(0, grid_h, step):
        g1 = min(g0 + step, grid_h)
        ys, xs = block_coords(g0, g1, grid_w, spacing, np.float32)
        best = np.full((g1 - g0, spacing, grid_w, spacing), none, dtype=np.uint32)
        for geometry, slot_ids in padded:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    cy, cx, qa, qb, qc = (neighbour(p, g0, g1, dy, dx) for p in geometry)
                    ddy, ddx = ys - cy, xs - cx
                    inside = qa * ddx * ddx + qb * ddx * ddy + qc * ddy * ddy <= 1.0  # NaN: False
                    nid = neighbour(slot_ids, g0, g1, dy, dx)
                    np.copyto(best, np.minimum(best, nid), where=inside)
        best[best == none] = 0
        unblock(best, out, g0, spacing)
    return out
