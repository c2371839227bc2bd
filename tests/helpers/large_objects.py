"""Slides with objects far larger than a halo, and a segmenter that sees them exactly in windows.

:func:`components` labels the connected components of each channel above a fixed threshold: a
component that does not reach a window's edge is exactly the whole image's component there, so
stitched blocks must equal the one-piece labelling object for object — for any object size, if
the objects larger than the halo are regrown. :func:`large_object_image` draws what breaks a small
halo: large ellipses, a ring (an object whose bounding-box centre is background), a U shape (not
convex), a thin diagonal band across the slide, among many small cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from codexdask.segmenters.base import CallableSegmenter

#: Pixels above this are foreground in both channels.
THRESHOLD = 500


def components(batch: np.ndarray, image_mpp: float) -> np.ndarray:
    """``(B, H, W, 2)`` uint32 labels: whole-cell = components of channel 1 above
    :data:`THRESHOLD`, nucleus = those of channel 0 (4-connected)."""
    out = np.zeros(batch.shape[:3] + (2,), np.uint32)
    for b, image in enumerate(np.asarray(batch)):
        out[b, ..., 0] = ndi.label(image[..., 1] > THRESHOLD)[0]
        out[b, ..., 1] = ndi.label(image[..., 0] > THRESHOLD)[0]
    return out


def components_segmenter() -> CallableSegmenter:
    """:func:`components` as a segmenter (block-local: each window is an image of its own)."""
    return CallableSegmenter(components, name="components")


def large_object_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(H, W, 2)`` uint16 (nucleus, whole-cell): 1000 inside objects, noise of 1..100 outside.

    Many small cells (radius 3-8 px, a nucleus of half the radius), three large ellipses
    (semi-axes up to a third of the slide, each with a large nucleus), a ring, a U shape and a
    3-px diagonal band from corner to corner (whole-cell only).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cell = np.zeros((height, width), bool)
    nucleus = np.zeros((height, width), bool)
    for _ in range(height * width // 900):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 8)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        cell |= d2 <= r * r
        nucleus |= d2 <= (r / 2) ** 2
    side = min(height, width)
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        a, b = rng.uniform(0.15, 0.33) * side, rng.uniform(0.08, 0.2) * side
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        inside = (u / a) ** 2 + (v / b) ** 2
        cell |= inside <= 1
        nucleus |= inside <= 0.2
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, 0.3 * side
    ring = np.abs(np.hypot(yy - cy, xx - cx) - r) <= 3
    top, left = int(rng.uniform(0.1, 0.4) * height), int(rng.uniform(0.1, 0.4) * width)
    tall, wide = int(0.45 * height), int(0.4 * width)
    u_shape = ((yy >= top) & (yy < top + tall) & (xx >= left) & (xx < left + wide)
               & ~((yy < top + tall - 6) & (xx >= left + 6) & (xx < left + wide - 6)))
    band = np.abs(yy * width - xx * height) <= 1.5 * np.hypot(height, width)
    cell |= ring | u_shape | band
    image = rng.integers(1, 101, size=(height, width, 2)).astype(np.uint16)
    image[..., 0][nucleus] = 1000
    image[..., 1][cell] = 1000
    return image


def as_domes(image: np.ndarray) -> np.ndarray:
    """``image`` (from :func:`large_object_image`) with every object a dome: 60 × the distance
    to its edge (at most 4000), over a faint copy of the image — what a stand-in network that
    maps each pixel's value turns into one inner-distance peak per object, as deep watershed
    expects."""
    out = np.zeros(image.shape, np.uint16)
    for c in range(image.shape[-1]):
        distance = ndi.distance_transform_edt(image[..., c] > THRESHOLD)
        out[..., c] = np.minimum(distance * 60, 4000).astype(np.uint16) + image[..., c] // 20
    return out
