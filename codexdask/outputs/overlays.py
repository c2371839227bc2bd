"""Overlay pictures of segmented patches (nucleus blue, whole-cell green, outlines on top).

Only what the command line writes into ``OUT/overlays/``; notebooks draw their own figures with
matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from codexdask.atomic import atomic_path
from codexdask.errors import InputError
from codexdask.layout import CELL_BOUNDARY, NUCLEUS_BOUNDARY

#: RGB colour of whole-cell outlines (red) and nucleus outlines (yellow).
CELL_COLOUR = (255, 0, 0)
NUCLEUS_COLOUR = (255, 255, 0)
#: Percentiles mapped to black and full brightness.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.5


def scale_channel(channel: np.ndarray) -> np.ndarray:
    """Robustly scale one channel to [0, 1].

    Parameters
    ----------
    channel : (H, W) numeric array

    Returns
    -------
    (H, W) float32 array
        The 1st..99.5th percentile range stretched to [0, 1] and clipped. When that range is
        empty (a mostly-zero channel) the min..max range is used; a constant channel gives 0.
    """
    data = np.asarray(channel, dtype=np.float32)
    if data.size == 0:
        return data
    lo, hi = np.percentile(data, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros_like(data)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def _outline(name: str, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"{name} has shape {mask.shape}, the image is {shape}")
    return mask != 0


def overlay_rgb(
    image: np.ndarray,
    cell_boundary: np.ndarray | None = None,
    nucleus_boundary: np.ndarray | None = None,
) -> np.ndarray:
    """Colour picture of a two-channel patch with optional outlines.

    Parameters
    ----------
    image : (H, W, 2) numeric array
        Channel 0 nucleus (drawn blue), channel 1 whole-cell (drawn green), each scaled by
        :func:`scale_channel`.
    cell_boundary, nucleus_boundary : (H, W) integer array, optional
        Labelled (or boolean) boundaries; non-zero pixels are painted ``CELL_COLOUR`` (red) and
        then ``NUCLEUS_COLOUR`` (yellow, on top).

    Returns
    -------
    (H, W, 3) uint8 array
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 2:
        raise InputError(f"image must be (H, W, 2) with nucleus then whole-cell, got {image.shape}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    rgb = np.zeros((*shape, 3), dtype=np.uint8)
    rgb[..., 2] = np.round(scale_channel(image[..., 0]) * 255).astype(np.uint8)
    rgb[..., 1] = np.round(scale_channel(image[..., 1]) * 255).astype(np.uint8)
    for name, mask, colour in (
        (CELL_BOUNDARY, cell_boundary, CELL_COLOUR),
        (NUCLEUS_BOUNDARY, nucleus_boundary, NUCLEUS_COLOUR),
    ):
        outline = _outline(name, mask, shape)
        if outline is not None:
            rgb[outline] = colour
    return rgb


def write_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    masks: Mapping[str, np.ndarray],
    *,
    cell_key: str = CELL_BOUNDARY,
    nucleus_key: str = NUCLEUS_BOUNDARY,
) -> Path:
    """Write :func:`overlay_rgb` of a patch as a PNG (atomically; parent folders created).

    Parameters
    ----------
    path : path
        The PNG file.
    image : (H, W, 2) numeric array
        Nucleus, whole-cell.
    masks : mapping
        Holds (H, W) boundaries under ``cell_key`` and/or ``nucleus_key`` (missing keys are
        simply not drawn), e.g. ``"cell_matched_boundary"`` for the repaired outlines.

    Returns
    -------
    Path
    """
    rgb = overlay_rgb(np.asarray(image), masks.get(cell_key), masks.get(nucleus_key))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, rgb, extension=".png")
    return path
