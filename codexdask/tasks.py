"""The functions that run inside Dask tasks: numpy in, numpy out, one batch of patches at a time.

The engine (``engine.py``) wires them into a graph; they know nothing about Dask. Each is also
what a plain serial loop would call, which is how the tests compare the two.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .boundaries import get_boundary
from .errors import SegmenterError
from .layout import MATCHED_KEYS, REPAIR_STAT_COLUMNS, RESULT_STAT_COLUMNS
from .outputs import open_result_store, write_patch_result
from .repair import TieBreakName, repair_masks
from .segmenters import Segmenter


def infer_batch(segmenter: Segmenter, batch: np.ndarray, image_mpp: float) -> tuple[Any, float]:
    """Run the accelerator stage on ``batch`` ``(B, H, W, 2)``; returns ``(maps, seconds)``."""
    start = time.perf_counter()
    maps = segmenter.infer(batch, image_mpp)
    return maps, time.perf_counter() - start


def postprocess_batch(
    segmenter: Segmenter, inferred: tuple[Any, float], n_patches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run the CPU stage on ``infer_batch``'s output.

    Returns
    -------
    labels : numpy.ndarray
        ``(B, H, W, 2)`` uint32, channel 0 whole-cell, channel 1 nucleus.
    timings : numpy.ndarray
        ``(B, 2)`` float64 seconds per patch (inference, post-processing), the batch's time shared
        evenly among its patches.
    """
    maps, infer_seconds = inferred
    start = time.perf_counter()
    labels = np.asarray(segmenter.postprocess(maps))
    post_seconds = time.perf_counter() - start
    if labels.ndim != 4 or labels.shape[0] != n_patches or labels.shape[-1] != 2:
        raise SegmenterError(
            f"segmenter {segmenter.name!r} returned labels of shape {labels.shape} for {n_patches} "
            "patches; expected (B, H, W, 2) with channel 0 whole-cell and channel 1 nucleus"
        )
    timings = np.tile([infer_seconds / n_patches, post_seconds / n_patches], (n_patches, 1))
    return labels.astype(np.uint32, copy=False), timings


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
            "cell_boundary": get_boundary(cell),
            "nucleus_boundary": get_boundary(nucleus),
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
    repaired = repair_masks(original["cell"], original["nucleus"], tie_break=tie_break)
    masks = {**original, **{name: repaired[name] for name in MATCHED_KEYS}}
    stats = np.array([repaired[name] for name in REPAIR_STAT_COLUMNS], dtype=np.float64)
    return masks, stats, time.perf_counter() - start


def repair_and_store(
    labels: np.ndarray,
    timings: np.ndarray,
    indices: np.ndarray,
    *,
    result_path: str,
    tie_break: TieBreakName,
) -> np.ndarray:
    """Repair every patch of a block and write its masks and stats to the result store.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(B, H, W, 2)`` uint32 labels.
    timings : numpy.ndarray
        ``(B, 2)`` float64 inference and post-processing seconds per patch.
    indices : numpy.ndarray
        ``(B,)`` int64 patch positions in the store.
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
    for k, index in enumerate(indices):
        masks, repair_stats, repair_seconds = repair_patch(labels[k], tie_break)
        rows[k] = np.concatenate([repair_stats, timings[k], [repair_seconds]])
        write_patch_result(group, int(index), masks, rows[k])
    return rows
