"""One compute window of Mesmer's pipeline, from the raw pixels to the network's tile inputs.

For a box of network output (``out_box``, in the coordinates of the image the network sees,
i.e. after Mesmer's resize), :func:`plan_window` chains the ``*_required_box`` functions back
to the raw pixels to read, and :func:`window_inputs` turns that raw window into the inputs of
the global tiles covering ``out_box``. After the network, ``untile_window(outputs, grid,
window.tiles, window.out_box)`` gives the blended maps of ``out_box``, equal bit for bit to
deepcell's whole-image ``_untile_output`` cropped to the box (for the same network outputs).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from .geometry import Box, image_shape_2d
from .preprocess import PreprocessPlan, preprocess_window
from .resize import resize_required_box, resize_window
from .tiling import MesmerTileGrid, tile_inputs, tiles_covering, tiles_required_box


@dataclasses.dataclass(frozen=True)
class MesmerWindow:
    """The boxes one task needs, from its output box back to the raw pixels.

    Attributes
    ----------
    out_box : Box
        Network output to produce (network-image coordinates).
    tiles : numpy.ndarray
        Global indices of the tiles overlapping ``out_box`` (ascending).
    tiles_box : Box
        Preprocessed pixels the tiles are cut from (network-image coordinates).
    context_box : Box
        Network-image pixels the preprocessing of ``tiles_box`` reads (CLAHE regions).
    raw_box : Box
        Raw pixels to read (raw-image coordinates; ``context_box`` when there is no resize).
    raw_shape : (int, int)
        ``(H, W)`` of the raw image.
    """

    out_box: Box
    tiles: np.ndarray
    tiles_box: Box
    context_box: Box
    raw_box: Box
    raw_shape: tuple[int, int]


def plan_window(out_box: Box, grid: MesmerTileGrid, plan: PreprocessPlan,
                raw_shape: tuple[int, int] | None = None) -> MesmerWindow:
    """Chain the required boxes of ``out_box`` back to the raw image.

    ``grid`` and ``plan`` describe the network image (``plan.image_shape``); ``raw_shape`` is the
    raw image's size when Mesmer resizes it (``resized_shape(raw_shape, image_mpp)`` must then
    equal ``plan.image_shape``), None otherwise.
    """
    if grid.image_shape != plan.image_shape:
        raise InputError(f"the tile grid is for {grid.image_shape} but the plan for "
                         f"{plan.image_shape}; build both for the network image")
    tiles = tiles_covering(grid, out_box)
    tiles_box = tiles_required_box(grid, tiles)
    context = plan.required_box(tiles_box)
    raw = plan.image_shape if raw_shape is None else image_shape_2d(raw_shape)
    raw_box = context if raw == plan.image_shape else resize_required_box(
        context, raw, plan.image_shape)
    return MesmerWindow(out_box, tiles, tiles_box, context, raw_box, raw)


def window_inputs(raw: np.ndarray, window: MesmerWindow, plan: PreprocessPlan,
                  grid: MesmerTileGrid,
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Network inputs of ``window.tiles`` from the raw pixels of ``window.raw_box``.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(h, w, C)`` raw pixels over ``window.raw_box``.
    window : MesmerWindow
        From :func:`plan_window`.
    plan : PreprocessPlan
        The network image's plan, CLAHE range included.
    grid : MesmerTileGrid
        The network image's tile grid.
    value_range : (float, float), optional
        Minimum and maximum of the whole raw image (all channels); needed when resizing.

    Returns
    -------
    numpy.ndarray
        ``(len(window.tiles), 256, 256, C)`` float32 tiles, equal to the same tiles of deepcell's
        whole-image ``_tile_input(mesmer_preprocess(_resize_input(image)))``.
    """
    if window.raw_shape != plan.image_shape:
        if value_range is None:
            raise InputError("resizing needs value_range: the minimum and maximum of the whole "
                             "raw image over all channels")
        raw = resize_window(raw, window.raw_box, window.context_box, window.raw_shape,
                            plan.image_shape, value_range)
    values = preprocess_window(raw, window.context_box, window.tiles_box, plan)
    return tile_inputs(values, window.tiles_box, grid, window.tiles)
