"""What Mesmer's stages hand each other, and the CPU stage of one window.

:class:`MesmerTiles` is what *prepare* gives the *network* stage (the distinct 256² network tiles
of a task as one contiguous array, and where each window's tiles are in it);
:class:`MesmerTileMaps` what the network gives back (the four maps of every tile). :func:`untile`
turns those into :class:`WindowMaps`, the four maps of one window at model resolution
(0.5 µm/px) with where they lie; :class:`MesmerMaps` collects those of a batch of whole images.
:func:`postprocess_window` is Mesmer's post-processing of one window: deep watershed of the
whole-cell and the nuclear maps (``codexdask.postprocess.maps_to_labels``, equal to
deepcell_toolbox's) with ``Mesmer.predict``'s defaults, then the labels resized back to the
window's raw pixels as ``Application._resize_output`` does.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from codexdask.boxes import Box
from codexdask.errors import ConfigError
from codexdask.mesmer.graph import MAP_NAMES
from codexdask.mesmer.resize import resize_labels_window
from codexdask.mesmer.tiling import MODEL_TILE, MesmerTileGrid
from codexdask.mesmer.windows import MesmerWindow, untile_window_maps
from codexdask.postprocess import deep_watershed

__all__ = ["MAP_NAMES", "NUCLEAR_DEFAULTS", "WHOLE_CELL_DEFAULTS", "MesmerMaps", "MesmerTileMaps",
           "MesmerTiles", "TiledWindow", "WindowJob", "WindowMaps", "postprocess_window",
           "stack_tiles", "untile", "watershed_kwargs"]

#: ``Mesmer.predict``'s post-processing defaults (user values are merged on top).
WHOLE_CELL_DEFAULTS: dict[str, Any] = {
    "maxima_threshold": 0.075, "maxima_smooth": 0, "interior_threshold": 0.2,
    "interior_smooth": 2, "small_objects_threshold": 15, "fill_holes_threshold": 15, "radius": 2,
}
NUCLEAR_DEFAULTS: dict[str, Any] = {**WHOLE_CELL_DEFAULTS, "maxima_threshold": 0.1}
#: deepcell's older ``deep_watershed`` keywords, which ``deep_watershed`` still accepts.
_OLD_KEYWORDS = ("min_distance", "distance_threshold", "detection_threshold", "exclude_border")


@dataclasses.dataclass(frozen=True)
class WindowMaps:
    """Mesmer's maps of one window, at model resolution.

    Attributes
    ----------
    maps : numpy.ndarray
        ``(h, w, 4)`` float32 over ``model_box``: whole-cell inner distance and interior,
        nuclear inner distance and interior (:data:`MAP_NAMES`).
    model_box : Box
        Where ``maps`` lie in the image at model resolution.
    model_shape : (int, int)
        Size of the image at model resolution.
    window : Box
        The window whose labels are wanted, in raw pixels of the image.
    raw_shape : (int, int)
        Size of the raw image.
    """

    maps: np.ndarray
    model_box: Box
    model_shape: tuple[int, int]
    window: Box
    raw_shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class MesmerMaps:
    """What :meth:`MesmerSegmenter.infer` hands to :meth:`MesmerSegmenter.postprocess`.

    Attributes
    ----------
    windows : tuple of WindowMaps
        One per image of the batch (a whole image is one window).
    original_shape : tuple of int
        Shape of the batch, ``(B, H, W, 2)``.
    n_tiles : int
        Network tiles run.
    tiles_per_call : int
        Tiles per network call finally used (after any out-of-memory back-off).
    runtime : str
        ``"torch"`` or ``"tensorflow"``.
    """

    windows: tuple[WindowMaps, ...]
    original_shape: tuple[int, ...]
    n_tiles: int
    tiles_per_call: int
    runtime: str

    def __getitem__(self, name: str) -> np.ndarray:
        """One map of every image, ``(B, h, w, 1)`` float32 at model resolution."""
        channel = MAP_NAMES.index(name)
        return np.stack([w.maps[..., channel:channel + 1] for w in self.windows])


@dataclasses.dataclass(frozen=True)
class TiledWindow:
    """One window of a task: its plan, where it is in raw pixels, and which tiles are its own.

    Attributes
    ----------
    window : MesmerWindow
        Its network tiles, CLAHE regions and boxes (:func:`codexdask.mesmer.windows.plan_window`).
    raw_window : Box
        The window whose labels are wanted, in raw pixels.
    rows : numpy.ndarray
        ``(len(window.tiles),)`` int64: the row of each of its tiles in the task's tile array
        (a tile two windows of one image share is run once).
    """

    window: MesmerWindow
    raw_window: Box
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class MesmerTiles:
    """What :meth:`MesmerSegmenter.prepare` hands to the network stage.

    Attributes
    ----------
    tiles : numpy.ndarray
        ``(n, 256, 256, 2)`` float32, C-contiguous: the distinct network inputs of the task.
    windows : tuple of TiledWindow
        The task's windows, in order (a whole image is one window).
    grid : MesmerTileGrid or None
        The images' network tile grid (``None`` only without windows).
    raw_shape : (int, int)
        Size of the raw image (all images of a task have one size).
    original_shape : tuple of int or None
        ``(B, H, W, 2)`` of a batch of whole images; ``None`` for windows of a logical patch.
    """

    tiles: np.ndarray
    windows: tuple[TiledWindow, ...]
    grid: MesmerTileGrid | None
    raw_shape: tuple[int, int]
    original_shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class MesmerTileMaps:
    """What the network stage hands back: the maps of every tile, and :class:`MesmerTiles`'s
    layout (without its inputs).

    Attributes
    ----------
    maps : numpy.ndarray
        ``(n, 256, 256, 4)`` float32 maps (:data:`MAP_NAMES`) of ``MesmerTiles.tiles``.
    windows, grid, raw_shape, original_shape
        As in :class:`MesmerTiles`.
    tiles_per_call : int
        Tiles per network call finally used (after any out-of-memory back-off).
    runtime : str
        ``"torch"`` or ``"tensorflow"``.
    """

    maps: np.ndarray
    windows: tuple[TiledWindow, ...]
    grid: MesmerTileGrid | None
    raw_shape: tuple[int, int]
    original_shape: tuple[int, ...] | None
    tiles_per_call: int
    runtime: str


@dataclasses.dataclass(frozen=True)
class WindowJob:
    """One window to run through the network: its plan, its tile inputs, where it is."""

    window: MesmerWindow
    tiles: np.ndarray  # (len(window.tiles), 256, 256, 2) float32 network inputs
    raw_window: Box  # the window in raw pixels


def stack_tiles(groups: Sequence[list[WindowJob]], grid: MesmerTileGrid | None,
                raw_shape: tuple[int, int], original_shape: tuple[int, ...] | None
                ) -> MesmerTiles:
    """The distinct tiles of every window as one contiguous array, in order of first use.

    ``groups`` hold the windows of one image each (all images of one shape, ``grid``); a tile
    two windows of one image share is kept once.
    """
    inputs: list[np.ndarray] = []
    windows = []
    for jobs in groups:
        first: dict[int, int] = {}
        for job in jobs:
            for index, tile in zip(job.window.tiles.tolist(), job.tiles, strict=True):
                if index not in first:
                    first[index] = len(inputs)
                    inputs.append(tile)
            rows = np.array([first[index] for index in job.window.tiles.tolist()], np.int64)
            windows.append(TiledWindow(job.window, job.raw_window, rows))
    tiles = (np.stack(inputs).astype(np.float32, copy=False) if inputs
             else np.empty((0, MODEL_TILE, MODEL_TILE, 2), np.float32))
    return MesmerTiles(tiles, tuple(windows), grid, raw_shape, original_shape)


def untile(out: MesmerTileMaps) -> list[WindowMaps]:
    """Each window's maps from its tiles', blended as Mesmer untiles (the first CPU step after
    the network)."""
    if not out.windows:
        return []
    grid = out.grid
    assert grid is not None  # a task with windows has a grid
    return [WindowMaps(untile_window_maps(out.maps[item.rows], item.window, grid),
                       item.window.out_box, item.window.image_shape, item.raw_window,
                       out.raw_shape)
            for item in out.windows]


def postprocess_window(item: WindowMaps, whole_cell_kwargs: Mapping[str, Any],
                       nuclear_kwargs: Mapping[str, Any]) -> np.ndarray:
    """Labels of one window: ``(h, w, 2)`` uint32 (whole-cell, nucleus) over ``item.window``.

    Deep watershed of each compartment's (inner distance, interior) maps with the given
    keywords, then, when Mesmer resized the image, nearest-neighbour resizing of the labels back
    to the raw pixels of the window (:func:`codexdask.mesmer.resize.resize_labels_window`).
    """
    batch = item.maps[np.newaxis]
    cell = deep_watershed([batch[..., 0:1], batch[..., 1:2]], **whole_cell_kwargs)
    nucleus = deep_watershed([batch[..., 2:3], batch[..., 3:4]], **nuclear_kwargs)
    labels = np.concatenate([cell[0], nucleus[0]], axis=-1).astype(np.uint32)
    if item.model_shape != item.raw_shape:
        labels = resize_labels_window(labels, item.model_box, item.window, item.model_shape,
                                      item.raw_shape)
    return labels


def watershed_kwargs(defaults: Mapping[str, Any],
                     overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated with ``overrides``; unknown ``deep_watershed`` keywords are refused."""
    accepted = (set(inspect.signature(deep_watershed).parameters) - {"outputs", "timings",
                                                                     "kwargs"}
                | set(_OLD_KEYWORDS))
    unknown = sorted(set(overrides or {}) - accepted)
    if unknown:
        raise ConfigError(f"unknown deep_watershed keywords {unknown}; accepted: "
                          f"{', '.join(sorted(accepted))}")
    return {**defaults, **(overrides or {})}
