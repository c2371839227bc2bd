"""Whole-slide mosaics: the image and the label masks placed on the slide, as OME-Zarr and OME-TIFF.

Five steps, each bounded by one patch or one canvas block in memory:

1. :func:`place_patches` fills level 0 of every canvas patch by patch and, within a patch, block
   by block (image from every patch, labels from the informative ones, made unique across
   patches by a running offset), so a whole-slide patch never sits in memory;
2. :func:`build_pyramid` strides each level 2x into the next;
3. :func:`write_label_tiffs` copies each label pyramid into a pyramidal OME-TIFF;
4. for OME-Zarr 0.5 (Zarr v3), :func:`shard_canvases` copies every level, one shard at a time,
   into arrays of :data:`MOSAIC_SHARD`² shards (steps 1-2 write small parts of many chunks,
   which in a shard would mean rewriting the whole shard each time);
5. :func:`write_ngff_metadata` describes the image and its label images (NGFF 0.5 or 0.4).

:func:`write_mosaics` runs them in a temporary folder renamed to ``OUT/mosaics`` at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import tifffile
import zarr

from codexdask.atomic import atomic_path
from codexdask.boxes import Box
from codexdask.errors import StoreError
from codexdask.layout import (
    CELL_MATCHED_MASK,
    DEFAULT_IMAGE_MPP,
    MASK_NAMES,
    MAX_LABEL,
    MOSAIC_LABELS,
    MOSAIC_ZARR,
    MOSAICS_DIR,
    NUCLEUS_MATCHED_MASK,
    mosaic_tiff_name,
)
from codexdask.outputs.ngff import write_ngff_metadata
from codexdask.outputs.result_store import LABEL_COMPRESSOR, require_done
from codexdask.store.formats import Blosc, create_array, new_group, zarr_format_of

__all__ = [
    "PatchStoreLike",
    "build_pyramid",
    "place_patches",
    "pyramid_shapes",
    "shard_canvases",
    "write_label_tiffs",
    "write_mosaics",
]

#: Side of the canvas chunks (and of the blocks the pyramid is built from).
CANVAS_CHUNK = 512
#: Side of the shards of the OME-Zarr 0.5 mosaics (Zarr v3): 16 canvas chunks a file.
MOSAIC_SHARD = 2048
#: Side of the OME-TIFF tiles.
TIFF_TILE = 512
_IMAGE_COMPRESSOR = Blosc("zstd", 3)
_AXES = ("c", "y", "x")
#: The unsharded canvases of a Zarr v3 mosaic while it is built (removed at the end).
_UNSHARDED_ZARR = "canvases.zarr"
#: Label canvases whose IDs advance together: a matched cell and its nucleus keep one ID.
_MATCHED_PAIR = tuple((label, mask) for label, mask in MOSAIC_LABELS.items()
                      if mask in (CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK))


class PatchStoreLike(Protocol):
    """What :func:`write_mosaics` needs from a patch store (``patches.open_patch_store``)."""

    @property
    def n_patches(self) -> int:
        """Number of patches."""

    @property
    def dtype(self) -> Any:
        """Pixel dtype."""

    def read_patch(self, index: int, region: Box | None = None) -> np.ndarray:
        """``(h, w, 2)`` pixels of ``region`` (patch coordinates) of patch ``index``."""

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per patch with x_start, y_start, height, width, is_informative."""

    @property
    def attrs(self) -> Mapping[str, Any]:
        """Store facts: slide_shape, padded_shape, image_mpp, nucleus and whole-cell channels."""


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Level shapes of a 2x striding pyramid, as the original pipeline builds its OME-TIFFs.

    A level is added while both sides of the current one are >= 512 and the new one is >= 256
    on both sides: 1200x1200 -> 600x600 -> 300x300.
    """
    shapes = [(int(height), int(width))]
    while min(shapes[-1]) >= 512:
        h, w = shapes[-1]
        nxt = ((h + 1) // 2, (w + 1) // 2)
        if min(nxt) < 256:
            break
        shapes.append(nxt)
    return shapes


def _create_level(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any,
                  compressor: Blosc, shard: int | None = None) -> zarr.Array:
    """A ``(c, y, x)`` canvas level in CANVAS_CHUNK² chunks; in shards of ``shard``² if given."""
    chunks = (1,) + tuple(min(CANVAS_CHUNK, s) or 1 for s in shape[1:])
    shards = None if shard is None else (shape[0],) + tuple(
        min(shard, -(-s // c) * c) for s, c in zip(shape[1:], chunks[1:]))
    return create_array(group, name, shape=shape, chunks=chunks, shards=shards, dtype=dtype,
                        fill_value=0, compressor=compressor, dimension_names=_AXES,
                        store_empty_chunks=True)  # labels of zeros are not pasted


def _copy_blocks(src: zarr.Array, dst: zarr.Array, stride: int = 1) -> None:
    """``dst = src[:, ::stride, ::stride]``, one write unit of ``dst`` (a shard, else a chunk)
    at a time; blocks of zeros are skipped (``dst`` is empty)."""
    _, h, w = dst.shape
    step_y, step_x = (dst.shards or dst.chunks)[1:]
    for y in range(0, h, step_y):
        for x in range(0, w, step_x):
            y1, x1 = min(y + step_y, h), min(x + step_x, w)
            block = src[:, stride * y : stride * y1 : stride, stride * x : stride * x1 : stride]
            if block.any():
                dst[:, y:y1, x:x1] = block


def _placements(metadata: pd.DataFrame, canvas: tuple[int, int],
                patch_shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of every patch, cropped to its true size and to the canvas."""
    needed = ["x_start", "y_start", "height", "width", "is_informative"]
    missing = [c for c in needed if c not in metadata.columns]
    if missing:
        raise StoreError(f"patch store metadata lacks {missing}; rewrite it with `codexdask patch`")
    out = []
    for y, x, h, w in metadata[["y_start", "x_start", "height", "width"]].itertuples(index=False):
        y, x = max(int(y), 0), max(int(x), 0)
        h = max(min(int(h), patch_shape[0], canvas[0] - y), 0)
        w = max(min(int(w), patch_shape[1], canvas[1] - x), 0)
        out.append((y, x, h, w))
    return out


