"""Stitching by single ownership: each object is taken whole from the one block that owns it.

Per block (:func:`owned_objects`): an object of the window's labels is *owned* when the centre of
its bounding box lies in the block's core; it is *complete* when it does not reach an edge of the
window that is not an edge of the patch. Owned complete objects are kept, relabelled 1..k in raster
order of their first pixel. An incomplete object that the block owns or that reaches into its core
is larger than the halo allows: the part of it the block saw is recorded
(:class:`~codexdask.seamless.regrow.Objects`) for :mod:`codexdask.seamless.regrow`, never cut
silently. An object seen whole by two blocks has the same bounding box in both, so exactly one
core holds its centre.

Across blocks (:func:`number_objects`): every kept object gets a global id, its rank in the raster
order of first pixels over the whole patch, which is how a one-shot labelling would be ordered.

Per output region (:func:`compose`): the kept objects of the blocks whose windows overlap the
region are pasted with their global ids. Where two kept objects claim one pixel (possible only
when blocks disagree about a segmentation, never for exact blocks) the lower id wins and the pixels
are counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from codexdask.boxes import Box
from codexdask.errors import InputError
from codexdask.seamless.regrow import Objects

__all__ = ["OwnedObjects", "compose", "number_objects", "owned_objects"]


@dataclasses.dataclass(frozen=True)
class OwnedObjects:
    """The objects one block keeps.

    Attributes
    ----------
    labels : ndarray of uint32, shape (h, w)
        The window with only the kept objects, labelled 1..k in raster order of first pixel.
    first_pixels : ndarray of int64, shape (k,)
        Row-major position in the patch of each kept object's first pixel (ascending).
    cut : Objects
        Objects cut by the window's edge that this block owns or that reach into its core: the
        parts it saw (first pixel, box, mask), to be regrown.
    """

    labels: npt.NDArray[np.uint32]
    first_pixels: npt.NDArray[np.int64]
    cut: Objects

    @property
    def n_cut(self) -> int:
        """Cut objects this block recorded (dropped unless regrown)."""
        return len(self.cut)


def owned_objects(
    labels: np.ndarray, window: Box, core: Box, patch_shape: tuple[int, int]
) -> OwnedObjects:
    """Keep the objects of ``labels`` that block ``core`` owns and sees whole.

    Parameters
    ----------
    labels : ndarray, shape (h, w)
        Non-negative integer labels of the window ``window`` (0 = background; any ids).
    window, core : Box
        The block's window and core in patch coordinates (``core`` inside ``window``).
    patch_shape : (int, int)
        Height and width of the logical patch.

    Returns
    -------
    OwnedObjects
    """
    labels = np.asarray(labels)
    if labels.shape != window.shape:
        raise InputError(f"labels of shape {labels.shape} do not cover the window {window}")
    empty = OwnedObjects(np.zeros(window.shape, np.uint32), np.zeros(0, np.int64),
                         Objects.of([]))
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    if ids[0] == 0:
        ids, first = ids[1:], first[1:]
    if ids.size == 0:
        return empty
    compact = np.searchsorted(ids, labels) + 1  # 1..K for objects, label 0 -> 1 masked below
    compact[labels == 0] = 0
    spans = ndi.find_objects(compact)
    y_lo = np.array([s[0].start for s in spans]) + window.top
    y_hi = np.array([s[0].stop - 1 for s in spans]) + window.top
    x_lo = np.array([s[1].start for s in spans]) + window.left
    x_hi = np.array([s[1].stop - 1 for s in spans]) + window.left
    # Twice the bounding-box centre, so that cores (half-open) decide ownership exactly.
    cy, cx = y_lo + y_hi, x_lo + x_hi
    owned = ((2 * core.top <= cy) & (cy < 2 * core.bottom)
             & (2 * core.left <= cx) & (cx < 2 * core.right))
    cut = (
        ((y_lo == window.top) & (window.top > 0))
        | ((y_hi == window.bottom - 1) & (window.bottom < patch_shape[0]))
        | ((x_lo == window.left) & (window.left > 0))
        | ((x_hi == window.right - 1) & (window.right < patch_shape[1]))
    )
    keep = owned & ~cut
    rows, cols = np.divmod(first, window.shape[1])
    positions = (rows + window.top).astype(np.int64) * patch_shape[1] + (cols + window.left)
    order = np.argsort(positions[keep], kind="stable")
    kept = np.flatnonzero(keep)[order]
    lut = np.zeros(ids.size + 1, dtype=np.uint32)
    lut[kept + 1] = np.arange(1, kept.size + 1, dtype=np.uint32)
    # Cut objects to regrow: those it owns, and those reaching into its core (only an object
    # larger than the halo reaches from the window's edge into the core); together they hold
    # every object that no block sees whole from its owner's core (docs/semantics.md).
    # Only a cut object whose box reaches into the core is looked at pixel by pixel: few.
    reaches = cut & ~owned & (y_lo < core.bottom) & (core.top <= y_hi) \
        & (x_lo < core.right) & (core.left <= x_hi)
    in_core = np.zeros(ids.size, dtype=bool)
    for i in np.flatnonzero(reaches).tolist():
        inside = Box(int(y_lo[i]), int(x_lo[i]), int(y_hi[i]) + 1,
                     int(x_hi[i]) + 1).intersection(core)
        in_core[i] = bool(np.any(compact[inside.slices(window)] == i + 1))
    lost = np.flatnonzero(cut & (owned | in_core))
    return OwnedObjects(
        labels=lut[compact],
        first_pixels=positions[kept],
        cut=Objects.of([(int(positions[i]),
                         Box(int(y_lo[i]), int(x_lo[i]), int(y_hi[i]) + 1, int(x_hi[i]) + 1),
                         compact[spans[i]] == i + 1) for i in lost.tolist()]),
    )


def number_objects(first_pixels: Sequence[np.ndarray]) -> list[npt.NDArray[np.uint32]]:
    """Global ids of every block's kept objects: ranks in the raster order of first pixels.

    Parameters
    ----------
    first_pixels : sequence of ndarray of int64
        One array per block, in block order: :attr:`OwnedObjects.first_pixels`.

    Returns
    -------
    list of ndarray of uint32
        One lookup table per block, ``table[local id] = global id`` (``table[0] = 0``).

    Raises
    ------
    InputError
        If the patch holds more objects than uint32 labels can number.
    """
    counts = [len(p) for p in first_pixels]
    total = int(sum(counts))
    if total >= 2**32 - 1:
        raise InputError(f"{total} objects exceed the uint32 label range; use smaller patches")
    positions = np.concatenate([np.asarray(p, np.int64) for p in first_pixels]) if counts else \
        np.zeros(0, np.int64)
    # Stable: equal first pixels (only when blocks disagree) are ordered by block.
    ranks = np.empty(total, dtype=np.uint32)
    ranks[np.argsort(positions, kind="stable")] = np.arange(1, total + 1, dtype=np.uint32)
    tables, start = [], 0
    for count in counts:
        tables.append(np.concatenate([[0], ranks[start:start + count]]).astype(np.uint32))
        start += count
    return tables


def compose(
    region: Box, pieces: Sequence[tuple[Box, np.ndarray, np.ndarray]]
) -> tuple[npt.NDArray[np.uint32], int]:
    """Paste the kept objects of several blocks into one region with their global ids.

    Parameters
    ----------
    region : Box
        The output region in patch coordinates.
    pieces : sequence of (window, labels, table)
        Per block: its window, its :attr:`OwnedObjects.labels` and its :func:`number_objects`
        table.

    Returns
    -------
    labels : ndarray of uint32, shape region.shape
    conflicts : int
        Pixels claimed by more than one object (the lower id was kept).
    """
    out = np.zeros(region.shape, dtype=np.uint32)
    conflicts = 0
    for window, labels, table in pieces:
        common = window.intersection(region)
        if common.is_empty():
            continue
        values = np.asarray(table, np.uint32)[labels[common.slices(window)]]
        target = out[common.slices(region)]
        clash = (target > 0) & (values > 0)
        if clash.any():
            conflicts += int(np.count_nonzero(clash & (target != values)))
            values = np.where(clash, np.minimum(target, values), values)
        np.copyto(target, values, where=values > 0)
    return out, conflicts
