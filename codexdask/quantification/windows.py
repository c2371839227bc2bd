"""What needs each object whole: its shape and the quantiles of its pixels, from one window.

An object's shape (and, on request, the median and percentiles of its pixels) needs all of it
at once. Each object is measured by exactly one *owner*: the chunk of its patch that holds its
box's centre; the owner reads one window, the union of its objects' boxes, and measures them
all there (``docs/quantification.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from codexdask.boxes import Box
from codexdask.quantification.kernels import (
    grouped_quantiles,
    object_tally,
    positions_by_table,
)
from codexdask.quantification.shapes import SHAPE_COLUMNS, measure_shapes

__all__ = ["align_measures", "interior", "owned_index", "window_measures"]


def owned_index(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each pixel's position in ``ids`` (sorted uint32), ``-1`` where its label is not one.

    Returns
    -------
    numpy.ndarray
        ``labels.shape`` int32.
    """
    labels = np.ascontiguousarray(labels, dtype=np.uint32)
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    if len(ids) == 0:
        return np.full(labels.shape, -1, np.int32)
    if int(ids[-1]) - int(ids[0]) < 4 * labels.size + 1024:  # ids of a window are close
        return positions_by_table(labels, ids)
    position = np.searchsorted(ids, labels)
    found = position < len(ids)
    found[found] = ids[position[found]] == labels[found]
    return np.where(found, position, -1).astype(np.int32)


def window_measures(
    shape_masks: Mapping[str, np.ndarray],
    compartments: Mapping[str, np.ndarray],
    ids: np.ndarray,
    origin: tuple[int, int],
    read_channel: Callable[[int], np.ndarray] | None,
    n_channels: int,
    quantiles: np.ndarray,
) -> dict[str, Any]:
    """Shapes and pixel quantiles of the objects ``ids``, which the window holds whole.

    Parameters
    ----------
    shape_masks : mapping of str to numpy.ndarray
        Name -> ``(H, W)`` uint32 label window whose objects ``ids`` are measured as shapes
        (e.g. ``cell`` and ``nucleus``).
    compartments : mapping of str to numpy.ndarray
        Compartment -> ``(H, W)`` uint32 label window holding each object's pixels of that
        compartment (for quantiles).
    ids : numpy.ndarray
        ``(K,)`` uint32, ascending.
    origin : (int, int)
        Slide coordinates of the window's top-left pixel.
    read_channel : callable or None
        ``read_channel(c)`` -> ``(H, W)`` pixels over the window; ``None`` when no quantile is
        asked for.
    n_channels : int
        C.
    quantiles : numpy.ndarray
        ``(Q,)`` in [0, 1].

    Returns
    -------
    dict
        ``"labels"`` -> ``ids``; ``"shapes"`` -> name -> DataFrame of
        :data:`~codexdask.quantification.shapes.SHAPE_COLUMNS`, ``K`` rows (NaN for an object
        without pixels in that mask); ``"quantiles"`` -> compartment -> ``(Q, C, K)`` float64.
    """
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    shapes: dict[str, pd.DataFrame] = {}
    for name, labels in shape_masks.items():
        labels = np.ascontiguousarray(labels, dtype=np.uint32)
        counts, _, boxes = object_tally(owned_index(labels, ids)[None], len(ids))
        present = counts[0] > 0
        table = pd.DataFrame(np.nan, index=range(len(ids)), columns=list(SHAPE_COLUMNS))
        if present.any():
            measured = measure_shapes(labels, ids[present], boxes[present], origin)
            table.loc[present, :] = measured.to_numpy()
        shapes[name] = table
    found: dict[str, np.ndarray] = {}
    if read_channel is not None and len(quantiles):
        indices = {name: owned_index(np.asarray(labels, np.uint32), ids).reshape(-1)
                   for name, labels in compartments.items()}
        found = {name: np.empty((len(quantiles), n_channels, len(ids))) for name in indices}
        for channel in range(n_channels):
            values = np.asarray(read_channel(channel)).reshape(-1)
            for name, index in indices.items():
                found[name][:, channel] = grouped_quantiles(index, values, len(ids), quantiles)
    return {"labels": ids, "shapes": shapes, "quantiles": found}


def interior(boxes: np.ndarray, region: Box, patch_shape: tuple[int, int]) -> np.ndarray:
    """Which objects a chunk holds whole: boxes ``(K, 4)`` (patch coordinates) that touch no
    edge of the chunk ``region`` (top, left, bottom, right) lying inside the patch."""
    top, left, bottom, right = region
    return (((boxes[:, 0] > top) | (top == 0))
            & ((boxes[:, 1] > left) | (left == 0))
            & ((boxes[:, 2] < bottom) | (bottom >= patch_shape[0]))
            & ((boxes[:, 3] < right) | (right >= patch_shape[1])))


def align_measures(parts: Sequence[Mapping[str, Any]], ids: np.ndarray,
                   shape_names: Sequence[str], compartments: Sequence[str],
                   n_quantiles: int, n_channels: int) -> tuple[dict[str, pd.DataFrame],
                                                               dict[str, np.ndarray]]:
    """The measures of several windows (or chunks), in the order of ``ids``.

    Returns
    -------
    shapes : dict
        Name -> DataFrame, one row per id (NaN where no part measured it).
    quantiles : dict
        Compartment -> ``(Q, C, K)`` (NaN where no part measured it); empty when ``Q == 0``.
    """
    measured = np.concatenate([np.asarray(p["labels"], np.uint32) for p in parts] + [
        np.zeros(0, np.uint32)])
    known = np.zeros(len(ids), bool)
    where = np.zeros(len(ids), np.int64)  # row of each id among the parts' rows
    if len(measured):
        order = np.argsort(measured, kind="stable")
        where = order[np.minimum(np.searchsorted(measured[order], ids), len(measured) - 1)]
        known = measured[where] == ids
    shapes = {}
    for name in shape_names:
        table = pd.DataFrame(np.nan, index=range(len(ids)), columns=list(SHAPE_COLUMNS))
        tables = [p["shapes"][name] for p in parts if name in p.get("shapes", {})]
        if tables and known.any():
            joined = pd.concat(tables, ignore_index=True).to_numpy()
            table.loc[known, :] = joined[where[known]]
        shapes[name] = table
    quantiles = {}
    for name in compartments if n_quantiles else ():
        values = np.full((n_quantiles, n_channels, len(ids)), np.nan)
        arrays = [p["quantiles"][name] for p in parts if name in p.get("quantiles", {})]
        if arrays and known.any():
            values[..., known] = np.concatenate(arrays, axis=-1)[..., where[known]]
        quantiles[name] = values
    return shapes, quantiles
