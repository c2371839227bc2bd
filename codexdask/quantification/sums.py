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
from codexdask.quantification.kernels import (
    accumulate,
    compact_labels,
    layer_slots,
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
        ``(L, C, K)`` channel sums per layer (:func:`~codexdask.quantification.kernels.sum_dtype`).
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


#: Bytes of pixels a task reads at once: channels are read in groups of this size (at least
#: one channel), so memory does not grow with the channel count.
GROUP_BYTES = 64 * 2**20


class _Layers:
    """One object set of a chunk: its ids, each pixel's (object, layer) slot, its tallies."""

    def __init__(self, layers: Sequence[np.ndarray], origin: tuple[int, int]) -> None:
        stacked = np.stack([np.asarray(layer, dtype=np.uint32) for layer in layers])
        self.n_layers = stacked.shape[0]
        self.ids, index = compact_labels(stacked)
        self.counts, self.coords, self.boxes = object_tally(index, len(self.ids))
        self.coords += np.array(origin, np.int64)[None, :, None] * self.counts[:, None, :]
        self.boxes += np.array([origin[0], origin[1], origin[0], origin[1]])
        # The layers are disjoint, so each pixel feeds one slot: object * L + layer.
        self.slots, overlap = layer_slots(index.reshape(self.n_layers, -1))
        if overlap:
            raise InputError(
                "the layers of one object overlap (a nucleus pixel that is also cytoplasm); the "
                "repaired masks are inconsistent: segment the slide again")


def chunk_sums(
    object_sets: Sequence[Sequence[np.ndarray]],
    read_channels: Callable[[list[int]], np.ndarray],
    n_channels: int,
    dtype: np.dtype,
    origin: tuple[int, int],
    *,
    extra: bool = False,
    group_bytes: int = GROUP_BYTES,
) -> list[ObjectSums]:
    """The sums of every object with pixels in one chunk, for one or more object sets.

    Parameters
    ----------
    object_sets : sequence of sequences of numpy.ndarray
        Per object set, its ``L`` label images ``(h, w)`` uint32 over the chunk, sharing one id
        space (an object's layers hold disjoint pixels). Sets have id spaces of their own.
    read_channels : callable
        ``read_channels([c, ...])`` -> ``(G, h, w)`` pixels of those channels over the chunk;
        channels are asked for in groups of at most ``group_bytes``, and each group once for
        every object set.
    n_channels : int
        C.
    dtype : numpy.dtype
        The slide's pixel dtype.
    origin : (int, int)
        The chunk's top-left pixel in patch coordinates (boxes are in patch coordinates).
    extra : bool
        Also keep sums of squares, minima and maxima.
    group_bytes : int
        Largest group of channels read at once, in pixel bytes.

    Returns
    -------
    list of ObjectSums
        One per object set.
    """
    dtype = np.dtype(dtype)
    sets = [_Layers(layers, origin) for layers in object_sets]
    names = ("sums", "squares", "minima", "maxima") if extra else ("sums",)
    kinds = {"sums": sum_dtype(dtype), "squares": square_sum_dtype(dtype), "minima": dtype,
             "maxima": dtype}
    low, high = _limits(dtype)
    starts = {"sums": 0, "squares": 0, "minima": low, "maxima": high}
    # Accumulators (slots, C): an object's channels side by side, as the kernel adds them.
    flats = [{name: np.full((len(one.ids) * one.n_layers, n_channels), starts[name],
                            kinds[name]) for name in names} for one in sets]
    pixels = max(1, int(sets[0].slots.size)) if sets else 1
    per_group = max(1, group_bytes // (pixels * dtype.itemsize))
    empty = np.zeros((0, 0), np.float64)
    if any(len(one.ids) for one in sets):
        for first in range(0, n_channels, per_group):
            group = list(range(first, min(first + per_group, n_channels)))
            values = _kernel_input(np.asarray(read_channels(group)).reshape(len(group), -1),
                                   extra)
            for one, flat in zip(sets, flats, strict=True):
                if len(one.ids):
                    columns = slice(group[0], group[-1] + 1)
                    accumulate(one.slots, values, *(flat[name][:, columns] if name in flat
                                                     else empty for name in
                                                     ("sums", "squares", "minima", "maxima")))
    out = []
    for one, flat in zip(sets, flats, strict=True):
        k, n_layers = len(one.ids), one.n_layers
        arrays = {name: np.ascontiguousarray(  # (K * L, C) -> (L, C, K)
            values.reshape(k, n_layers, n_channels).transpose(1, 2, 0))
            for name, values in flat.items()}
        out.append(ObjectSums(one.ids, one.counts, arrays["sums"], one.boxes, one.coords,
                              arrays.get("squares"), arrays.get("minima"), arrays.get("maxima")))
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
