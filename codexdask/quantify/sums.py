"""Per-object pixel sums of one chunk, and how partial sums add up.

A chunk of a patch gives, for every object with pixels in it, its pixel count, the sum of each
channel (and, on request, the sum of squares, minimum and maximum) per *layer*, and the box of
its pixels. Layers are the disjoint pixel sets one object is measured over: ``nucleus`` and
``cytoplasm`` of a matched cell (their union is the cell), or the single layer of an unmatched
cell or nucleus. Sums of integer images are exact integers, so :func:`combine` of any split of
a patch gives the same numbers (``docs/quantification.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from codexdask.errors import InputError
from codexdask.quantify.kernels import (
    accumulate,
    compact_labels,
    object_tally,
    square_sum_dtype,
    sum_dtype,
)

__all__ = ["ObjectSums", "chunk_sums", "combine"]


@dataclasses.dataclass
class ObjectSums:
    """Per-object sums over one or more chunks of one patch.

    Attributes
    ----------
    ids : numpy.ndarray
        ``(K,)`` uint32 object labels, ascending.
    counts : numpy.ndarray
        ``(L, K)`` int64 pixels per layer.
    sums : numpy.ndarray
        ``(L, C, K)`` channel sums per layer (:func:`~codexdask.quantify.kernels.sum_dtype`).
    boxes : numpy.ndarray
        ``(K, 4)`` int64 ``(top, left, bottom, right)`` of the object's pixels in the patch
        (exclusive ends), over every layer.
    coords : numpy.ndarray
        ``(L, 2, K)`` int64 sums of the pixels' row and column (patch coordinates): with the
        counts, exact centroids.
    squares, minima, maxima : numpy.ndarray or None
        ``(L, C, K)`` sums of squares, minima and maxima, when asked for.
    """

    ids: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    boxes: np.ndarray
    coords: np.ndarray
    squares: np.ndarray | None = None
    minima: np.ndarray | None = None
    maxima: np.ndarray | None = None

    @property
    def extra(self) -> bool:
        """Whether squares, minima and maxima are kept."""
        return self.squares is not None


def _limits(dtype: np.dtype) -> tuple[float | int, float | int]:
    if dtype.kind == "f":
        return np.inf, -np.inf
    info = np.iinfo(dtype)
    return int(info.max), int(info.min)


def _kernel_input(values: np.ndarray, extra: bool) -> np.ndarray:
    """Pixels widened so that the kernel squares them without overflow or rounding."""
    if not extra:
        return values
    if values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    if values.dtype.itemsize <= 2:
        return values.astype(np.uint64 if values.dtype.kind in "ub" else np.int64)
    return values


def chunk_sums(
    layers: Sequence[np.ndarray],
    read_channel: Callable[[int], np.ndarray],
    n_channels: int,
    dtype: np.dtype,
    origin: tuple[int, int],
    *,
    extra: bool = False,
) -> ObjectSums:
    """The sums of every object with pixels in one chunk.

    Parameters
    ----------
    layers : sequence of numpy.ndarray
        ``L`` label images ``(h, w)`` uint32 over the chunk, sharing one id space (an object's
        layers hold disjoint pixels).
    read_channel : callable
        ``read_channel(c)`` -> ``(h, w)`` pixels of channel ``c`` over the chunk (read one at a
        time, so memory does not grow with the channel count).
    n_channels : int
        C.
    dtype : numpy.dtype
        The slide's pixel dtype.
    origin : (int, int)
        The chunk's top-left pixel in patch coordinates (boxes are in patch coordinates).
    extra : bool
        Also keep sums of squares, minima and maxima.

    Returns
    -------
    ObjectSums
    """
    dtype = np.dtype(dtype)
    stacked = np.stack([np.asarray(layer, dtype=np.uint32) for layer in layers])
    n_layers = stacked.shape[0]
    ids, index = compact_labels(stacked)
    k = len(ids)
    counts, coords, boxes = object_tally(index, k)
    coords += np.array(origin, np.int64)[None, :, None] * counts[:, None, :]
    boxes += np.array([origin[0], origin[1], origin[0], origin[1]])
    out = ObjectSums(ids, counts, np.zeros((n_layers, n_channels, k), sum_dtype(dtype)), boxes,
                     coords)
    if extra:
        low, high = _limits(dtype)
        out.squares = np.zeros((n_layers, n_channels, k), square_sum_dtype(dtype))
        out.minima = np.full((n_layers, n_channels, k), low, dtype)
        out.maxima = np.full((n_layers, n_channels, k), high, dtype)
    if k == 0:
        return out
    # One pass per channel: the layers are disjoint, so each pixel feeds one (object, layer).
    both = index >= 0
    if n_layers > 1 and (both.sum(axis=0) > 1).any():
        raise InputError(
            "the layers of one object overlap (a nucleus pixel that is also cytoplasm); the "
            "repaired masks are inconsistent: segment the slide again")
    combined = np.full(index.shape[1:], -1, np.int32)
    for layer in range(n_layers):
        combined[both[layer]] = index[layer][both[layer]] * n_layers + layer
    flat = {name: np.zeros((n_channels, k * n_layers), getattr(out, name).dtype)
            for name in ("sums", "squares", "minima", "maxima") if getattr(out, name) is not None}
    if extra:
        flat["minima"][:] = low
        flat["maxima"][:] = high
    empty = np.zeros(0, np.float64)
    for channel in range(n_channels):
        values = _kernel_input(np.ascontiguousarray(read_channel(channel)).reshape(-1), extra)
        rows = [flat[name][channel] if name in flat else empty
                for name in ("sums", "squares", "minima", "maxima")]
        accumulate(combined.reshape(-1), values, *rows)
    for name, values in flat.items():  # (C, K * L) -> (L, C, K)
        setattr(out, name, np.ascontiguousarray(
            values.reshape(n_channels, k, n_layers).transpose(2, 0, 1)))
    return out


def combine(parts: Sequence[ObjectSums]) -> ObjectSums:
    """Add up the sums of chunks of one patch (in any grouping: the result is the same).

    Parameters
    ----------
    parts : sequence of ObjectSums
        At least one; all with the same layers, channels and ``extra``.

    Returns
    -------
    ObjectSums
        One entry per distinct id, ascending.
    """
    parts = [p for p in parts if len(p.ids)] or list(parts[:1])
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])

    def reduce(ufunc: np.ufunc, arrays: list[np.ndarray]) -> np.ndarray:
        joined = np.concatenate(arrays, axis=-1)[..., order]
        return ufunc.reduceat(joined, starts, axis=-1)

    boxes = np.concatenate([p.boxes for p in parts])[order]
    out = ObjectSums(
        ids=ids[starts],
        counts=reduce(np.add, [p.counts for p in parts]),
        sums=reduce(np.add, [p.sums for p in parts]),
        coords=reduce(np.add, [p.coords for p in parts]),
        boxes=np.concatenate([np.minimum.reduceat(boxes[:, :2], starts),
                              np.maximum.reduceat(boxes[:, 2:], starts)], axis=1),
    )
    if parts[0].extra:
        out.squares = reduce(np.add, [p.squares for p in parts])  # type: ignore[misc]
        out.minima = reduce(np.minimum, [p.minima for p in parts])  # type: ignore[misc]
        out.maxima = reduce(np.maximum, [p.maxima for p in parts])  # type: ignore[misc]
    return out
