"""One frozen plan per run: every decision resolved once, typed, before the first task.

:func:`build_plan` turns a configuration (with its ``"auto"`` and ``"none"`` strings), a patch
store, a segmenter and a cluster into a :class:`RunPlan`: the patches to compute, the compute
blocks of logical patches, the result store's chunk, the batch sizes, the GPU feed and the
weights with their checksum. Tasks receive the plan (or the values it holds), never the
configuration, and ``run_manifest.json`` records it (:meth:`RunPlan.as_dict`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from codexdask.config import SegmentConfig, TieBreakName
from codexdask.engine import cluster
from codexdask.errors import ClusterError
from codexdask.layout import DONE_ARRAY, RESULT_STORE
from codexdask.outputs.result_store import open_result_store
from codexdask.seamless.blocks import Blocks, LogicalPatch, largest_window, logical_patches
from codexdask.segmenters import Segmenter
from codexdask.segmenters.base import Weights
from codexdask.segmenters.planner import BatchPlan, GpuFeed, plan_batches
from codexdask.store.patch_store import PatchStore

__all__ = ["TASKS_PER_THREAD", "RunPlan", "build_plan", "grown_window_notes", "resolve_blocks",
           "tasks_in_flight"]

logger = logging.getLogger(__name__)

#: Tasks per worker thread an automatic batch size leaves at least, for load balance.
TASKS_PER_THREAD = 8


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run computes and how, decided once before its first task.

    Attributes
    ----------
    split_mode : str
        The patch store's split mode.
    image_mpp : float
        Microns per pixel the segmenter is told.
    tie_break : {"lowest-label", "aegle-cpu"}
        The repair's tie-break.
    informative : tuple of int
        Store rows of the informative patches.
    todo : tuple of int
        Those this run computes (fewer after ``--resume``).
    batch : BatchPlan
        Patches (or windows of logical patches) per task and network tiles per call.
    blocks : Blocks or None
        Compute blocks of logical patches; ``None`` in ``patches`` mode.
    patches : tuple of LogicalPatch
        Every logical patch of the store with its blocks (empty in ``patches`` mode).
    chunk : (int, int)
        The result store's chunk of one patch: the store's patch shape, or the block.
    pin_gpu : bool
        Inference tasks carry ``resources={"GPU": 1}``.
    gpu_feed : GpuFeed or None
        Threads of a GPU worker and how busy they keep its GPU.
    in_flight : int or None
        With network tasks pinned to GPUs: the batches of patches (or groups of blocks) that
        may be between the start of their preparation and the end of their finish at once, one
        per worker thread plus two per GPU worker (one in its network, one prepared and
        waiting), so the GPU never waits for preparation while host memory holds at most
        ``in_flight`` batches (:func:`tasks_in_flight`). ``None`` when nothing is pinned: every
        thread then takes the next task in Dask's depth-first order, which bounds memory by
        itself.
    weights : Weights or None
        The weights of a model-based segmenter: path, SHA-256, runtime, precision.
    notes : tuple of str
        Warnings of the planning, for the log and the manifest.
    """

    split_mode: str
    image_mpp: float
    tie_break: TieBreakName
    informative: tuple[int, ...]
    todo: tuple[int, ...]
    batch: BatchPlan
    blocks: Blocks | None
    patches: tuple[LogicalPatch, ...]
    chunk: tuple[int, int]
    pin_gpu: bool
    gpu_feed: GpuFeed | None
    in_flight: int | None
    weights: Weights | None
    notes: tuple[str, ...] = ()

    @property
    def chosen(self) -> tuple[LogicalPatch, ...]:
        """The logical patches this run computes, in store order."""
        return tuple(self.patches[i] for i in self.todo) if self.patches else ()

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``run_manifest.json`` records it (JSON-ready)."""
        return {
            "split_mode": self.split_mode,
            "image_mpp": self.image_mpp,
            "tie_break": self.tie_break,
            "batch": self.batch.as_dict(),
            "blocks": None if self.blocks is None else self.blocks.as_dict(),
            "chunk": list(self.chunk),
            "pin_gpu": self.pin_gpu,
            "gpu_feed": None if self.gpu_feed is None else self.gpu_feed.as_dict(),
            "in_flight": self.in_flight,
            "weights": None if self.weights is None else dataclasses.asdict(self.weights),
        }


def resolve_blocks(config: SegmentConfig, segmenter: Segmenter, image_mpp: float,
                   patch_store: PatchStore) -> Blocks | None:
    """The run's compute blocks, or ``None`` for a store of patches (segmented whole).

    ``block_size: none`` makes every logical patch one block without halo (the one-piece
    baseline); ``auto`` values come from the segmenter, and an ``auto`` ``max_window`` is twice
    a block's window.
    """
    if patch_store.layout != "image":
        return None
    if config.block_size == "none":
        return Blocks(max(patch_store.patch_shape), 0)
    size = (segmenter.block_size(image_mpp) if config.block_size == "auto"
            else int(config.block_size))
    halo = segmenter.halo(image_mpp) if config.halo == "auto" else int(config.halo)
    max_window = (2 * (int(size) + 2 * int(halo)) if config.max_window == "auto"
                  else int(config.max_window))
    return Blocks(int(size), int(halo), max_window)


def build_plan(
    client: Client,
    config: SegmentConfig,
    patch_store: PatchStore,
    segmenter: Segmenter,
    out_dir: Path,
) -> RunPlan:
    """Decide everything about a run, once (reads the result store's flags on ``resume``).

    Raises
    ------
    ClusterError
        If ``config.gpus`` asked for GPUs and a GPU worker's memory cannot be measured.
    ModelLoadError
        If the segmenter's weights are missing.
    """
    image_mpp = float(config.image_mpp or patch_store.image_mpp)
    blocks = resolve_blocks(config, segmenter, image_mpp, patch_store)
    informative = patch_store.informative_indices
    todo = informative[~_done_flags(out_dir, patch_store.n_patches, config.resume)[informative]]
    patches = (logical_patches([patch_store.patch_box(i) for i in range(patch_store.n_patches)],
                               blocks) if blocks is not None else ())
    if blocks is None:
        shape, units, chunk = patch_store.patch_shape, len(todo), patch_store.patch_shape
    else:
        chosen = [patches[int(i)] for i in todo]
        shape, units = largest_window(chosen), sum(p.grid.n_blocks for p in chosen)
        chunk = blocks.chunk(patch_store.patch_shape)
    batch, notes = plan_batches_on(client, segmenter, shape, image_mpp, config, units,
                                   windows=blocks is not None)
    if blocks is not None and blocks.max_window:
        notes += grown_window_notes(segmenter, blocks.max_window, image_mpp,
                                    min(cluster.worker_memory_budgets(client)))
    n_gpus = len(cluster.gpu_workers(client))
    pin_gpu = segmenter.wants_gpu and n_gpus > 0
    feed = (cluster.gpu_feed(cluster.gpu_worker_threads(client), segmenter)
            if pin_gpu else None)
    if feed is not None:
        logger.info("GPU workers: %d threads each keep a GPU busy about %.0f%% of the time "
                    "(%d would keep it busy)", feed.threads, 100 * feed.gpu_busy_fraction,
                    feed.wanted)
    return RunPlan(
        split_mode=patch_store.split_mode, image_mpp=image_mpp, tie_break=config.tie_break,
        informative=tuple(int(i) for i in informative), todo=tuple(int(i) for i in todo),
        batch=batch, blocks=blocks, patches=patches, chunk=(int(chunk[0]), int(chunk[1])),
        pin_gpu=pin_gpu, gpu_feed=feed,
        in_flight=tasks_in_flight(cluster.total_threads(client), n_gpus) if pin_gpu else None,
        weights=segmenter.weights(), notes=tuple(notes),
    )


def grown_window_notes(segmenter: Segmenter, max_window: int, image_mpp: float,
                       host_budget: int) -> list[str]:
    """A warning when the largest grown window would need more host memory than a worker has
    (objects that need it would then fail the run rather than be dropped)."""
    need = segmenter.memory_per_patch((max_window, max_window), image_mpp).host_bytes
    if need <= host_budget:
        return []
    return [f"warning: a grown window of max_window={max_window} px needs about "
            f"{need / 2**30:.1f} GiB of host memory, more than a worker's "
            f"{host_budget / 2**30:.1f} GiB budget; give workers more memory or lower "
            "--max-window"]


def tasks_in_flight(threads: int, gpus: int) -> int:
    """Segmentation tasks a run lets be under way at once (:attr:`RunPlan.in_flight`).

    Each of the cluster's ``threads`` prepares or finishes one; each GPU has one in its network
    and one prepared, waiting for it. More would only hold memory: a batch waits for the one
    ``in_flight`` places before it to be finished before it starts preparing. Without the
    bound, threads left free while the GPUs work would prepare every batch of the slide ahead.

    Examples
    --------
    >>> tasks_in_flight(threads=16, gpus=1), tasks_in_flight(threads=24, gpus=8)
    (18, 40)
    """
    return max(1, threads) + 2 * gpus


def _done_flags(out_dir: Path, n_patches: int, resume: bool) -> np.ndarray:
    """Which patches an earlier run stored (all false unless resuming an existing store)."""
    path = out_dir / RESULT_STORE
    if resume and path.exists():
        done = np.asarray(open_result_store(path)[DONE_ARRAY][:], dtype=bool)
        if len(done) == n_patches:  # else another store's run: prepare_result_store refuses it
            return done
    return np.zeros(n_patches, dtype=bool)


def plan_batches_on(
    client: Client,
    segmenter: Segmenter,
    patch_shape: tuple[int, int],
    image_mpp: float,
    config: SegmentConfig,
    n_units: int,
    *,
    windows: bool = False,
) -> tuple[BatchPlan, list[str]]:
    """Choose batch sizes from the workers' free memory and the GPU's.

    The host figure is the smallest worker memory budget (limit minus what the worker holds,
    :func:`codexdask.engine.cluster.worker_memory_budgets`); the GPU figure is measured on a GPU
    worker when the segmenter wants one. An automatic batch size is also capped so that
    ``n_units`` (patches, or blocks of logical patches) give at least :data:`TASKS_PER_THREAD`
    tasks per worker thread: large batches help a GPU but must not leave workers idle at the end
    of a run. ``windows``: ``patch_shape`` is a compute window of a logical patch (see
    :func:`~codexdask.segmenters.planner.plan_batches`).

    Returns
    -------
    plan : BatchPlan
    notes : list of str
        Warnings for the manifest (a GPU whose memory could not be measured).
    """
    device_free, notes = measure_gpu(client, segmenter, config)
    plan = plan_batches(
        segmenter,
        patch_shape,
        image_mpp,
        device_free_bytes=device_free,
        host_free_bytes=min(cluster.worker_memory_budgets(client)),
        batch_size=config.batch_size,
        tiles_per_call=config.tiles_per_call,
        windows=windows,
    )
    threads = cluster.total_threads(client)
    balanced = max(1, math.ceil(n_units / (TASKS_PER_THREAD * threads)))
    if config.batch_size == "auto" and balanced < plan.patches_per_task:
        plan = dataclasses.replace(
            plan,
            patches_per_task=balanced,
            reason=f"{plan.reason}; capped at {balanced} so that {n_units} patches give at "
            f"least {TASKS_PER_THREAD} tasks per worker thread ({threads} threads)",
        )
    return plan, notes


def measure_gpu(
    client: Client, segmenter: Segmenter, config: SegmentConfig
) -> tuple[int | None, list[str]]:
    """Free memory of a GPU worker's GPU, when the segmenter wants one and the cluster has one.

    Returns
    -------
    free_bytes : int or None
        ``None`` plans inference for CPU memory.
    notes : list of str
        A warning (also logged) when a GPU worker's memory could not be measured: NVML failed,
        or is missing on that worker.

    Raises
    ------
    ClusterError
        In that case, if ``config.gpus`` asked for GPUs.
    """
    found = cluster.probe_gpu_worker(client) if segmenter.wants_gpu else None
    if found is None:
        return None, []
    address, probe = found
    if probe.gpus:
        return int(probe.gpus[0]["free_bytes"]), []
    message = (f"GPU worker {address}: the GPU's free memory could not be measured "
               f"({probe.problem}); batches are planned for CPU memory")
    if config.gpus:
        raise ClusterError(f"{message}. Check the GPUs with `nvidia-smi`, or drop --gpus")
    logger.warning(message)
    return None, [message]

