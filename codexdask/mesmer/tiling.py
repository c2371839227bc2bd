"""Mesmer's network tiles: deepcell's global tile grid, tiling and spline-blended untiling.

Whole-image functions equal to deepcell (``Application._tile_input`` / ``_untile_output`` with
``deepcell_toolbox.utils.tile_image`` / ``untile_image``, Mesmer's 256x256 model and
``stride_ratio=0.75``):

* :func:`tile_image` == ``Application._tile_input(image, pad_mode)``: tiles of the preprocessed
  image in deepcell's order (image, then tile row, then tile column);
* :func:`untile_image` == ``Application._untile_output(tiles, tiles_info)`` on one output head.

The grid (:func:`tile_grid`) depends only on the image size. Per axis of size ``S >= 256``:
``n = ceil((S - 256) / 192 + 1)`` tiles at stride 192, the image zero-padded (or reflected)
by ``ceil(o / 2)`` before and ``floor(o / 2)`` after, ``o = 256 + 192 (n - 1) - S``. Untiling
adds ``tile * window`` into a float64 canvas in tile order and casts back to the tiles' dtype;
the window is the outer product of deepcell's squared-spline ramps over the 64-pixel overlaps
(flat at the image ends). When the padded image is exactly one tile along an axis, deepcell
does not blend: tiles are written in order, later ones overwriting earlier ones. An image
smaller than 256 along an axis is reflect-padded to 256 there (whatever ``pad_mode``) and
passed to the network as one tile; if its other side exceeds 256, deepcell pads that side by
its excess as well and the single tile is larger than 256 (the network then runs on it whole).

Window functions (issue 10): :func:`tiles_covering`, :func:`tiles_required_box`,
:func:`tile_inputs` and :func:`untile_window` reproduce the whole-image results for any box,
with every tile placed on the image's global grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from codexdask.errors import InputError
from codexdask.mesmer.indexing import (
    Box,
    check_inside,
    check_window,
    image_shape_2d,
    padded_source_index,
    span,
)

#: Tile indices: a sequence of ints or an int array.
TileIndices = Sequence[int] | np.ndarray

#: Mesmer's network input size.
MODEL_TILE = 256
#: ``stride_ratio`` of ``Application._tile_input``.
STRIDE_RATIO = 0.75
_MIN_BLEND_TILE = 32
_MIN_BLEND_STRIDE_RATIO = 0.5


@dataclasses.dataclass(frozen=True)
class MesmerTileGrid:
    """deepcell's network tile grid of one image.

    Attributes
    ----------
    image_shape : (int, int)
        ``(H, W)`` of the image.
    tile_shape : (int, int)
        Shape of every tile: the model size, or the whole padded image in the small case.
    pad_before, pad_after : (int, int)
        Padding added before / after each axis.
    starts_y, starts_x : tuple of int
        Tile starts in padded coordinates along each axis; tile ``i * len(starts_x) + j`` starts
        at ``(starts_y[i], starts_x[j])`` (deepcell's order).
    pad_mode : str
        ``"constant"`` (zeros) or ``"reflect"``: how padding is filled.
    small : bool
        deepcell's small-image path (an axis shorter than the model): reflect padding, one tile,
        untiling is a crop.
    blend : bool
        Tiles are blended with spline windows; otherwise written in order (overwriting).
    stride : int
        Distance between the starts of neighbouring tiles (192 for Mesmer).
    """

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    pad_before: tuple[int, int]
    pad_after: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    pad_mode: str
    small: bool
    blend: bool
    stride: int

    @property
    def n_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (self.image_shape[0] + self.pad_before[0] + self.pad_after[0],
                self.image_shape[1] + self.pad_before[1] + self.pad_after[1])

    def tile_box(self, index: int) -> Box:
        """Extent of tile ``index`` in image coordinates (may reach past the image)."""
        i, j = divmod(int(index), len(self.starts_x))
        top = self.starts_y[i] - self.pad_before[0]
        left = self.starts_x[j] - self.pad_before[1]
        return Box(top, left, top + self.tile_shape[0], left + self.tile_shape[1])


def tile_grid(image_shape: tuple[int, int], pad_mode: str = "constant",
              tile_size: int = MODEL_TILE, stride_ratio: float = STRIDE_RATIO) -> MesmerTileGrid:
    """deepcell's tile grid of an ``(H, W)`` image (``Application._tile_input`` semantics)."""
    shape = image_shape_2d(image_shape)
    if pad_mode not in ("constant", "reflect"):
        raise InputError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    if shape[0] < tile_size or shape[1] < tile_size:
        pads = []
        for size in shape:
            diff = abs(size - tile_size)
            pads.append((diff // 2, diff // 2 + diff % 2))
        tile = (shape[0] + sum(pads[0]), shape[1] + sum(pads[1]))
        return MesmerTileGrid(shape, tile, (pads[0][0], pads[1][0]), (pads[0][1], pads[1][1]),
                              (0,), (0,), "reflect", small=True, blend=False, stride=tile_size)
    stride = min(int(math.ceil(stride_ratio * tile_size / 2.0) * 2), tile_size)
    starts, before, after = [], [], []
    for size in shape:
        count = max(int(math.ceil((size - tile_size) / stride + 1)), 1)
        overlap = tile_size + stride * (count - 1) - size
        before.append(int(math.ceil(overlap / 2)))
        after.append(int(math.floor(overlap / 2)))
        padded = size + overlap
        starts.append(tuple(i * stride if i < count - 1 else padded - tile_size
                            for i in range(count)))
    padded_shape = (shape[0] + before[0] + after[0], shape[1] + before[1] + after[1])
    blend = (_MIN_BLEND_TILE <= tile_size < min(padded_shape)
             and stride_ratio >= _MIN_BLEND_STRIDE_RATIO)
    return MesmerTileGrid(shape, (tile_size, tile_size), (before[0], before[1]),
                          (after[0], after[1]), starts[0], starts[1], pad_mode, small=False,
                          blend=blend, stride=stride)


def _spline_ramp(overlap: int) -> np.ndarray:
    """deepcell's squared-spline window of ``2 * overlap`` samples, before it is halved.

    Written with deepcell's own slice bounds (``[q:-q]``, ``[-q:]``), which matter when the
    quarter ``q`` is 0.
    """
    size = 2 * overlap
    rising = (2 * np.arange(1, size // 2 + 1) - 1.0) / size   # scipy's triang(size), even size
    triangle = np.concatenate([rising, rising[::-1]])
    quarter = int(size / 4)
    doubled = np.abs(2 * triangle)
    outer = doubled * doubled / 2
    outer[quarter:-quarter] = 0
    shifted = np.abs(2 * (triangle - 1))
    inner = 1 - shifted * shifted / 2
    inner[:quarter] = 0
    inner[-quarter:] = 0
    window = inner + outer
    return window / np.amax(window)


@lru_cache(maxsize=64)
def _axis_window(size: int, left: int, right: int) -> np.ndarray:
    """deepcell's 1-D ``spline_window(size, left, right)`` (float64)."""
    window = np.ones(size)
    if left > 0:
        window[:left] = _spline_ramp(left)[:left]
    if right > 0:
        window[size - right:] = _spline_ramp(right)[right:]
    window.setflags(write=False)
    return window


def _overlaps(starts: Sequence[int], index: int, tile: int, stride: int,
              padded: int) -> tuple[int, int]:
    """deepcell's ``(overlap_before, overlap_after)`` of tile ``index`` along one axis."""
    count = len(starts)
    if index == 0:
        return (0, tile - stride)
    if index == count - 2:
        return (tile - stride, tile - padded + starts[index] + tile)
    if index == count - 1:
        return ((index - 1) * stride + tile - starts[index], 0)
    return (tile - stride, tile - stride)


def tile_window(grid: MesmerTileGrid, index: int) -> np.ndarray:
    """``(th, tw, 1)`` float64 blending window of tile ``index`` (deepcell's ``window_2D``)."""
    i, j = divmod(int(index), len(grid.starts_x))
    th, tw = grid.tile_shape
    padded = grid.padded_shape
    wy = _axis_window(th, *_overlaps(grid.starts_y, i, th, grid.stride, padded[0]))
    wx = _axis_window(tw, *_overlaps(grid.starts_x, j, tw, grid.stride, padded[1]))
    return wy[:, None, None] * wx[None, :, None]


def _source_indices(grid: MesmerTileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Image index of every padded position per axis (-1 where zeros are padded)."""
    (height, width), before, after = grid.image_shape, grid.pad_before, grid.pad_after
    return (padded_source_index(height, before[0], after[0], grid.pad_mode),
            padded_source_index(width, before[1], after[1], grid.pad_mode))


def tiles_covering(grid: MesmerTileGrid, box: Box) -> np.ndarray:
    """Indices (ascending, int64) of the tiles whose extent overlaps ``box`` (image coords)."""
    check_inside(box, grid.image_shape, "box")

    def overlapping(starts: Sequence[int], before: int, size: int, low: int,
                    high: int) -> list[int]:
        return [i for i, start in enumerate(starts) if start - before < high
                and low < start - before + size]

    rows = overlapping(grid.starts_y, grid.pad_before[0], grid.tile_shape[0], *box.rows)
    cols = overlapping(grid.starts_x, grid.pad_before[1], grid.tile_shape[1], *box.cols)
    return np.array([i * len(grid.starts_x) + j for i in rows for j in cols], dtype=np.int64)


def tiles_required_box(grid: MesmerTileGrid, indices: TileIndices) -> Box:
    """Preprocessed pixels :func:`tile_inputs` needs to build the tiles ``indices``."""
    source_y, source_x = _source_indices(grid)
    ranges = []
    for axis, source in enumerate((source_y, source_x)):
        lows, highs = [], []
        for index in indices:
            box = grid.tile_box(int(index))
            start = (box.top, box.left)[axis] + grid.pad_before[axis]
            low, high = span(source[start:start + grid.tile_shape[axis]])
            if high > low:
                lows.append(low)
                highs.append(high)
        if not lows:
            raise InputError("tiles_required_box needs at least one tile index")
        ranges.append((min(lows), max(highs)))
    return Box.from_ranges(*ranges)


def tile_inputs(values: np.ndarray, values_box: Box, grid: MesmerTileGrid,
                indices: TileIndices) -> np.ndarray:
    """Network inputs of the tiles ``indices``, cut from preprocessed values around them.

    Parameters
    ----------
    values : numpy.ndarray
        ``(h, w, C)`` preprocessed pixels over ``values_box``, which must hold
        :func:`tiles_required_box` of ``indices``.
    values_box : Box
        Box of ``values`` in image coordinates.
    grid : MesmerTileGrid
        The image's grid.
    indices : sequence of int
        Tile indices (for example from :func:`tiles_covering`).

    Returns
    -------
    numpy.ndarray
        ``(n, th, tw, C)`` tiles in the dtype of ``values``, equal to the corresponding tiles
        of :func:`tile_image` of the whole preprocessed image.
    """
    indices = [int(i) for i in indices]
    check_window(values, values_box, tiles_required_box(grid, indices), "values")
    source_y, source_x = _source_indices(grid)
    boxes = [grid.tile_box(index) for index in indices]
    # Pad the union of the tiles once (zeros or reflection), then cut every tile from it.
    union = boxes[0]
    for box in boxes[1:]:
        union = union.union(box)
    rows = source_y[union.top + grid.pad_before[0]: union.bottom + grid.pad_before[0]]
    cols = source_x[union.left + grid.pad_before[1]: union.right + grid.pad_before[1]]
    inside_y, inside_x = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    canvas = np.zeros(union.shape + values.shape[2:], dtype=values.dtype)
    target = (_as_slice(inside_y), _as_slice(inside_x))
    source = (_as_slice(rows[inside_y] - values_box.top),
              _as_slice(cols[inside_x] - values_box.left))
    if all(isinstance(part, slice) for part in target + source):
        canvas[target] = values[source]
    else:
        canvas[np.ix_(inside_y, inside_x)] = values[np.ix_(rows[inside_y] - values_box.top,
                                                           cols[inside_x] - values_box.left)]
    return np.stack([canvas[box.slices(union)] for box in boxes])


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A slice when ``index`` is a run of consecutive integers, else ``index`` itself."""
    if index.size and index[-1] - index[0] == index.size - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def untile_window(outputs: np.ndarray, grid: MesmerTileGrid, indices: TileIndices,
                  out_box: Box) -> np.ndarray:
    """Blend per-tile network outputs into ``out_box``, equal to ``untile_image(...)[out_box]``.

    Parameters
    ----------
    outputs : numpy.ndarray
        ``(n, th, tw, k)`` outputs of the tiles ``indices`` (any order of the indices; every
        tile overlapping ``out_box`` must be present).
    grid : MesmerTileGrid
        The image's grid.
    indices : sequence of int
        Tile index of each output.
    out_box : Box
        Box to produce, in image coordinates.

    Returns
    -------
    numpy.ndarray
        ``(out_h, out_w, k)`` in the dtype of ``outputs``. Contributions are summed in float64
        in deepcell's tile order, so the result is bitwise the whole-image one.
    """
    indices = [int(i) for i in indices]
    if outputs.ndim != 4 or outputs.shape[0] != len(indices) or \
            tuple(outputs.shape[1:3]) != grid.tile_shape:
        raise InputError(f"outputs must be (len(indices), {grid.tile_shape[0]}, "
                         f"{grid.tile_shape[1]}, k), got {outputs.shape}")
    needed = tiles_covering(grid, out_box)
    missing = sorted(set(needed.tolist()) - set(indices))
    if missing:
        raise InputError(f"untile_window needs the outputs of every tile overlapping out_box; "
                         f"missing tiles {missing[:8]}")
    by_index = {index: n for n, index in enumerate(indices)}
    canvas = np.zeros(out_box.shape + outputs.shape[3:], dtype=np.float64)
    for index in needed.tolist():
        tile_box = grid.tile_box(index)
        part = tile_box.intersection(out_box)
        tile = outputs[by_index[index]][part.slices(tile_box)]
        if grid.blend:
            canvas[part.slices(out_box)] += tile * tile_window(grid, index)[part.slices(tile_box)]
        else:
            canvas[part.slices(out_box)] = tile
    return canvas.astype(outputs.dtype)


def tile_image(image: np.ndarray, pad_mode: str = "constant") -> tuple[np.ndarray, MesmerTileGrid]:
    """Cut preprocessed images into Mesmer's network tiles.

    Equal to ``Application._tile_input(image, pad_mode)`` of a 256x256 Mesmer model (tiles and
    their order; the grid replaces deepcell's ``tiles_info``).

    Parameters
    ----------
    image : numpy.ndarray
        ``(B, H, W, C)`` or ``(H, W, C)`` preprocessed pixels.
    pad_mode : str
        ``"constant"`` (Mesmer's default, zeros) or ``"reflect"``.

    Returns
    -------
    tiles : numpy.ndarray
        ``(B * n_tiles, th, tw, C)`` in the image dtype, image-major.
    grid : MesmerTileGrid
        The grid shared by all images of the batch.
    """
    batch = image[None] if image.ndim == 3 else image
    if batch.ndim != 4:
        raise InputError(f"image must be (H, W, C) or (B, H, W, C), got shape {image.shape}")
    grid = tile_grid((int(batch.shape[1]), int(batch.shape[2])), pad_mode)
    whole = Box.whole(grid.image_shape)
    every = np.arange(grid.n_tiles)
    tiles = [tile_inputs(item, whole, grid, every) for item in batch]
    return np.concatenate(tiles), grid


def untile_image(tiles: np.ndarray, grid: MesmerTileGrid) -> np.ndarray:
    """Blend network outputs of :func:`tile_image`'s tiles back into whole images.

    Equal to ``Application._untile_output(tiles, tiles_info)`` for one output head:
    ``(B * n_tiles, th, tw, k)`` -> ``(B, H, W, k)`` in the tiles' dtype (float64 canvas, spline
    windows, crop of the padding; a crop only in the small-image case).
    """
    if tiles.ndim != 4 or tiles.shape[0] % grid.n_tiles:
        raise InputError(f"tiles must be (B * {grid.n_tiles}, th, tw, k), got {tiles.shape}")
    whole = Box.whole(grid.image_shape)
    every = np.arange(grid.n_tiles)
    images = [untile_window(tiles[b * grid.n_tiles:(b + 1) * grid.n_tiles], grid, every, whole)
              for b in range(tiles.shape[0] // grid.n_tiles)]
    return np.stack(images)
