"""Inputs for the post-processing tests and benchmark: Mesmer-like maps and adversarial arrays.

``mesmer_like_maps`` draws tissue-like cells (Voronoi regions of random centres, about one per
400 px², cut at 11 px from the centre; nuclei: 5 px discs) and renders the two maps Mesmer's
heads predict for them: an inner-distance map that peaks at 1 in each object's interior and
decays towards its edge, and an interior-probability map (the object minus its 1-px edge),
both blurred (sigma 1) with Gaussian noise (sd 0.02) and clipped to [0, 1].

``adversarial_maps`` yields small ``(name, maxima, interior)`` cases built to hit the corners of
the algorithms: plateaus and equal maxima, ties in the flood, constant maps, 1-pixel and thin
images, both float widths.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi

CELL_RADIUS = 11.0
NUCLEUS_RADIUS = 5.0
PIXELS_PER_CELL = 400

#: deepcell 0.12.10 ``Mesmer.predict`` post-processing keywords.
MESMER_WHOLE_CELL = dict(maxima_threshold=0.075, maxima_smooth=0, interior_threshold=0.2,
                         interior_smooth=2, small_objects_threshold=15, fill_holes_threshold=15,
                         radius=2)
MESMER_NUCLEAR = {**MESMER_WHOLE_CELL, "maxima_threshold": 0.1}


def mesmer_like_maps(
    height: int, width: int, seed: int = 0, compartment: str = "whole-cell",
    dtype: type = np.float32, scale: float = 1.0, noise: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """``(maxima, interior)``: two ``(1, H, W, 1)`` maps in [0, 1] of ``dtype``.

    ``scale`` multiplies the objects' radii (and divides their density by its square);
    ``noise`` is the standard deviation of the added Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    count = max(1, int(height * width / (PIXELS_PER_CELL * scale**2)))
    centres = np.zeros((height, width), bool)
    centres[rng.integers(0, height, count), rng.integers(0, width, count)] = True
    distance, (iy, ix) = ndi.distance_transform_edt(~centres, return_indices=True)
    owner = (iy * width + ix + 1).astype(np.int64)
    radius = scale * (CELL_RADIUS if compartment == "whole-cell" else NUCLEUS_RADIUS)
    objects = np.where(distance <= radius, owner, 0)

    edge = (ndi.maximum_filter(objects, 3) != ndi.minimum_filter(objects, 3)) & (objects > 0)
    inside = (objects > 0) & ~edge
    depth = ndi.distance_transform_edt(inside)
    _, index = np.unique(objects, return_inverse=True)
    index = index.reshape(objects.shape)
    deepest = ndi.maximum(depth, index, np.arange(index.max() + 1))[index]
    area = np.bincount(index.ravel())[index]
    inner = np.where(inside, 1.0 / (1.0 + (deepest - depth) * 2.0 / np.sqrt(area)), 0.0)

    maps = []
    for clean in (inner, inside.astype(float)):
        noisy = ndi.gaussian_filter(clean, 1.0) + rng.normal(0.0, noise, clean.shape)
        maps.append(np.clip(noisy, 0.0, 1.0).astype(dtype)[None, ..., None])
    return maps[0], maps[1]


def adversarial_maps(seed: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Named ``(maxima, interior)`` pairs of ``(1, H, W, 1)`` maps (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        for shape in ((1, 1), (1, 37), (37, 1), (2, 41), (41, 2), (3, 3), (64, 64)):
            yield f"zeros-{shape}-{tag}", _map(np.zeros(shape), dtype), _map(np.zeros(shape), dtype)
            yield f"ones-{shape}-{tag}", _map(np.ones(shape), dtype), _map(np.ones(shape), dtype)
            noise = rng.random(shape)
            yield f"noise-{shape}-{tag}", _map(noise, dtype), _map(rng.random(shape), dtype)
            # few levels: plateaus, equal maxima and equal elevations everywhere
            yield (f"levels-{shape}-{tag}", _map(np.round(noise * 4) / 4, dtype),
                   _map(np.round(rng.random(shape) * 3) / 3, dtype))
        # equal maxima in one plateau and in separate peaks, on a flat interior
        peaks = np.zeros((40, 60))
        peaks[10:14, 10:14] = 1.0
        peaks[25, 40] = peaks[25, 44] = peaks[5, 55] = 1.0
        yield f"equal-peaks-{tag}", _map(peaks, dtype), _map(np.full((40, 60), 0.5), dtype)
        # two seeds racing over a constant interior: the flood is decided by ties alone
        race = np.zeros((30, 30))
        race[5, 5] = race[24, 24] = race[5, 24] = 1.0
        yield f"tie-race-{tag}", _map(race, dtype), _map(np.full((30, 30), 0.9), dtype)
        # a ring (a hole to fill) and thin lines
        yy, xx = np.mgrid[:48, :48]
        ring = ((yy - 24) ** 2 + (xx - 24) ** 2 < 15**2) & ((yy - 24) ** 2 + (xx - 24) ** 2 > 3**2)
        yield f"ring-{tag}", _map(ring * 0.8, dtype), _map(ring.astype(float), dtype)


def _map(values: np.ndarray, dtype: type) -> np.ndarray:
    return np.asarray(values, dtype=dtype)[None, ..., None]
