"""The tasks of a quantification, as workers run them: read a chunk or a window, measure it.

Each task opens what it reads by path (the result store, the slide), so it can run on any
worker, and keeps its result in the work folder, so that ``--resume`` does not compute it again.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from codexdask.atomic import atomic_path
from codexdask.boxes import Box
from codexdask.errors import SlideError
from codexdask.layout import (
    CELL,
    CELL_OUTSIDE_NUCLEUS_MASK,
    NUCLEUS,
    NUCLEUS_MATCHED_MASK,
)
from codexdask.quantification.sums import ObjectSums, chunk_sums, combine
from codexdask.quantification.table import COMPARTMENT_LAYERS
from codexdask.quantification.windows import interior, window_measures
from codexdask.readers import READ_ERRORS
from codexdask.store.slide import Slide, open_slide

__all__ = ["OBJECT_SETS", "Chunk", "ChunkResult", "Sources", "combine_parts", "sums_task",
           "window_task"]

#: The objects measured, by ``masks`` setting: object set -> the mask arrays of its layers. A
#: matched cell's layers are its nucleus and its cytoplasm (disjoint; together the cell): every
#: compartment and shape is built from them (``COMPARTMENT_LAYERS``).
OBJECT_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "matched": {"cell": (NUCLEUS_MATCHED_MASK, CELL_OUTSIDE_NUCLEUS_MASK)},
    "raw": {"cell": (CELL,), "nucleus": (NUCLEUS,)},
}
#: The compartments whose shape is measured.
SHAPE_COMPARTMENTS = ("cell", "nucleus")


def _compose(layers: list[np.ndarray], masks: str, object_set: str,
             names: Sequence[str]) -> dict[str, np.ndarray]:
    """Compartment label images from the layers (disjoint: their maximum is their union)."""
    wanted = COMPARTMENT_LAYERS[masks][object_set]
    return {name: layers[wanted[name][0]] if len(wanted[name]) == 1
            else np.maximum.reduce([layers[i] for i in wanted[name]])
            for name in names if name in wanted}


@dataclasses.dataclass
class ChunkResult:
    """What the sums pass keeps of a chunk (or of several, combined).

    Attributes
    ----------
    sums : ObjectSums
    measures : list of dict
        :func:`~codexdask.quantification.windows.window_measures` results of the objects the
        chunks held whole (their shapes, measured without a second reading).
    """

    sums: ObjectSums
    measures: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where a task reads and keeps: all absolute paths, so any worker can open them.

    Attributes
    ----------
    results : str
        The result store (``masks.zarr``).
    slide : str
        The multiplexed slide.
    work : str
        The work folder of partial results.
    slide_shape : (int, int)
        The slide's height and width: mask pixels beyond them (a patch's padding) are not
        measured.
    n_channels : int
    dtype : str
        The slide's pixel dtype.
    masks : {"matched", "raw"}
    extra : bool
        Keep sums of squares, minima and maxima.
    quantiles : tuple of float
        Order statistics asked for, in [0, 1].
    morphology : bool
    """

    results: str
    slide: str
    work: str
    slide_shape: tuple[int, int]
    n_channels: int
    dtype: str
    masks: str
    extra: bool
    quantiles: tuple[float, ...]
    morphology: bool


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A region of one patch.

    Attributes
    ----------
    patch : int
        The patch's position in the stores.
    number : int
        The region's number within the patch (names its work file).
    region : Box
        Patch coordinates.
    origin : (int, int)
        Slide coordinates of the patch's top-left pixel.
    patch_shape : (int, int)
        The patch's true height and width.
    """

    patch: int
    number: int
    region: Box
    origin: tuple[int, int]
    patch_shape: tuple[int, int]


@functools.lru_cache(maxsize=4)
def _slide(path: str) -> Slide:
    return open_slide(path)


def _channel_reader(path: str, box: Box) -> Callable[[list[int]], np.ndarray]:
    """A reader of channels over ``box`` (slide coordinates; zeros beyond the slide):
    ``read([c, ...])`` -> ``(G, h, w)``, one read of the file per call."""
    slide = _slide(path)
    inside = box.intersection(Box.whole((slide.height, slide.width)))

    def read(channels: list[int]) -> np.ndarray:
        if inside.is_empty():
            return np.zeros((len(channels), *box.shape), slide.dtype)
        picked = slice(channels[0], channels[-1] + 1)  # the groups asked for are runs
        try:
            pixels = np.asarray(slide.data[(picked,) + inside.slices()].compute(
                scheduler="synchronous"))
            if inside == box:
                return pixels
            out = np.zeros((len(channels), *box.shape), slide.dtype)
            out[(slice(None),) + inside.slices(box)] = pixels
        except READ_ERRORS as exc:
            raise SlideError(
                f"could not read channels {channels[0]}-{channels[-1]} over rows {box.top}-"
                f"{box.bottom}, columns {box.left}-{box.right} of {path}: the file is truncated "
                f"or unreadable ({exc}); re-export or re-copy the slide") from exc
        return out
    return read


def _masks(sources: Sources, names: tuple[str, ...] | list[str], patch: int, region: Box,
           origin: tuple[int, int]) -> list[np.ndarray]:
    """Mask arrays over ``region`` of ``patch``, background wherever it leaves the slide."""
    group = zarr.open_group(sources.results, mode="r")
    inside = region.shift(*origin).intersection(Box.whole(sources.slide_shape))
    out = []
    for name in names:
        mask = np.asarray(group[name][(patch,) + region.slices()])
        if inside.shape != region.shape:
            clipped = np.zeros_like(mask)
            if not inside.is_empty():
                part = inside.shift(-origin[0], -origin[1]).slices(region)
                clipped[part] = mask[part]
            mask = clipped
        out.append(mask)
    return out


def _kept(work: str, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, or what an earlier run kept in ``work/name``; kept either way."""
    path = Path(work) / name
    if path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    value = compute()
    os.makedirs(work, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return value


def sums_task(sources: Sources, chunk: Chunk, file_name: str) -> dict[str, ChunkResult]:
    """Pass 1 of one chunk: each object set's sums, and the shapes of the objects it holds
    whole when no quantile needs a second reading anyway (kept in the work folder)."""

    def compute() -> dict[str, ChunkResult]:
        sets = OBJECT_SETS[sources.masks]
        layers = [_masks(sources, names, chunk.patch, chunk.region, chunk.origin)
                  for names in sets.values()]
        read = _channel_reader(sources.slide, chunk.region.shift(*chunk.origin))
        found = chunk_sums(layers, read, sources.n_channels, np.dtype(sources.dtype),
                           (chunk.region.top, chunk.region.left), extra=sources.extra)
        out = {}
        for name, masks, sums in zip(sets, layers, found, strict=True):
            measures = []
            if sources.morphology and not sources.quantiles:
                whole = interior(sums.boxes, chunk.region, chunk.patch_shape)
                origin = (chunk.origin[0] + chunk.region.top, chunk.origin[1] + chunk.region.left)
                measures.append(window_measures(
                    _compose(masks, sources.masks, name, SHAPE_COMPARTMENTS), {},
                    sums.ids[whole], origin, None, 0, np.zeros(0)))
            out[name] = ChunkResult(sums, measures)
        return out

    return _kept(sources.work, file_name, compute)


def combine_parts(*parts: dict[str, ChunkResult]) -> dict[str, ChunkResult]:
    """Add up the pass 1 results of chunks of one patch, object set by object set."""
    return {name: ChunkResult(combine([part[name].sums for part in parts]),
                              [m for part in parts for m in part[name].measures])
            for name in parts[0]}


def window_task(
    sources: Sources, object_set: str, patch: int, window: Box, origin: tuple[int, int],
    ids: np.ndarray, file_name: str,
) -> dict[str, Any]:
    """Pass 2 of one owner: shapes and quantiles of ``ids``, whole in ``window``."""

    def compute() -> dict[str, Any]:
        layers = _masks(sources, OBJECT_SETS[sources.masks][object_set], patch, window, origin)
        compartments = COMPARTMENT_LAYERS[sources.masks][object_set]
        reader = None
        if sources.quantiles:
            read = _channel_reader(sources.slide, window.shift(*origin))

            def reader(channel: int) -> np.ndarray:
                return read([channel])[0]
        return window_measures(
            _compose(layers, sources.masks, object_set,
                     SHAPE_COMPARTMENTS if sources.morphology else ()),
            _compose(layers, sources.masks, object_set, tuple(compartments)),
            ids, (origin[0] + window.top, origin[1] + window.left), reader, sources.n_channels,
            np.asarray(sources.quantiles))

    return _kept(sources.work, file_name, compute)
