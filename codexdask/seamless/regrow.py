"""Objects larger than the halo, segmented again in a window grown until it holds them.

A block keeps only the objects it sees whole (:mod:`codexdask.seamless.stitch`); an object cut by
its window's edge that it owns, or that reaches into its core, is recorded with the part it saw
(:class:`Objects`). After the block pass, the parts whose first pixel no block's kept objects
cover (:meth:`Objects.not_kept`) are grouped in clusters of parts that share pixels
(:meth:`CutParts.clusters`: the parts of one object seen by several blocks do) and each
cluster is looked for again (:func:`regrow_objects`): a part grown by the margin is segmented as
a window of the patch (the same image-wide statistics and global grids as any block, so the
window is what the one-piece segmentation gives there); the object at the part's first pixel is
taken when it lies inside that window with the margin all round, and otherwise the window doubles
on each side the object passes and is segmented again. A window serves every other part of the
cluster it holds whole. A window never exceeds ``max_window`` pixels a side (memory stays
bounded); an object that needs more is counted as unresolved, never cut silently.

Whether a regrown object is new is decided when the patch is numbered (:func:`new_objects`): one
that a block kept, or that another cluster found too, has the same first pixel, and only the
first is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from codexdask.boxes import Box
from codexdask.seamless.blocks import BlockGrid

__all__ = ["CutParts", "Objects", "PatchObjects", "RegrowReport", "new_objects",
           "regrow_objects"]


@dataclasses.dataclass(frozen=True)
class Objects:
    """Objects of one compartment, each a mask over its bounding box: the parts of cut objects a
    block saw, or the objects a grown window found whole.

    Attributes
    ----------
    first_pixels : ndarray of int64, shape (k,)
        Row-major position in the patch of each object's first pixel.
    boxes : ndarray of int64, shape (k, 4)
        Each object's bounding box, ``(top, left, bottom, right)`` half-open, in patch
        coordinates.
    bits : ndarray of uint8
        The objects' masks over their boxes, row-major, bit-packed one after the other.
    offsets : ndarray of int64, shape (k + 1,)
        Object ``i``'s packed mask is ``bits[offsets[i]:offsets[i + 1]]``.
    """

    first_pixels: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.int64]
    bits: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]

    @classmethod
    def of(cls, objects: Sequence[tuple[int, Box, np.ndarray]]) -> Objects:
        """Pack ``(first pixel, box, bool mask of shape box.shape)`` triples."""
        packed = [np.packbits(mask.ravel()) for _, _, mask in objects]
        return cls(
            first_pixels=np.array([first for first, _, _ in objects], np.int64),
            boxes=np.array([tuple(box) for _, box, _ in objects], np.int64).reshape(-1, 4),
            bits=np.concatenate(packed) if packed else np.zeros(0, np.uint8),
            offsets=np.cumsum([0] + [p.size for p in packed], dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.first_pixels.size)

    def box(self, i: int) -> Box:
        """Bounding box of object ``i``."""
        return Box(*(int(v) for v in self.boxes[i]))

    def mask(self, i: int) -> npt.NDArray[np.uint8]:
        """Object ``i`` over its box: ``(h, w)`` uint8, 1 inside."""
        height, width = self.box(i).shape
        bits = self.bits[self.offsets[i]:self.offsets[i + 1]]
        return np.unpackbits(bits, count=height * width).reshape(height, width)

    def items(self, keep: np.ndarray | None = None) -> list[tuple[int, Box, np.ndarray]]:
        """``(first pixel, box, mask)`` of every object (where ``keep`` is true)."""
        chosen = range(len(self)) if keep is None else np.flatnonzero(keep).tolist()
        return [(int(self.first_pixels[i]), self.box(i), self.mask(i).astype(bool))
                for i in chosen]

    def not_kept(self, grid: BlockGrid, c: int,
                 kept_label: Callable[[int, int, int, int], int]) -> Objects:
        """The objects whose first pixel no block's kept objects cover.

        ``kept_label(block, c, y, x)`` is the label that block ``block`` kept at pixel ``(y, x)``
        of the patch (inside its window), compartment ``c``. A covered pixel belongs to an object
        some block saw whole (the part seen here is a piece of it), so only the others can be
        objects that no block kept.
        """
        keep = np.ones(len(self), dtype=bool)
        for i, anchor in enumerate(self.first_pixels.tolist()):
            y, x = divmod(anchor, grid.shape[1])
            pixel = Box(y, x, y + 1, x + 1)
            keep[i] = not any(kept_label(block, c, y, x) for block in grid.blocks_touching(pixel))
        return Objects.of(self.items(keep))

    def pieces(self, ids: np.ndarray, region: Box) -> list[tuple[Box, np.ndarray, np.ndarray]]:
        """The objects with a non-zero id in ``ids`` (one per object) that overlap ``region``,
        as :func:`codexdask.seamless.stitch.compose` pieces ``(box, mask, [0, id])``."""
        return [(self.box(i), self.mask(i), np.array([0, ids[i]], np.uint32))
                for i in np.flatnonzero(np.asarray(ids) > 0).tolist()
                if self.box(i).overlaps(region)]

    def as_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The fields as ``{prefix_field: array}`` (for one ``.npz`` file)."""
        return {f"{prefix}_{field.name}": getattr(self, field.name)
                for field in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray] | np.lib.npyio.NpzFile,
                    prefix: str) -> Objects:
        """The objects :meth:`as_arrays` wrote."""
        return cls(**{field.name: arrays[f"{prefix}_{field.name}"]
                      for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class CutParts:
    """Parts of cut objects of several compartments, from any blocks of a patch.

    Attributes
    ----------
    compartments : ndarray of int64, shape (m,)
        Label channel of each part (0 whole-cell, 1 nucleus).
    parts : Objects
        The parts, as their blocks saw them.
    """

    compartments: npt.NDArray[np.int64]
    parts: Objects

    @classmethod
    def of(cls, parts: Sequence[tuple[int, Objects]]) -> CutParts:
        """Gather ``(compartment, parts)`` pairs, in order."""
        return cls(np.array([c for c, objects in parts for _ in range(len(objects))], np.int64),
                   Objects.of([item for _, objects in parts for item in objects.items()]))

    def __len__(self) -> int:
        return len(self.parts)

    def by_compartment(self, n_compartments: int) -> list[Objects]:
        """The parts of each compartment, for :func:`regrow_objects`."""
        return [Objects.of(self.parts.items(self.compartments == c))
                for c in range(n_compartments)]

    def clusters(self) -> list[CutParts]:
        """The parts in groups that share pixels (transitively), in order of each group's first
        part: the parts of one object that several blocks saw overlap where their windows do, so
        each group is one object (or a few touching ones) and is regrown once, its windows
        shared; parts of different objects share no pixel."""
        n = len(self)
        if n == 0:
            return []
        boxes = self.parts.boxes
        links = [(i, i) for i in range(n)]
        for i in range(n):  # boxes that overlap, then masks that share a pixel
            a = self.parts.box(i)
            later = np.flatnonzero(
                (boxes[i + 1:, 0] < a.bottom) & (a.top < boxes[i + 1:, 2])
                & (boxes[i + 1:, 1] < a.right) & (a.left < boxes[i + 1:, 3])
                & (self.compartments[i + 1:] == self.compartments[i])) + i + 1
            for j in later.tolist():
                b = self.parts.box(j)
                common = a.intersection(b)
                if np.any(self.parts.mask(i)[common.slices(a)]
                          & self.parts.mask(j)[common.slices(b)]):
                    links.append((i, j))
        rows, cols = np.array(links).T
        graph = sparse.coo_matrix((np.ones(rows.size, bool), (rows, cols)), shape=(n, n))
        _, group = connected_components(graph, directed=False)
        firsts = np.sort(np.unique(group, return_index=True)[1])  # groups by their first part
        return [CutParts(self.compartments[group == group[f]],
                         Objects.of(self.parts.items(group == group[f]))) for f in firsts]


@dataclasses.dataclass(frozen=True)
class RegrowReport:
    """What regrowing the cut objects of a block did.

    Attributes
    ----------
    windows : int
        Windows segmented.
    unresolved : tuple of int
        Per compartment (whole-cell, nucleus), objects no window within the bound held whole
        (larger than ``max_window`` allows); the parts of one object that a failing window shows
        count once. A part that is background in its grown window (an artefact of its block's
        window edge) is not counted.
    """

    windows: int = 0
    unresolved: tuple[int, ...] = (0, 0)


def regrow_objects(
    cut: Sequence[Objects],
    segment_window: Callable[[Box], np.ndarray],
    patch_shape: tuple[int, int],
    margin: int,
    max_window: int,
) -> tuple[list[Objects], RegrowReport]:
    """Segment the cut objects of a cluster of parts again, each in a window that holds it whole.

    Parameters
    ----------
    cut : sequence of Objects
        The parts seen, one entry per compartment (label channel of ``segment_window``'s output).
    segment_window : callable
        ``segment_window(window) -> (h, w, C)`` integer labels of that window of the patch.
    patch_shape : (int, int)
        Height and width of the logical patch.
    margin : int
        Context kept around an object: it is taken only when its box grown by ``margin`` (at
        least 1) lies inside the window, patch edges aside.
    max_window : int
        Largest window side in pixels; ``0`` regrows nothing.

    Returns
    -------
    regrown : list of Objects
        Per compartment, the distinct objects found (by first pixel).
    report : RegrowReport
    """
    width = int(patch_shape[1])
    margin = max(int(margin), 1)
    pending = [(c, int(anchor), Box(*(int(v) for v in box)))
               for c, objects in enumerate(cut)
               for anchor, box in zip(objects.first_pixels, objects.boxes, strict=True)]
    found: list[dict[int, tuple[Box, np.ndarray]]] = [{} for _ in cut]
    unresolved = [0] * len(cut)
    windows = 0
    while pending:
        c, anchor, box = pending.pop(0)
        window: Box | None = box.grow(margin, patch_shape)
        while window is not None and 0 < max(window.shape) <= max_window:
            labels = np.asarray(segment_window(window))
            windows += 1
            whole = _object_at(labels[..., c], window, anchor, width)
            if whole is None:  # background here: the part seen was an artefact of its window
                break
            first, seen, mask = whole
            if window.contains(seen.grow(margin, patch_shape)):
                found[c].setdefault(first, (seen, mask))
                rest = []
                for other in pending:  # every other cut object this window holds whole
                    held = _object_at(labels[..., other[0]], window, other[1], width)
                    if held is not None and window.contains(held[1].grow(margin, patch_shape)):
                        found[other[0]].setdefault(held[0], (held[1], held[2]))
                    else:
                        rest.append(other)
                pending = rest
                break
            grown = _grown(window, seen.grow(margin, patch_shape), patch_shape, max_window)
            if grown is None:  # too large: drop the parts of it that the others saw, too
                y, x = divmod(anchor, width)
                label = labels[y - window.top, x - window.left, c]
                rest = []
                for other in pending:
                    y, x = divmod(other[1], width)
                    if not (other[0] == c and window.contains(Box(y, x, y + 1, x + 1))
                            and labels[y - window.top, x - window.left, c] == label):
                        rest.append(other)
                pending = rest
            window = grown
        else:
            unresolved[c] += 1
    regrown = [Objects.of([(first, seen, mask) for first, (seen, mask) in sorted(objects.items())])
               for objects in found]
    return regrown, RegrowReport(windows, tuple(unresolved))


def _grown(window: Box, needed: Box, patch_shape: tuple[int, int], max_window: int
           ) -> Box | None:
    """The next window when ``window`` does not hold ``needed``: on each side that ``needed``
    passes, the window doubles (at least reaching ``needed``), at most ``max_window`` a side;
    ``None`` when it cannot grow or ``needed`` alone is larger than ``max_window``."""
    if max(needed.shape) > max_window:
        return None
    axes = []
    for lo, hi, need_lo, need_hi, size in ((window.top, window.bottom, needed.top, needed.bottom,
                                            patch_shape[0]),
                                           (window.left, window.right, needed.left, needed.right,
                                            patch_shape[1])):
        step = hi - lo
        add_lo = max(step, lo - need_lo) if need_lo < lo else 0
        add_hi = max(step, need_hi - hi) if need_hi > hi else 0
        add_lo, add_hi = min(add_lo, lo), min(add_hi, int(size) - hi)
        room = max_window - step
        if add_lo + add_hi > room:  # share the room left between the sides that need it
            add_lo = min(add_lo, max(room - add_hi, room // 2))
            add_hi = min(add_hi, room - add_lo)
        axes.append((lo - add_lo, hi + add_hi))
    grown = Box(axes[0][0], axes[1][0], axes[0][1], axes[1][1])
    return grown if grown != window else None


def _object_at(labels: np.ndarray, window: Box, anchor: int, width: int
               ) -> tuple[int, Box, np.ndarray] | None:
    """The object of ``labels`` (the labels of ``window``) at patch position ``anchor``:
    ``(first pixel, box, bool mask over the box)``, or ``None`` where the window does not hold
    that pixel or it is background."""
    y, x = divmod(anchor, width)
    if not window.contains(Box(y, x, y + 1, x + 1)):
        return None
    label = labels[y - window.top, x - window.left]
    if label == 0:
        return None
    inside = labels == label
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    seen = Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    mask = inside[seen.slices()]
    seen = seen.shift(window.top, window.left)
    first = seen.top * width + seen.left + int(np.argmax(mask[0]))
    return first, seen, mask


def new_objects(kept_first_pixels: Sequence[np.ndarray], regrown: Sequence[Objects]
                ) -> list[npt.NDArray[np.bool_]]:
    """Which regrown objects are new: not kept by a block, and the first of equal ones.

    Parameters
    ----------
    kept_first_pixels : sequence of ndarray of int64
        First pixels of the objects the blocks kept (one compartment, all blocks).
    regrown : sequence of Objects
        The same compartment's regrown objects, one entry per cluster, in cluster order.

    Returns
    -------
    list of ndarray of bool
        One per entry of ``regrown``.
    """
    seen = set(np.concatenate([np.zeros(0, np.int64), *kept_first_pixels]).tolist())
    new = []
    for objects in regrown:
        keep = np.zeros(len(objects), bool)
        for i, first in enumerate(objects.first_pixels.tolist()):
            if first not in seen:
                seen.add(first)
                keep[i] = True
        new.append(keep)
    return new


@dataclasses.dataclass(frozen=True)
class PatchObjects:
    """Every object a patch keeps, before numbering.

    Attributes
    ----------
    first_pixels : list of list of ndarray of int64
        ``first_pixels[c][block]``: first pixels of the objects block ``block`` kept,
        compartment ``c`` (label channel: 0 whole-cell, 1 nucleus).
    regrown : dict
        ``{cluster: [Objects per compartment]}``: the objects each cluster of cut parts
        (:meth:`CutParts.clusters`) regrew, in cluster order.
    new : dict
        ``{cluster: [keep per compartment]}``: which of those objects are new (bool, one per
        object; :func:`new_objects`).
    """

    first_pixels: list[list[np.ndarray]]
    regrown: dict[int, list[Objects]]
    new: dict[int, list[np.ndarray]]

    @classmethod
    def of(cls, first_pixels: list[list[np.ndarray]], regrown: dict[int, list[Objects]]
           ) -> PatchObjects:
        """The objects of a patch, deciding which regrown ones are new."""
        news = [new_objects(firsts, [found[c] for found in regrown.values()])
                for c, firsts in enumerate(first_pixels)]
        new = {cluster: [keep[i] for keep in news] for i, cluster in enumerate(regrown)}
        return cls(first_pixels, regrown, new)

    def numbered_first_pixels(self, c: int) -> list[np.ndarray]:
        """First pixels of compartment ``c`` in numbering order: every block's kept objects,
        then the new regrown objects, cluster by cluster, as one last entry."""
        extra = [self.regrown[k][c].first_pixels[self.new[k][c]] for k in self.regrown]
        return [*self.first_pixels[c], np.concatenate([np.zeros(0, np.int64), *extra])]

    def regrown_ids(self, c: int, table: np.ndarray) -> dict[int, np.ndarray]:
        """Per cluster, the id of each of its regrown objects (0: not new), from the numbering
        table of the last entry of :meth:`numbered_first_pixels`."""
        ids, start = {}, 1
        for cluster, new in self.new.items():
            keep = new[c]
            cluster_ids = np.zeros(keep.size, np.uint32)
            cluster_ids[keep] = table[start:start + int(keep.sum())]
            start += int(keep.sum())
            ids[cluster] = cluster_ids
        return ids
