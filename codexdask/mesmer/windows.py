"""One compute window of Mesmer's pipeline, from the raw pixels to the network's tile inputs.

For a box of network output (``out_box``, in the coordinates of the image the network sees,
i.e. after Mesmer's resize), :func:`plan_window` chains the ``*_required_box`` functions back
to the raw pixels to read, :func:`window_inputs` turns that raw window into the inputs of the
global tiles covering ``out_box``, and after the network :func:`untile_window_maps` gives the
blended maps of ``out_box``, equal bit for bit to deepcell's whole-image ``_untile_output``
cropped to the box (for the same network outputs).

The network image is the preprocessed image, except for one shape deepcell 0.12.10 cannot run:
one side shorter than the 256-px tile and the other longer (e.g. 300x200; its ``_tile_input``
then pads both sides and the model refuses the tile). There the short side is reflect-padded to
256 after preprocessing, split as deepcell splits the padding of small images
(:func:`network_padding`), the padded image is tiled as usual (:func:`network_grid`) and the
padding is cropped after untiling. Every other shape is tiled exactly as deepcell tiles it.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box, check_window, image_shape_2d, padded_source_index, span
from codexdask.mesmer.preprocess import PreprocessPlan, preprocess_window
from codexdask.mesmer.resize import resize_required_box, resize_window
from codexdask.mesmer.tiling import (
    MODEL_TILE,
    MesmerTileGrid,
    tile_grid,
    tile_inputs,
    tiles_covering,
    tiles_required_box,
    untile_window,
)

#: ``((before, after), (before, after))`` padding per axis.
Padding = tuple[tuple[int, int], tuple[int, int]]


class RequiredBoxes(Protocol):
    """What :func:`plan_window` needs of a plan: a :class:`PreprocessPlan`, or its
    :class:`~codexdask.mesmer.preprocess.PreprocessGeometry` before the statistics are known."""

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the network image."""
        ...

    def required_box(self, out_box: Box) -> Box:
        """Network-image pixels the preprocessing of ``out_box`` reads."""
        ...


def network_padding(image_shape: tuple[int, int]) -> Padding:
    """Reflect padding of the preprocessed image before tiling (zero except for mixed shapes).

    An image with one side under 256 and the other over 256 gets its short side padded to 256,
    ``diff // 2`` before and the rest after (as ``Application._tile_input`` pads small images).
    """
    shape = image_shape_2d(image_shape)
    if not (min(shape) < MODEL_TILE < max(shape)):
        return ((0, 0), (0, 0))
    pads = []
    for side in shape:
        diff = max(MODEL_TILE - side, 0)
        pads.append((diff // 2, diff - diff // 2))
    return (pads[0], pads[1])


def network_grid(image_shape: tuple[int, int], pad_mode: str = "constant") -> MesmerTileGrid:
    """The tile grid of the network image of an ``(H, W)`` preprocessed image."""
    shape = image_shape_2d(image_shape)
    (top, bottom), (left, right) = network_padding(shape)
    return tile_grid((shape[0] + top + bottom, shape[1] + left + right), pad_mode)


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
    image_shape : (int, int)
        ``(H, W)`` of the network image (before :func:`network_padding`).
    padding : ((int, int), (int, int))
        :func:`network_padding` of the network image.
    """

    out_box: Box
    tiles: np.ndarray
    tiles_box: Box
    context_box: Box
    raw_box: Box
    raw_shape: tuple[int, int]
    image_shape: tuple[int, int]
    padding: Padding = ((0, 0), (0, 0))

    def padded(self, box: Box) -> Box:
        """``box`` in the coordinates of the padded network image."""
        return box.shift(self.padding[0][0], self.padding[1][0])


def plan_window(out_box: Box, grid: MesmerTileGrid, plan: RequiredBoxes,
                raw_shape: tuple[int, int] | None = None) -> MesmerWindow:
    """Chain the required boxes of ``out_box`` back to the raw image.

    ``grid`` (:func:`network_grid`) and ``plan`` describe the network image
    (``plan.image_shape``); ``raw_shape`` is the raw image's size when Mesmer resizes it
    (``resized_shape(raw_shape, image_mpp)`` must then equal ``plan.image_shape``), None
    otherwise.
    """
    shape = plan.image_shape
    padding = network_padding(shape)
    padded_shape = (shape[0] + sum(padding[0]), shape[1] + sum(padding[1]))
    if grid.image_shape != padded_shape:
        raise InputError(f"the tile grid is for {grid.image_shape} but the plan for {shape}; "
                         "build both for the network image (network_grid)")
    window = MesmerWindow(out_box, np.zeros(0, np.int64), out_box, out_box, out_box,
                          shape, shape, padding)
    tiles = tiles_covering(grid, window.padded(out_box))
    padded_box = tiles_required_box(grid, tiles)
    ranges = []
    for (low, high), side, pads in zip((padded_box.rows, padded_box.cols), shape, padding):
        ranges.append(span(padded_source_index(side, *pads, "reflect")[low:high]))
    tiles_box = Box.from_ranges(*ranges)
    context = plan.required_box(tiles_box)
    raw = shape if raw_shape is None else image_shape_2d(raw_shape)
    raw_box = context if raw == shape else resize_required_box(context, raw, shape)
    return dataclasses.replace(window, tiles=tiles, tiles_box=tiles_box, context_box=context,
                               raw_box=raw_box, raw_shape=raw)


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
    return window_tiles(values, window.tiles_box, window, grid)


def window_tiles(values: np.ndarray, values_box: Box, window: MesmerWindow,
                 grid: MesmerTileGrid) -> np.ndarray:
    """Network inputs of ``window.tiles`` cut from preprocessed pixels.

    Parameters
    ----------
    values : numpy.ndarray
        ``(h, w, C)`` preprocessed pixels over ``values_box`` (network-image coordinates), which
        must hold ``window.tiles_box``; e.g. the whole ``mesmer_preprocess`` output.
    values_box : Box
        Box of ``values``.
    window, grid : MesmerWindow, MesmerTileGrid
        From :func:`plan_window` and :func:`network_grid`.

    Returns
    -------
    numpy.ndarray
        ``(len(window.tiles), 256, 256, C)`` in the dtype of ``values``.
    """
    check_window(values, values_box, window.tiles_box, "values")
    padded_box = tiles_required_box(grid, window.tiles)
    if window.padding == ((0, 0), (0, 0)):
        return tile_inputs(values, values_box, grid, window.tiles)
    rows, cols = (padded_source_index(side, *pads, "reflect")[low:high] - start
                  for (low, high), side, pads, start in zip(
                      (padded_box.rows, padded_box.cols), window.image_shape,
                      window.padding, (values_box.top, values_box.left)))
    return tile_inputs(values[np.ix_(rows, cols)], padded_box, grid, window.tiles)


def untile_window_maps(outputs: np.ndarray, window: MesmerWindow,
                       grid: MesmerTileGrid) -> np.ndarray:
    """Blend the network outputs of ``window.tiles`` into ``window.out_box``.

    ``outputs`` is ``(len(window.tiles), 256, 256, k)``; the result ``(h, w, k)`` in its dtype
    equals deepcell's whole-image untiling cropped to ``out_box`` (and to the image, for the
    padded shapes of :func:`network_padding`).
    """
    return untile_window(outputs, grid, window.tiles, window.padded(window.out_box))