def _paste_labels(canvas: zarr.Array, labels: np.ndarray, y: int, x: int, offset: int) -> None:
    """Shift non-zero ``labels`` by offset - 1 and write them where ``canvas`` is still 0."""
    h, w = labels.shape
    if h == 0 or w == 0 or not labels.any():
        return
    if offset - 1 + int(labels.max()) > MAX_LABEL:
        raise StoreError("the slide has more than 2^32 - 1 labels; the uint32 mosaics cannot "
                         "hold them")
    region = np.asarray(canvas[0, y : y + h, x : x + w])
    write = (region == 0) & (labels > 0)
    if not write.any():
        return
    region[write] = labels[write] + np.uint32(offset - 1)
    canvas[0, y : y + h, x : x + w] = region


def _tiles(level: zarr.Array, tile: int = TIFF_TILE) -> Iterator[np.ndarray]:
    """Yield the (tile, tile) tiles of ``level[0]`` in row-major order (edge tiles smaller).

    Reads one band of ``tile`` rows by CANVAS_CHUNK columns at a time.
    """
    _, h, w = level.shape
    band = max(CANVAS_CHUNK // tile, 1) * tile
    for y in range(0, h, tile):
        for xb in range(0, w, band):
            block = np.asarray(level[0, y : y + tile, xb : xb + band])
            for x in range(0, block.shape[1], tile):
                yield np.ascontiguousarray(block[:, x : x + tile])


def _write_ome_tiff(path: Path, levels: Sequence[zarr.Array], name: str, mpp: float) -> None:
    """Pyramidal OME-TIFF (BigTIFF, uint32, zlib, 512² tiles, SubIFD levels), tile by tile."""
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": [name]},
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, level in enumerate(levels):
            tif.write(
                _tiles(level),
                shape=tuple(level.shape),
                dtype=np.uint32,
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                photometric="minisblack",
                subifds=len(levels) - 1 if k == 0 else None,
                subfiletype=0 if k == 0 else 1,
                metadata=metadata if k == 0 else None,
            )




class Canvases:
    """The level pyramids of one mosaic: the image ``(2, h, w)`` and each label ``(1, h, w)``.

    Parameters
    ----------
    path : Path
        The new Zarr group.
    shapes : sequence of (int, int)
        ``(h, w)`` of each level.
    dtype
        The image's dtype.
    zarr_format : {3, 2}
    shard : int, optional
        Shard side (Zarr v3); plain CANVAS_CHUNK² chunks without it.

    Attributes
    ----------
    root : zarr.Group
        The OME-Zarr group (``slide.ome.zarr``).
    image : list of zarr.Array
        Image levels, the patch store's dtype.
    labels : dict
        NGFF label name -> list of uint32 levels, for each name of ``MOSAIC_LABELS``.
    """

    def __init__(self, path: Path, shapes: Sequence[tuple[int, int]], dtype: Any,
                 zarr_format: int = 3, shard: int | None = None) -> None:
        self.root = new_group(path, zarr_format)
        self.image = [
            _create_level(self.root, str(k), (2, *s), dtype, _IMAGE_COMPRESSOR, shard)
            for k, s in enumerate(shapes)
        ]
        labels_root = self.root.create_group("labels")
        self.labels: dict[str, list[zarr.Array]] = {}
        for label in MOSAIC_LABELS:
            label_group = labels_root.create_group(label)
            self.labels[label] = [
                _create_level(label_group, str(k), (1, *s), np.uint32, LABEL_COMPRESSOR, shard)
                for k, s in enumerate(shapes)
            ]

    def levels(self) -> list[list[zarr.Array]]:
        """The image's levels, then each label's."""
        return [self.image, *self.labels.values()]


def place_patches(
    canvases: Canvases,
    group: zarr.Group,
    patch_store: PatchStoreLike,
    placements: Sequence[tuple[int, int, int, int]],
    informative: Sequence[int],
) -> tuple[float, float]:
    """Fill level 0 of every canvas, one patch at a time, each in blocks of :data:`PLACE_BLOCK`.

    Patches are placed at their ``(y, x)`` cut to their true ``(h, w)``. Labels come from the
    informative patches only, in patch order, with a running offset: a patch's non-zero labels
    are shifted by offset - 1 (offset starts at 1), then offset += that patch's maximum label, and
    pixels are written only where the canvas is still 0 (the first patch wins on overlap).
    ``cell`` and ``nucleus`` have independent offsets; the matched cells and nuclei share one
    (advanced by the larger maximum of the two), so a matched pair keeps one ID.

    Returns
    -------
    (float, float)
        Display maximum of the nucleus and whole-cell channels (largest 99.9th percentile of a
        patch, sampled every 4th pixel).
    """
    window = [0.0, 0.0]
    offsets = {"cells": 1, "nuclei": 1, "matched": 1}
    informative_set = set(informative)
    # opened once (zarr 3: ~0.4 ms an opening)
    masks = {key: group[key] for key in ("cell", "nucleus", *dict(_MATCHED_PAIR).values())}
    for i, (y, x, h, w) in enumerate(placements):
        highest = {"cells": 0, "nuclei": 0, "matched": 0}
        for block in _blocks(h, w):
            top, left = y + block.top, x + block.left
            pixels = patch_store.read_patch(i, block)
            canvases.image[0][(slice(None),) + block.shift(y, x).slices()] = \
                np.moveaxis(pixels, -1, 0)
            for c in range(2):
                window[c] = max(window[c], float(np.percentile(pixels[::4, ::4, c], 99.9)))
            if i not in informative_set:
                continue
            for label, key in (("cells", "cell"), ("nuclei", "nucleus")):
                mask = np.asarray(masks[key][(i,) + block.slices()])
                _paste_labels(canvases.labels[label][0], mask, top, left, offsets[label])
                highest[label] = max(highest[label], int(mask.max(initial=0)))
            for label, key in _MATCHED_PAIR:
                mask = np.asarray(masks[key][(i,) + block.slices()])
                _paste_labels(canvases.labels[label][0], mask, top, left, offsets["matched"])
                highest["matched"] = max(highest["matched"], int(mask.max(initial=0)))
        for label, value in highest.items():
            offsets[label] += value
    return window[0], window[1]


#: Side of the blocks a patch is placed in (a multiple of the canvas chunks).
PLACE_BLOCK = 4 * CANVAS_CHUNK


def _blocks(height: int, width: int) -> list[Box]:
    """Blocks of :data:`PLACE_BLOCK` covering an ``(height, width)`` patch, row by row."""
    return [Box(top, left, min(top + PLACE_BLOCK, height), min(left + PLACE_BLOCK, width))
            for top in range(0, height, PLACE_BLOCK) for left in range(0, width, PLACE_BLOCK)]


def build_pyramid(canvases: Canvases) -> None:
    """Fill every level below 0 by 2x nearest-neighbour striding of the level above."""
    for levels in canvases.levels():
        for k in range(1, len(levels)):
            _copy_blocks(levels[k - 1], levels[k], stride=2)


def shard_canvases(canvases: Canvases, path: Path, shard: int = MOSAIC_SHARD) -> Canvases:
    """Copy ``canvases`` into new Zarr v3 canvases at ``path`` in ``shard``² shards, one shard
    at a time (each shard written once, whole)."""
    shapes = [tuple(level.shape[1:]) for level in canvases.image]
    sharded = Canvases(path, shapes, canvases.image[0].dtype, zarr_format=3, shard=shard)
    for sources, targets in zip(canvases.levels(), sharded.levels()):
        for src, dst in zip(sources, targets):
            _copy_blocks(src, dst)
    return sharded


def write_label_tiffs(canvases: Canvases, folder: Path, exp_id: str, mpp: float) -> None:
    """One pyramidal OME-TIFF per label mosaic, ``folder/{exp_id}.{mask}.segmentations...``."""
    for label, name in MOSAIC_LABELS.items():
        _write_ome_tiff(folder / mosaic_tiff_name(exp_id, name), canvases.labels[label], name, mpp)


def write_mosaics(
    group: zarr.Group,
    patch_store: PatchStoreLike,
    out_dir: str | os.PathLike[str],
    *,
    exp_id: str = "codexdask",
    image_mpp: float | None = None,
    zarr_format: int | None = None,
) -> dict[str, Path]:
    """Whole-slide mosaics of the image and of the cell / nucleus labels (original and matched).

    Canvas: the slide's shape ``(He, We)`` (the patch store's ``slide_shape``; patches are cut to
    it, leaving out the grid's zero padding; stores without it use ``padded_shape``); placement
    and label IDs as in :func:`place_patches` (a patch's labels beyond the slide do not count).
    Written under ``out_dir/mosaics/`` (built in a temporary sibling, then renamed; an existing
    ``mosaics/`` is replaced):

    - ``slide.ome.zarr``: OME-Zarr 0.5 (Zarr v3, :data:`MOSAIC_SHARD`² shards of
      :data:`CANVAS_CHUNK`² chunks) or 0.4 (Zarr v2, chunks) image (2, He, We) (nucleus,
      whole-cell; the patch store dtype) with
      ``labels/{cells,nuclei,cells_matched,nuclei_matched}``, each (1, He, We) uint32 with the
      same number of levels as the image;
    - ``{exp_id}.{name}.segmentations.ome.tiff`` for name in cell, nucleus, cell_matched_mask,
      nucleus_matched_mask: pyramidal OME-TIFF of the same levels.

    Every level is a 2x nearest-neighbour striding of the one above (:func:`pyramid_shapes`).
    Memory: one block of a patch plus one canvas block at a time.

    Parameters
    ----------
    group : zarr.Group
        The result store; every informative patch must be done.
    patch_store : PatchStore
        ``.read_patch``, ``.metadata`` (x_start, y_start, height, width, is_informative),
        ``.attrs`` (slide_shape and padded_shape, optionally image_mpp and channel names).
    out_dir : path
        The run's output directory.
    exp_id : str
        Base name of the OME-TIFF files.
    image_mpp : float, optional
        Microns per pixel (PhysicalSizeX/Y and NGFF scale); default the store's ``image_mpp``.
    zarr_format : {3, 2}, optional
        3 for OME-Zarr 0.5, 2 for 0.4; default the result store's format.

    Returns
    -------
    dict
        ``{"ome_zarr": Path, "cell": Path, "nucleus": Path, "cell_matched_mask": Path,
        "nucleus_matched_mask": Path}`` (final paths).
    """
    attrs = dict(patch_store.attrs)
    if "padded_shape" not in attrs:
        raise StoreError("patch store attributes lack padded_shape; rewrite it with "
                         "`codexdask patch`")
    mpp = float(image_mpp if image_mpp is not None
                else attrs.get("image_mpp") or DEFAULT_IMAGE_MPP)
    # The slide's own shape, so that the mosaics overlay it; the patch grid's zero padding (at
    # the bottom and right) is left out. Stores without slide_shape keep the padded canvas.
    canvas = attrs.get("slide_shape") or attrs["padded_shape"]
    canvas_shape = (int(canvas[0]), int(canvas[1]))
    metadata = patch_store.metadata.reset_index(drop=True)
    n, ph, pw = (int(v) for v in group[MASK_NAMES[0]].shape)
    if len(metadata) != n or patch_store.n_patches != n:
        raise StoreError(f"result store has {n} patches but the patch store has "
                         f"{len(metadata)}; use the patch store the run was made from")
    placements = _placements(metadata, canvas_shape, (ph, pw))
    informative = [i for i, flag in enumerate(metadata["is_informative"].astype(bool)) if flag]
    require_done(group, informative)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MOSAICS_DIR
    dtype = patch_store.dtype
    zarr_format = zarr_format_of(group) if zarr_format is None else zarr_format
    with atomic_path(final, replace_dir=True) as tmp:
        tmp.mkdir()
        shapes = pyramid_shapes(*canvas_shape)
        # v3: placed and strided in chunks, then copied into shards
        canvases = Canvases(tmp / (MOSAIC_ZARR if zarr_format == 2 else _UNSHARDED_ZARR), shapes,
                            dtype, zarr_format=zarr_format)
        window = place_patches(canvases, group, patch_store, placements, informative)
        build_pyramid(canvases)
        write_label_tiffs(canvases, tmp, exp_id, mpp)
        if zarr_format != 2:
            canvases = shard_canvases(canvases, tmp / MOSAIC_ZARR)
            shutil.rmtree(tmp / _UNSHARDED_ZARR)
        write_ngff_metadata(canvases.root, len(shapes), attrs, dtype, window, mpp)
    paths = {"ome_zarr": final / MOSAIC_ZARR}
    for name in MOSAIC_LABELS.values():
        paths[name] = final / mosaic_tiff_name(exp_id, name)
    return paths
