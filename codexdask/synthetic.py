"""Seeded synthetic data: CODEX-like slides with ground truth, and label pairs for the repair.

Three generators, all deterministic for a given ``seed`` (a :class:`numpy.random.Generator`):

:func:`synthetic_slide`
    A multi-channel ``(C, H, W)`` uint16 slide that looks like a CODEX acquisition at 0.5 µm/px:
    patches of tissue made of touching cells (a jittered-grid Voronoi tessellation, each cell
    limited to a maximum radius), one elliptic nucleus strictly inside every cell, a DAPI channel
    of blurred, textured nuclei, membrane markers that outline subsets of cells (their pixel-wise
    maximum outlines every cell), two non-membrane markers, per-cell intensity variation and an
    uneven illumination field, background and noise inside the tissue, and tissue-free regions
    whose pixels are almost all exactly zero (so patch QC flags them).
:func:`random_disc_pairs`
    The repair stress case: random centres, a cell disc and a concentric nucleus disc per centre,
    each object painting only still-empty pixels (gapped labels, vanished objects, ties).
:func:`dense_tiling_pairs`
    Dense touching cells without background, with nuclei inside, some cells with two nuclei,
    some without, and some nuclei straddling a cell border.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

#: Channel names of :func:`synthetic_slide`, in image order.
CHANNEL_NAMES = ("DAPI", "CD45", "PanCK", "NaKATPase", "Vimentin", "Ki67")
#: The nucleus marker of :func:`synthetic_slide`.
NUCLEUS_CHANNEL = "DAPI"
#: Membrane markers of :func:`synthetic_slide`; their pixel-wise maximum outlines every cell.
MEMBRANE_CHANNELS = ("CD45", "PanCK", "NaKATPase")

# Rows of pixels handled at once by the tessellation (bounds temporary memory on large images).
_ROW_BLOCK = 1024


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    """A synthetic multiplexed slide with its ground-truth masks.

    Attributes
    ----------
    image : numpy.ndarray
        ``(C, H, W)`` uint16 pixel counts, channels in the order of ``channel_names``.
    channel_names : list of str
        ``C`` marker names: ``"DAPI"`` first, then membrane and other markers.
    cell_labels : numpy.ndarray
        ``(H, W)`` uint32 whole-cell labels 1..K (0 = background).
    nucleus_labels : numpy.ndarray
        ``(H, W)`` uint32 nucleus labels; nucleus ``k`` lies strictly inside cell ``k``.
    image_mpp : float
        Pixel size in µm.
    """

    image: np.ndarray
    channel_names: list[str]
    cell_labels: np.ndarray
    nucleus_labels: np.ndarray
    image_mpp: float = 0.5

    @property
    def nucleus_channel(self) -> str:
        """Name of the nucleus marker (``"DAPI"``)."""
        return NUCLEUS_CHANNEL

    @property
    def membrane_channels(self) -> list[str]:
        """Names of the membrane markers, whose pixel-wise maximum is the whole-cell channel."""
        return list(MEMBRANE_CHANNELS)

    def two_channel(self) -> np.ndarray:
        """The segmentation input ``(H, W, 2)`` uint16: nucleus, max of the membrane markers."""
        index = [self.channel_names.index(name) for name in MEMBRANE_CHANNELS]
        nucleus = self.image[self.channel_names.index(NUCLEUS_CHANNEL)]
        return np.stack([nucleus, self.image[index].max(axis=0)], axis=-1)


def synthetic_slide(
    height: int = 1024,
    width: int = 1024,
    *,
    seed: int = 0,
    cell_radius: float = 9.0,
    empty_fraction: float = 0.35,
    noise: float = 0.05,
    image_mpp: float = 0.5,
) -> SyntheticSlide:
    """Generate a CODEX-like slide with ground-truth cell and nucleus labels.

    Parameters
    ----------
    height, width : int
        Slide size in pixels.
    seed : int
        Seed of the random generator; equal seeds give identical slides.
    cell_radius : float
        Mean equivalent radius of a cell in pixels (9 px = 4.5 µm at 0.5 µm/px, i.e. cells of
        about 18 px or 9 µm diameter). Nuclei have about half this radius.
    empty_fraction : float
        Approximate fraction of the slide without tissue, in [0, 1). The tissue-free regions are
        large smooth blobs whose pixels are almost all exactly 0.
    noise : float
        Standard deviation of the additive Gaussian noise inside the tissue, as a fraction of a
        bright marker's typical level (about 1000 counts); shot noise is added on top.
    image_mpp : float
        Pixel size recorded in the result (the geometry is in pixels).

    Returns
    -------
    SyntheticSlide
        ``image`` ``(6, height, width)`` uint16 with channels ``CHANNEL_NAMES``, ``cell_labels``
        and ``nucleus_labels`` ``(height, width)`` uint32 (same IDs, sequential).
    """
    height, width = _check_shape((height, width))
    if not 0 <= empty_fraction < 1:
        raise InputError(f"empty_fraction must be in [0, 1), got {empty_fraction}")
    if cell_radius < 3:
        raise InputError(f"cell_radius must be at least 3 pixels, got {cell_radius}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    shape = (height, width)

    tissue = _tissue_mask(shape, empty_fraction, rng)

    # Cells: Voronoi regions of a jittered grid whose square has the mean cell area; seeds kept
    # inside the tissue (7 % dropped to vary the density), cells at most 1.2 spacings wide.
    spacing = max(4, round(cell_radius * math.sqrt(math.pi)))
    seeds_y, seeds_x = _jittered_seeds(shape, spacing, 0.2, rng)
    iy = np.clip(np.round(seeds_y).astype(np.int64), 0, height - 1)
    ix = np.clip(np.round(seeds_x).astype(np.int64), 0, width - 1)
    keep = tissue[iy, ix] & (rng.random(seeds_y.shape) < 0.93)
    seeds_y[~keep] = np.nan
    cells = _voronoi(shape, spacing, seeds_y, seeds_x, max_radius=1.2 * spacing)

    # Nuclei: one ellipse per cell around its seed, clipped to the cell minus its inner boundary.
    n = int(seeds_y.size)
    flat_y, flat_x = seeds_y.ravel(), seeds_x.ravel()
    cy = np.concatenate([[0.0], flat_y + rng.normal(0, 0.06 * spacing, n)])
    cx = np.concatenate([[0.0], flat_x + rng.normal(0, 0.06 * spacing, n)])
    r_nuc = 0.5 * cell_radius
    semi_a = np.concatenate([[1.0], r_nuc * rng.uniform(1.0, 1.3, n)])
    semi_b = np.concatenate([[1.0], r_nuc * rng.uniform(0.7, 0.95, n)])
    theta = np.concatenate([[0.0], rng.uniform(0, np.pi, n)])
    nuclei = _ellipse_members(cells, cy, cx, semi_a, semi_b, theta)
    nuclei &= ~_inner_boundary(cells)
    nucleus_labels = np.where(nuclei, cells, 0).astype(np.uint32)

    # Drop cells whose nucleus was clipped below 30 % of the mean nucleus area, then relabel both
    # masks 1..K with shared IDs.
    nucleus_area = np.bincount(nucleus_labels.ravel(), minlength=n + 1)
    keep_ids = nucleus_area >= 0.3 * np.pi * r_nuc**2
    keep_ids[0] = False
    new_ids = np.zeros(n + 1, dtype=np.uint32)
    new_ids[keep_ids] = np.arange(1, int(keep_ids.sum()) + 1, dtype=np.uint32)
    cells = new_ids[cells]
    nucleus_labels = new_ids[nucleus_labels]
    n_cells = int(keep_ids.sum())

    image = _render_channels(cells, nucleus_labels, n_cells, noise, rng)
    return SyntheticSlide(
        image=image,
        channel_names=list(CHANNEL_NAMES),
        cell_labels=cells,
        nucleus_labels=nucleus_labels,
        image_mpp=float(image_mpp),
    )


def random_disc_pairs(
    n_cells: int,
    shape: tuple[int, int],
    *,
    seed: int = 0,
    radius_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random concentric cell and nucleus discs, painted like the reference's stress case.

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
    height, width = _check_shape(shape)
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
    height, width = _check_shape(shape)
    if cell_size < 6:
        raise InputError(f"cell_size must be at least 6 pixels, got {cell_size}")
    rng = np.random.default_rng(seed)
    spacing = float(cell_size)
    seeds_y, seeds_x = _jittered_seeds((height, width), spacing, 0.2, rng)
    cell = _voronoi((height, width), cell_size, seeds_y, seeds_x, max_radius=np.inf)

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


# --------------------------------------------------------------------------------------------
# helpers


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise InputError(f"shape must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _tissue_mask(
    shape: tuple[int, int], empty_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``(H, W)`` bool tissue: a section in the middle of the slide with an irregular outline and
    holes (a smooth random field plus a bump centred on the slide), thresholded so that about
    ``empty_fraction`` of the slide is empty."""
    height, width = shape
    if empty_fraction == 0:
        return np.ones(shape, dtype=bool)
    # Coarse grid step: empty regions are a sizeable fraction of the slide across, so that some
    # patches of a regular grid hold no tissue at all.
    step = max(64, max(height, width) // 3)
    coarse = rng.standard_normal((height // step + 3, width // step + 3))
    field = ndi.zoom(ndi.gaussian_filter(coarse, 0.7), step, order=1)[:height, :width]
    yy = (np.arange(height) - height / 2) / (height / 2)
    xx = (np.arange(width) - width / 2) / (width / 2)
    bump = -(yy[:, None] ** 2 + xx[None, :] ** 2)
    field = field / max(field.std(), 1e-12) + bump
    return field > np.quantile(field, empty_fraction)


def _jittered_seeds(
    shape: tuple[int, int], spacing: float, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seed coordinates ``(gy, gx)`` float64: one per grid square, jittered by ±jitter·spacing."""
    grid = (math.ceil(shape[0] / spacing), math.ceil(shape[1] / spacing))
    gy, gx = np.indices(grid, dtype=np.float64)
    seeds_y = (gy + 0.5 + rng.uniform(-jitter, jitter, grid)) * spacing - 0.5
    seeds_x = (gx + 0.5 + rng.uniform(-jitter, jitter, grid)) * spacing - 0.5
    return seeds_y, seeds_x


def _block_coords(
    g0: int, g1: int, grid_w: int, spacing: int, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of grid rows ``g0:g1`` in the block layout ``(rows, s, grid_w, s)``."""
    local = np.arange(spacing)
    ys: np.ndarray = (np.arange(g0, g1)[:, None] * spacing + local)[:, :, None, None]
    xs: np.ndarray = (np.arange(grid_w)[:, None] * spacing + local)[None, None]
    return ys.astype(dtype), xs.astype(dtype)


def _unblock(blocks: np.ndarray, out: np.ndarray, g0: int, spacing: int) -> None:
    """Write ``(rows, s, grid_w, s)`` blocks into rows ``g0 * s ...`` of ``out`` (cropped)."""
    rows = blocks.shape[0] * spacing
    flat = blocks.reshape(rows, -1)
    y0 = g0 * spacing
    y1 = min(y0 + rows, out.shape[0])
    out[y0:y1] = flat[: y1 - y0, : out.shape[1]]


def _neighbour(param: np.ndarray, g0: int, g1: int, dy: int, dx: int) -> np.ndarray:
    """``param`` (padded by 1) of the neighbour ``(dy, dx)`` of grid rows ``g0:g1``, as
    ``(rows, 1, grid_w, 1)``."""
    grid_w = param.shape[1] - 2
    return param[g0 + 1 + dy : g1 + 1 + dy, 1 + dx : 1 + dx + grid_w][:, None, :, None]


def _voronoi(
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
    step = max(1, _ROW_BLOCK // spacing)
    for g0 in range(0, grid_h, step):
        g1 = min(g0 + step, grid_h)
        ys, xs = _block_coords(g0, g1, grid_w, spacing)
        best = np.full((g1 - g0, spacing, grid_w, spacing), max_radius**2, dtype=np.float64)
        best_id = np.zeros(best.shape, dtype=np.uint32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sy = _neighbour(pad_y, g0, g1, dy, dx)
                sx = _neighbour(pad_x, g0, g1, dy, dx)
                d2 = (ys - sy) ** 2 + (xs - sx) ** 2
                closer = d2 < best  # NaN (absent seed) compares False
                np.copyto(best, d2, where=closer)
                np.copyto(best_id, _neighbour(ids, g0, g1, dy, dx), where=closer)
        _unblock(best_id, labels, g0, spacing)
    return labels


def _ellipse_members(
    labels: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    semi_a: np.ndarray,
    semi_b: np.ndarray,
    theta: np.ndarray,
) -> np.ndarray:
    """``(H, W)`` bool: pixels inside the ellipse of their own label (parameters by label)."""
    quad_a, quad_b, quad_c = _quadratic_form(semi_a, semi_b, theta)
    mask = np.zeros(labels.shape, dtype=bool)
    xs = np.arange(labels.shape[1], dtype=np.float64)
    for y0 in range(0, labels.shape[0], _ROW_BLOCK):
        block = labels[y0 : y0 + _ROW_BLOCK]
        ys = np.arange(y0, y0 + block.shape[0], dtype=np.float64)[:, None]
        dy, dx = ys - cy[block], xs - cx[block]
        inside = quad_a[block] * dx * dx + quad_b[block] * dx * dy + quad_c[block] * dy * dy <= 1
        mask[y0 : y0 + block.shape[0]] = inside & (block > 0)
    return mask


def _quadratic_form(
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
        slot = (cy, cx, *_quadratic_form(semi_a, semi_b, theta))
        padded.append(
            (
                [np.pad(p.astype(np.float32), 1, constant_values=np.nan) for p in slot],
                np.pad(ids[..., k].astype(np.uint32), 1, constant_values=none),
            )
        )
    out = np.zeros(shape, dtype=np.uint32)
    step = max(1, _ROW_BLOCK // spacing)
    for g0 in range(0, grid_h, step):
        g1 = min(g0 + step, grid_h)
        ys, xs = _block_coords(g0, g1, grid_w, spacing, np.float32)
        best = np.full((g1 - g0, spacing, grid_w, spacing), none, dtype=np.uint32)
        for geometry, slot_ids in padded:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    cy, cx, qa, qb, qc = (_neighbour(p, g0, g1, dy, dx) for p in geometry)
                    ddy, ddx = ys - cy, xs - cx
                    inside = qa * ddx * ddx + qb * ddx * ddy + qc * ddy * ddy <= 1.0  # NaN: False
                    nid = _neighbour(slot_ids, g0, g1, dy, dx)
                    np.copyto(best, np.minimum(best, nid), where=inside)
        best[best == none] = 0
        _unblock(best, out, g0, spacing)
    return out


def _inner_boundary(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: labelled pixels with a 4-neighbour of another value (not the image edge)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _render_channels(
    cells: np.ndarray,
    nuclei: np.ndarray,
    n_cells: int,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render the ``CHANNEL_NAMES`` marker images ``(C, H, W)`` uint16 from the masks."""
    shape = cells.shape
    # Cell types: 0 epithelial (PanCK+), 1 immune (CD45+), 2 stromal (Vimentin+); NaKATPase is on
    # every non-immune cell and dim on immune cells, so every cell has a bright membrane marker.
    cell_type = np.concatenate([[-1], rng.choice(3, n_cells, p=[0.45, 0.3, 0.25])])

    def per_cell(mean: float, sigma: float = 0.5) -> np.ndarray:
        return np.concatenate([[0.0], mean * rng.lognormal(0.0, sigma, n_cells)])

    membrane = _inner_boundary(cells)
    cytoplasm = (cells > 0) & ~membrane & (nuclei == 0)
    is_nucleus = nuclei > 0
    # Chromatin texture: smoothed multiplicative noise.
    texture = 1.0 + 0.25 * ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    proliferating = np.concatenate([[False], rng.random(n_cells) < 0.15])

    level_nak = per_cell(900.0) * np.where(cell_type == 1, 0.3, 1.0)
    signals = {
        "DAPI": np.where(is_nucleus, per_cell(2500.0, 0.5)[nuclei] * texture, 0.0),
        "CD45": np.where(membrane, per_cell(1200.0)[cells] * (cell_type == 1)[cells], 0.0),
        "PanCK": np.where(
            membrane | cytoplasm,
            per_cell(1100.0)[cells] * (cell_type == 0)[cells] * np.where(membrane, 1.0, 0.15),
            0.0,
        ),
        "NaKATPase": np.where(membrane, level_nak[cells], 0.0),
        "Vimentin": np.where(cytoplasm, per_cell(700.0)[cells] * (cell_type == 2)[cells], 0.0),
        "Ki67": np.where(is_nucleus, per_cell(1500.0)[nuclei] * proliferating[nuclei], 0.0),
    }
    background = {
        "DAPI": 40.0,
        "CD45": 25.0,
        "PanCK": 30.0,
        "NaKATPase": 30.0,
        "Vimentin": 20.0,
        "Ki67": 10.0,
    }
    # Uneven staining/illumination: a smooth multiplicative field between about 0.5 and 1.5.
    step = max(32, max(shape) // 4)
    coarse = rng.uniform(-1.0, 1.0, (shape[0] // step + 3, shape[1] // step + 3))
    illumination = 1.0 + 0.5 * ndi.zoom(coarse, step, order=1)[: shape[0], : shape[1]]
    illumination = illumination.astype(np.float32)
    # Tissue = cells plus a thin margin; background and noise live only there.
    tissue = ndi.binary_dilation(cells > 0, iterations=3)
    image = np.empty((len(CHANNEL_NAMES),) + shape, dtype=np.uint16)
    for c, name in enumerate(CHANNEL_NAMES):
        signal = ndi.gaussian_filter(signals[name].astype(np.float32), 1.0) * illumination
        signal += np.where(tissue, background[name], 0.0).astype(np.float32)
        # Shot noise (Gaussian approximation of Poisson) and read noise, inside the tissue only.
        sd = np.sqrt(signal) + np.float32(noise * 1000.0)
        signal += np.where(tissue, sd * rng.standard_normal(shape, dtype=np.float32), 0.0)
        # Sparse hot pixels in empty regions, so they are almost (not entirely) zero.
        hot = ~tissue & (rng.random(shape, dtype=np.float32) < 0.003)
        signal[hot] += rng.integers(1, 30, int(hot.sum()))
        image[c] = np.clip(np.round(signal), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image
