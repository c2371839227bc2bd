"""A store of patches as one lazy Dask array graph, computed once.

::

    patch store (N, H, W, 2) ──keep informative──► batches sized by the planner
      ──► prepare          (CPU: reads its patches; Mesmer: resize, normalise, CLAHE, tiles)
      ──► network          (GPU workers: resources={"GPU": 1} when the cluster has them)
      ──► finish           (CPU; Mesmer: untile, deep watershed, resize back)
      ──► map_blocks: boundaries + repair + write masks and stats to masks.zarr

With network tasks pinned to GPUs, a batch's preparation waits for the batch
``plan.in_flight`` places earlier to be finished, so at most that many batches are under way at
once however long the store (without pinning, Dask's depth-first order bounds memory by itself;
a chain there raised the workers' peak memory). The preparation reads its own patches: a
separate read task would be a root that Dask starts whenever a thread is free, and its patches
would wait in memory for the preparation.

Only small per-patch statistics come back to the driver; masks go straight from the workers to
the Zarr result store, so memory is bounded by a batch, not by the slide. Every completed patch
is flagged in the store, which makes ``resume`` recompute only what is missing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask import delayed
from distributed import Client

from codexdask.config import TieBreakName
from codexdask.engine.plan import RunPlan
from codexdask.engine.tasks import finish_batch, network_batch, prepare_batch, repair_and_store
from codexdask.layout import RESULT_STAT_COLUMNS
from codexdask.segmenters import Segmenter
from codexdask.store.patch_store import PatchStore
from codexdask.store.selection import split_batches

__all__ = ["build_graph", "submit"]


def build_graph(
    patch_store: PatchStore, plan: RunPlan, segmenter: Segmenter, result_path: str
) -> tuple[da.Array, da.Array]:
    """The lazy segmentation graph for the patches ``plan.todo``.

    Each patch is segmented and repaired at its true size (``PatchStore.true_sizes``) and its
    masks are stored zero-padded to the store's patch shape.

    Returns
    -------
    stats : dask.array.Array
        ``(len(todo), len(RESULT_STAT_COLUMNS))`` float64 statistics; computing it writes the masks.
    stages : dask.array.Array
        ``(len(todo), 4)`` float64 seconds per patch in prepare, pinned, network and finish
        (:class:`~codexdask.engine.stages.StageSeconds`).
    """
    todo = np.asarray(plan.todo, dtype=np.int64)
    shape = patch_store.patch_shape
    true_sizes = patch_store.true_sizes(todo)
    batches = split_batches(np.arange(len(todo)), plan.batch.patches_per_task)
    counts = tuple(len(batch) for batch in batches)
    store_path = str(patch_store.path)

    labels, timings = [], []
    finished: list[Any] = []  # each batch's timings (a Delayed), for the next batches to wait on
    for k, rows in enumerate(batches):
        ahead = plan.in_flight
        after = finished[k - ahead] if ahead is not None and k >= ahead else None
        prepared = delayed(prepare_batch, pure=True)(
            segmenter, store_path, todo[rows], true_sizes[rows], plan.image_mpp, after)
        with dask.annotate(resources={"GPU": 1}) if plan.pin_gpu else contextlib.nullcontext():
            networked = delayed(network_batch, pure=True)(segmenter, prepared)
        out = delayed(finish_batch, pure=True, nout=2)(segmenter, networked, len(rows), shape)
        finished.append(out[1])
        labels.append(da.from_delayed(out[0], (len(rows), *shape, 2), np.uint32))
        timings.append(da.from_delayed(out[1], (len(rows), 4), np.float64)[:, None, None, :])
    # One row per patch: its index in the store and its true height and width.
    where = np.column_stack([todo, true_sizes]).reshape(-1, 1, 1, 3)
    stats = da.map_blocks(
        _repair_block,
        da.concatenate(labels),
        da.concatenate(timings),
        da.from_array(where, chunks=(counts, 1, 1, 3)),
        result_path=result_path,
        tie_break=plan.tie_break,
        chunks=(counts, 1, 1, len(RESULT_STAT_COLUMNS)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64),
    )
    return stats[:, 0, 0, :], da.concatenate(timings)[:, 0, 0, :]


def submit(client: Client, graph: tuple[da.Array, da.Array]) -> list[Any]:
    """Send the graph to the scheduler once and return the futures of its two outputs.

    Dask's array optimisation merges the graph's layers into one and drops layer annotations
    (dask 2026.1), which would let inference run on any worker; the tasks here are coarse (one
    per batch), so the graph is submitted unoptimised and keeps ``resources={"GPU": 1}``.
    """
    return list(client.compute(list(graph), optimize_graph=False))


def _repair_block(
    labels: np.ndarray,
    timings: np.ndarray,
    where: np.ndarray,
    *,
    result_path: str,
    tie_break: TieBreakName,
) -> np.ndarray:
    rows = repair_and_store(
        labels, timings[:, 0, 0, :], where[:, 0, 0, 0], where[:, 0, 0, 1:],
        result_path=result_path, tie_break=tie_break,
    )
    return rows[:, None, None, :]
