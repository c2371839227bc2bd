"""The functions that run inside Dask tasks: numpy in, numpy out, one batch of patches at a time.

The engine (:mod:`codexdask.engine.patch_graph`) wires them into a graph; they know nothing about
Dask. Each is also what a plain serial loop would call, which is how the tests compare the two.

Patches are stored zero-padded to the store's ``(H, W)``; a half or a quarter of an odd-sized slide
is one pixel smaller. Segmentation and repair see each patch at its true ``(h, w)`` — padding is
not tissue: it would shift Mesmer's normalisation and give cells at the true edge a boundary — and
the masks are zero-padded back to ``(H, W)`` for the result store.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from codexdask.config import TieBreakName
from codexdask.engine.stages import StageSeconds
from codexdask.errors import SegmenterError
from codexdask.layout import (
    CELL,
    CELL_BOUNDARY,
    MATCHED_KEYS,
    NUCLEUS,
    NUCLEUS_BOUNDARY,
    PATCHES_ARRAY,
    REPAIR_STAT_COLUMNS,
    RESULT_STAT_COLUMNS,
)
from codexdask.outputs import open_result_store, write_patch_result
from codexdask.repair.boundaries import get_boundary
from codexdask.repair.masks import repair_masks
from codexdask.segmenters import Segmenter

#: What the stage tasks of a batch hand each other: for each group of patches of one true size,
#: their rows in the batch, that size ``(h, w)`` and the segmenter's output for them.
Groups = list[tuple[np.ndarray, tuple[int, int], Any]]


def size_groups(sizes: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Rows of a batch grouped by true patch size, in order of first appearance.

    Parameters
    ----------
    sizes : numpy.ndarray
        ``(B, 2)`` int true ``(h, w)`` of each patch.

    Returns
    -------
    list of (numpy.ndarray, (int, int))
        ``(rows, (h, w))``: ascending int64 rows sharing that size.

    Examples
    --------
    >>> [(r.tolist(), s) for r, s in size_groups(np.array([[5, 6], [5, 7], [5, 6]]))]
    [([0, 2], (5, 6)), ([1], (5, 7))]
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    unique, first, inverse = np.unique(sizes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    return [(np.flatnonzero(inverse == k), (int(unique[k][0]), int(unique[k][1])))
            for k in np.argsort(first)]


def pad_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` zero-padded at the end of its leading axes to ``shape`` (itself if it fits)."""
    if image.shape[: len(shape)] == tuple(shape):
        return image
    out = np.zeros(tuple(shape) + image.shape[len(shape):], dtype=image.dtype)
    out[tuple(slice(0, n) for n in image.shape[: len(shape)])] = image
    return out


def read_batch(store_path: str, indices: np.ndarray) -> np.ndarray:
    """The patches ``indices`` of the patch store at ``store_path``, ``(B, H, W, 2)``."""
    patches = zarr.open_group(store_path, mode="r")[PATCHES_ARRAY]
    return np.asarray(patches.oindex[np.asarray(indices, dtype=np.int64)])


def prepare_batch(
    segmenter: Segmenter, store_path: str, indices: np.ndarray, sizes: np.ndarray,
    image_mpp: float, after: Any = None,
) -> tuple[Groups, StageSeconds]:
    """Read the patches ``indices`` and run the CPU stage before the network on them, each
    patch at its true size (patches of one size go through one ``prepare`` call: all of them
    in ``patches`` mode).

    Parameters
    ----------
    store_path : str
        The patch store.
    indices : numpy.ndarray
        ``(B,)`` int64 store rows.
    sizes : numpy.ndarray
        ``(B, 2)`` true ``(h, w)`` of each patch.
    after : any
        The output of an earlier batch's last task, which this task waits for (unused
        otherwise): it bounds how far reading and preparation run ahead of the GPU. The task
        reads its own patches so that nothing is loaded before it may start.
    """
    start = time.perf_counter()
    batch = read_batch(store_path, indices)
    groups = [(rows, (h, w), segmenter.prepare(batch[rows, :h, :w], image_mpp))
              for rows, (h, w) in size_groups(sizes)]
    return groups, StageSeconds(prepare=time.perf_counter() - start)


def network_batch(
    segmenter: Segmenter, prepared: tuple[Groups, StageSeconds]
) -> tuple[Groups, StageSeconds]:
    """The GPU-pinned stage: ``segmenter.network`` on each group :func:`prepare_batch` made."""
    groups, stages = prepared
    start = time.perf_counter()
    outputs, network_s = [], 0.0
    for rows, size, item in groups:
        out, seconds = segmenter.network(item)
        outputs.append((rows, size, out))
        network_s += seconds
    pinned = StageSeconds(pinned=time.perf_counter() - start, network=network_s)
    return outputs, stages + pinned


