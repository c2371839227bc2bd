"""Where the patches of a slide lie, for each split mode (pure arithmetic, no I/O).

The geometry of each mode is described in ``docs/semantics.md`` ("Patch geometry"):

- ``patches``: a grid of ``patch_size`` patches stepping ``size - int(size * overlap)`` over the
  slide zero-padded at the bottom and right (the original pipeline's padding formula);
- ``full_image``: one patch, the whole slide;
- ``halves``: two patches split at ``W // 2`` (``vertical``) or ``H // 2`` (``horizontal``);
- ``quarters``: four patches split at ``(H // 2, W // 2)``, in the order TL, TR, BL, BR.

Only ``patches`` mode pads or overlaps. Halves and quarters of an odd-sized slide differ in size by
one pixel; the store holds them zero-padded to the largest, and each patch's true box is kept.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from codexdask.errors import SlideError

if TYPE_CHECKING:
    from codexdask.config import PatchConfig

__all__ = ["PatchGrid", "patch_grid"]


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one slide lie.

    Attributes
    ----------
    split_mode : str
    slide_shape : (int, int)
        Slide height and width ``(H, W)``.
    padded_shape : (int, int)
        Height and width after zero padding at the bottom/right (``patches`` mode; else the slide).
    patch_shape : (int, int)
        Height and width of every stored patch (the largest patch for ``halves``/``quarters``).
    step : (int, int)
        Row and column step between neighbouring patches.
    overlap : float
        Overlap fraction used (0 outside ``patches`` mode).
    boxes : tuple of (int, int, int, int)
        ``(y_start, x_start, height, width)`` of each patch in patch order, in padded coordinates.
    """

    split_mode: str
    slide_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    patch_shape: tuple[int, int]
    step: tuple[int, int]
    overlap: float
    boxes: tuple[tuple[int, int, int, int], ...]

    @property
    def n_patches(self) -> int:
        """Number of patches ``N``."""
        return len(self.boxes)

    def to_frame(self) -> pd.DataFrame:
        """The boxes as a DataFrame with columns ``y_start, x_start, height, width`` (int64)."""
        return pd.DataFrame(list(self.boxes), columns=["y_start", "x_start", "height", "width"],
                            dtype=np.int64)


def _pad(size: int, patch: int, step: int) -> int:
    # the original pipeline's formula: it over-pads by up to patch - step; Python's % keeps it
    # valid for size < patch
    return (patch - (size - patch) % step) % patch


def patch_grid(height: int, width: int, config: PatchConfig) -> PatchGrid:
    """Patch geometry of an ``height x width`` slide (see the module docstring).

    ``patches``: step ``s = max(1, p - int(p * overlap))`` per axis, padding
    ``(p - (size - p) mod s) mod p`` at the bottom/right (at least up to one patch), tiles in
    row-major order over the padded image. ``full_image``: one patch. ``halves``: left/right
    (``vertical``) or top/bottom (``horizontal``) split at ``W // 2`` / ``H // 2``.
    ``quarters``: TL, TR, BL, BR split at ``(H // 2, W // 2)``. Only ``patches`` mode pads or
    overlaps.

    Returns
    -------
    PatchGrid

    Examples
    --------
    >>> from codexdask.config import PatchConfig
    >>> grid = patch_grid(1007, 1343, PatchConfig(split_mode="quarters"))
    >>> grid.boxes[-1], grid.patch_shape
    ((503, 671, 504, 672), (504, 672))

    Raises
    ------
    SlideError
        If the slide is too small for the mode (e.g. one pixel wide for ``halves``).
    """
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise SlideError(f"the slide is empty ({h}x{w} pixels)")
    mode = config.split_mode
    if mode == "patches":
        ph, pw = config.patch_size
        sh = max(1, ph - int(ph * config.overlap))
        sw = max(1, pw - int(pw * config.overlap))
        # an image smaller than the patch whose (size - p) is a multiple of the step gets no
        # padding from the formula and would yield no patch: pad it to one patch instead
        he, we = max(h + _pad(h, ph, sh), ph), max(w + _pad(w, pw, sw), pw)
        boxes = tuple(
            (y, x, ph, pw) for y in range(0, he - ph + 1, sh) for x in range(0, we - pw + 1, sw)
        )
        return PatchGrid(mode, (h, w), (he, we), (ph, pw), (sh, sw), float(config.overlap), boxes)
    h2, w2 = h // 2, w // 2
    if mode == "full_image":
        boxes = ((0, 0, h, w),)
    elif mode == "halves" and config.split_direction == "horizontal":
        _need(h2, "halves (horizontal) needs a slide at least 2 pixels high")
        boxes = ((0, 0, h2, w), (h2, 0, h - h2, w))
    elif mode == "halves":
        _need(w2, "halves (vertical) needs a slide at least 2 pixels wide")
        boxes = ((0, 0, h, w2), (0, w2, h, w - w2))
    elif mode == "quarters":
        _need(min(h2, w2), "quarters needs a slide at least 2x2 pixels")
        boxes = ((0, 0, h2, w2), (0, w2, h2, w - w2), (h2, 0, h - h2, w2), (h2, w2, h - h2, w - w2))
    else:  # PatchConfig already refuses other values
        raise SlideError(f"unknown split_mode {mode!r}")
    shape = (max(b[2] for b in boxes), max(b[3] for b in boxes))
    return PatchGrid(mode, (h, w), (h, w), shape, (h, w), 0.0, boxes)


def _need(value: int, message: str) -> None:
    if value < 1:
        raise SlideError(f"{message}; use split_mode full_image")
