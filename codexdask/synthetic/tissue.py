"""A synthetic CODEX-like slide with its ground truth (see :func:`synthetic_slide`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage as ndi

from codexdask.errors import InputError
from codexdask.repair.boundaries import boundary_pixels
from codexdask.store.channels import wholecell_channel
from codexdask.synthetic.lattice import check_shape, ellipse_members, jittered_seeds, voronoi

__all__ = ["CHANNEL_NAMES", "MEMBRANE_CHANNELS", "NUCLEUS_CHANNEL", "SyntheticSlide",
           "synthetic_slide"]

#: Channel names of :func:`synthetic_slide`, in image order.
CHANNEL_NAMES = ("DAPI", "CD45", "PanCK", "NaKATPase", "Vimentin", "Ki67")
#: The nucleus marker of :func:`synthetic_slide`.
NUCLEUS_CHANNEL = "DAPI"
#: Membrane markers of :func:`synthetic_slide`; their pixel-wise maximum outlines every cell.
MEMBRANE_CHANNELS = ("CD45", "PanCK", "NaKATPase")


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
        nucleus = self.image[self.channel_names.index(NUCLEUS_CHANNEL)]
        out = np.stack([nucleus, np.zeros_like(nucleus)], axis=-1)
        wholecell_channel([self.channel_names.index(name) for name in MEMBRANE_CHANNELS],
                          self.image.__getitem__, out[..., 1])
        return out


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
    height, width = check_shape((height, width))
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
    seeds_y, seeds_x = jittered_seeds(shape, spacing, 0.2, rng)
    iy = np.clip(np.round(seeds_y).astype(np.int64), 0, height - 1)
    ix = np.clip(np.round(seeds_x).astype(np.int64), 0, width - 1)
    keep = tissue[iy, ix] & (rng.random(seeds_y.shape) < 0.93)
    seeds_y[~keep] = np.nan
    cells = voronoi(shape, spacing, seeds_y, seeds_x, max_radius=1.2 * spacing)

    # Nuclei: one ellipse per cell around its seed, clipped to the cell minus its inner boundary.
    n = int(seeds_y.size)
    flat_y, flat_x = seeds_y.ravel(), seeds_x.ravel()
    cy = np.concatenate([[0.0], flat_y + rng.normal(0, 0.06 * spacing, n)])
    cx = np.concatenate([[0.0], flat_x + rng.normal(0, 0.06 * spacing, n)])
    r_nuc = 0.5 * cell_radius
    semi_a = np.concatenate([[1.0], r_nuc * rng.uniform(1.0, 1.3, n)])
    semi_b = np.concatenate([[1.0], r_nuc * rng.uniform(0.7, 0.95, n)])
    theta = np.concatenate([[0.0], rng.uniform(0, np.pi, n)])
    nuclei = ellipse_members(cells, cy, cx, semi_a, semi_b, theta)
    nuclei &= ~boundary_pixels(cells)
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

    membrane = boundary_pixels(cells)
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