def finish_batch(
    segmenter: Segmenter,
    networked: tuple[Groups, StageSeconds],
    n_patches: int,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """The CPU stage after the network; each patch's labels zero-padded to ``shape``.

    Returns
    -------
    labels : numpy.ndarray
        ``(B, H, W, 2)`` uint32, channel 0 whole-cell, channel 1 nucleus; zero beyond each
        patch's true size.
    timings : numpy.ndarray
        ``(B, 4)`` float64 seconds per patch in each stage (:meth:`StageSeconds.as_tuple`
        order: prepare, pinned, network, finish), the batch's time shared evenly among its
        patches.
    """
    groups, stages = networked
    start = time.perf_counter()
    labels = np.zeros((n_patches, *shape, 2), dtype=np.uint32)
    for rows, (h, w), out in groups:
        group = np.asarray(segmenter.finish(out))
        if group.shape != (len(rows), h, w, 2):
            raise SegmenterError(
                f"segmenter {segmenter.name!r} returned labels of shape {group.shape} for "
                f"{len(rows)} patches of {h}x{w}; expected (B, H, W, 2) with channel 0 "
                "whole-cell and channel 1 nucleus"
            )
        labels[rows, :h, :w] = group
    stages += StageSeconds(finish=time.perf_counter() - start)
    return labels, np.tile(stages.share(n_patches).as_tuple(), (n_patches, 1))


def separate_batch(labels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split ``(B, H, W, 2)`` labels into per-patch cell masks (channel 0) and nucleus masks (1).

    The masks are views of ``labels`` (after ``numpy.asarray``), ``(H, W)`` each.
    """
    labels = np.asarray(labels)
    return [image[..., 0] for image in labels], [image[..., 1] for image in labels]


def segmentation_results(labels: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The seed's segmentation output: one dict per patch.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(B, H, W, 2)`` integer labels, channel 0 whole-cell, channel 1 nucleus.

    Returns
    -------
    list of dict
        ``{"cell", "nucleus", "cell_boundary", "nucleus_boundary"}``, each ``(H, W)`` uint32.
    """
    cells, nuclei = separate_batch(np.asarray(labels, dtype=np.uint32))
    return [
        {
            "cell": cell,
            "nucleus": nucleus,
            CELL_BOUNDARY: get_boundary(cell),
            NUCLEUS_BOUNDARY: get_boundary(nucleus),
        }
        for cell, nucleus in zip(cells, nuclei)
    ]


def repair_patch(
    labels: np.ndarray, tie_break: TieBreakName
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Boundaries and repair of one patch.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W, 2)`` uint32, channel 0 whole-cell, channel 1 nucleus.
    tie_break : str
        Repair tie-break rule.

    Returns
    -------
    masks : dict
        The nine ``(H, W)`` uint32 masks named in ``layout.MASK_NAMES``.
    repair_stats : numpy.ndarray
        ``(len(REPAIR_STAT_COLUMNS),)`` float64 metrics in ``REPAIR_STAT_COLUMNS`` order.
    seconds : float
        Time spent on boundaries and repair.
    """
    start = time.perf_counter()
    (original,) = segmentation_results(labels[np.newaxis])
    repaired = repair_masks(original[CELL], original[NUCLEUS], tie_break=tie_break)
    masks = {**original, **{name: repaired[name] for name in MATCHED_KEYS}}
    stats = np.array([repaired[name] for name in REPAIR_STAT_COLUMNS], dtype=np.float64)
    return masks, stats, time.perf_counter() - start


def repair_and_store(
    labels: np.ndarray,
    timings: np.ndarray,
    indices: np.ndarray,
    sizes: np.ndarray,
    *,
    result_path: str,
    tie_break: TieBreakName,
) -> np.ndarray:
    """Repair every patch of a block at its true size and write its masks and stats to the store.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(B, H, W, 2)`` uint32 labels, zero beyond each patch's true size.
    timings : numpy.ndarray
        ``(B, 4)`` float64 seconds per patch in each stage (:func:`finish_batch`).
    indices : numpy.ndarray
        ``(B,)`` int64 patch positions in the store.
    sizes : numpy.ndarray
        ``(B, 2)`` true ``(h, w)`` of each patch.
    result_path : str
        Path of the result store (``masks.zarr``).
    tie_break : str
        Repair tie-break rule.

    Returns
    -------
    numpy.ndarray
        ``(B, len(RESULT_STAT_COLUMNS))`` float64, the rows written to the store's ``stats`` array.
    """
    group = open_result_store(result_path)
    rows = np.empty((len(indices), len(RESULT_STAT_COLUMNS)), dtype=np.float64)
    shape = labels.shape[1:3]
    for k, index in enumerate(indices):
        h, w = (int(v) for v in sizes[k])
        masks, repair_stats, repair_seconds = repair_patch(labels[k, :h, :w], tie_break)
        stages = StageSeconds(*timings[k])
        rows[k] = np.concatenate([repair_stats, [stages.infer, stages.finish, repair_seconds]])
        padded = {name: pad_to(mask, shape) for name, mask in masks.items()}
        write_patch_result(group, int(index), padded, rows[k])
    return rows
