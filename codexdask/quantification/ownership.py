"""Which patch measures an object, where ``patches`` mode's patches overlap.

The slide is split into *cores*, one per patch: along each axis, the cut between two
neighbouring patch rows (or columns) lies in the middle of their overlap. An object is kept by
the patch whose core holds the centre of its box, and only if it does not touch an edge of the
patch that lies inside the slide (there it is cut, and the neighbour sees it whole). The slide's
own edges cut nothing: an object there is kept (``docs/quantification.md``).
"""

from __future__ import annotations

import numpy as np

from codexdask.boxes import Box
from codexdask.store.patch_store import PatchStore

__all__ = ["axis_cuts", "patch_cores", "patches_mode_keep"]


def axis_cuts(starts: np.ndarray, sizes: np.ndarray, length: int) -> dict[int, tuple[int, int]]:
    """The core ``[low, high)`` of each distinct start along one axis.

    Parameters
    ----------
    starts, sizes : numpy.ndarray
        ``(N,)`` start and true size of every patch along the axis.
    length : int
        The slide's size along the axis.

    Examples
    --------
    >>> axis_cuts(np.array([0, 90, 180]), np.array([100, 100, 100]), 280)
    {0: (0, 95), 90: (95, 185), 180: (185, 280)}
    """
    distinct = sorted({int(s) for s in starts})
    size_at = {int(s): int(z) for s, z in zip(starts, sizes, strict=True)}
    cuts = [0] + [(b + a + size_at[a]) // 2 for a, b in zip(distinct, distinct[1:], strict=False)]
    cuts.append(int(length))
    return {s: (cuts[i], cuts[i + 1]) for i, s in enumerate(distinct)}


def patch_cores(patch_store: PatchStore) -> dict[int, Box]:
    """The core of every patch, slide coordinates."""
    meta = patch_store.metadata
    height, width = (int(v) for v in patch_store.attrs["slide_shape"])
    rows = axis_cuts(meta["y_start"].to_numpy(), meta["height"].to_numpy(), height)
    cols = axis_cuts(meta["x_start"].to_numpy(), meta["width"].to_numpy(), width)
    return {i: Box.from_ranges(rows[int(y)], cols[int(x)])
            for i, (y, x) in enumerate(zip(meta["y_start"], meta["x_start"], strict=True))}


def patches_mode_keep(
    patch_store: PatchStore, patch: int, core: Box, boxes: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Which objects of ``patch`` it measures.

    Parameters
    ----------
    patch_store : PatchStore
    patch : int
    core : Box
        The patch's core (slide coordinates).
    boxes : numpy.ndarray
        ``(K, 4)`` int64 boxes of the patch's objects (patch coordinates, exclusive ends).

    Returns
    -------
    keep : numpy.ndarray
        ``(K,)`` bool.
    outside_core : int
        Objects whose box centre lies in another patch's core.
    touching_edge : int
        Objects whose centre is in the core but that touch an inner edge of the patch.
    """
    box = patch_store.patch_box(patch)
    height, width = (int(v) for v in patch_store.attrs["slide_shape"])
    # Twice the centre, in slide coordinates: integers, compared exactly.
    centre_y = 2 * box.top + boxes[:, 0] + boxes[:, 2] - 1
    centre_x = 2 * box.left + boxes[:, 1] + boxes[:, 3] - 1
    inside = ((centre_y >= 2 * core.top) & (centre_y < 2 * core.bottom)
              & (centre_x >= 2 * core.left) & (centre_x < 2 * core.right))
    h, w = box.shape
    touching = (((boxes[:, 0] == 0) & (box.top > 0))
                | ((boxes[:, 1] == 0) & (box.left > 0))
                | ((boxes[:, 2] == h) & (box.bottom < height))
                | ((boxes[:, 3] == w) & (box.right < width)))
    keep = inside & ~touching
    return keep, int((~inside).sum()), int((inside & touching).sum())
