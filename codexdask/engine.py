"""The segmentation engine: one Dask graph from a patch store to a result store.

::

    patch store (N, H, W, 2) ──keep informative──► batches sized by the planner
      ──► infer            (GPU workers: resources={"GPU": 1} when the cluster has them)
      ──► postprocess      (CPU)
      ──► map_blocks: boundaries + repair + write masks and stats to masks.zarr
    then, in the driver, one patch at a time: patches_metadata.csv, pickles, mosaics, overlays,
    run_manifest.json (last: its presence marks a complete run).

The graph is built lazily and computed once. Only small per-patch statistics come back to the
driver; masks go straight from the workers to the Zarr result store, so memory is bounded by a
batch, not by the slide. Every completed patch is flagged in the store, which makes ``resume``
recompute only what is missing. The decisions behind this design are in ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask import delayed
from distributed import Client

from . import cluster
from .config import SegmentConfig, make_config
from .errors import ClusterError, InputError, StoreError
from .geometry import Box
from .layout import (
    METADATA_FILE,
    OVERLAYS_DIR,
    RESULT_STAT_COLUMNS,
    RESULT_STORE,
    overlay_name,
)
from .outputs import (
    check_output_dir,
    prepare_result_store,
    read_stats_table,
    run_manifest,
    write_manifest,
    write_metadata_csv,
    write_mosaics,
    write_seg_res_pickles,
)
from .patches import PatchStore, open_patch_store
from .progress import show_progress
from .repair import TieBreakName
from .seamless.pipeline import (
    logical_patches,
    resolve_tiles,
    run_logical_patches,
    seamless_notes,
    tile_plan_shape,
)
from .seamless.serial import repair_tiled
from .segmenters import Segmenter, get_segmenter
from .segmenters.planner import BatchPlan, plan_batches
from .selection import split_batches
from .tasks import infer_batch, pad_to, postprocess_batch, repair_and_store, repair_patch
from .viz import write_overlay_png

logger = logging.getLogger(__name__)

#: Tasks per worker thread an automatic batch size leaves at least, for load balance.
TASKS_PER_THREAD = 8


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did.

    Attributes
    ----------
    out_dir : Path
        The output directory.
    metadata : pandas.DataFrame
        ``patches_metadata.csv`` as written: one row per patch with the repair statistics.
    plan : BatchPlan
        The batch sizes the planner chose.
    n_computed : int
        Patches segmented by this call (fewer than the informative ones after ``resume``).
    manifest : dict
        The content of ``run_manifest.json``.
    """

    out_dir: Path
    metadata: pd.DataFrame
    plan: BatchPlan
    n_computed: int
    manifest: dict[str, Any]

    def summary(self) -> str:
        """A few lines describing the finished run (what ``codexdask segment`` prints)."""
        meta = self.metadata
        informative = meta[meta["is_informative"].astype(bool)]
        lines = [
            f"output: {self.out_dir}",
            f"patches: {len(meta)} ({len(informative)} informative, {self.n_computed} computed "
            "now)",
            f"batch plan: {self.plan.patches_per_task} patches per task ({self.plan.reason})",
        ]
        if len(informative):
            lines += [
                f"cells: {int(informative['n_cells'].sum())}, nuclei: "
                f"{int(informative['n_nuclei'].sum())}, matched pairs: "
                f"{int(informative['n_matched'].sum())}",
                f"mean matched_fraction: {informative['matched_fraction'].mean():.3f}",
            ]
        lines.append(f"wall time: {self.manifest['timings']['total_s']:.1f} s")
        return "\n".join(lines)


def run(
    store: str | Path,
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    *,
    client: Client | None = None,
    segmenter: Segmenter | None = None,
    progress: bool = False,
    **options: Any,
) -> RunResult:
    """Segment and repair every informative patch of a patch store.

    Parameters
    ----------
    store : str or Path
        Patch store written by ``codexdask patch`` (``NAME.zarr``).
    out_dir : str or Path
        Output directory (created if missing).
    config : SegmentConfig, optional
        Run settings; keyword ``options`` override single keys (e.g. ``backend="mesmer"``).
    client : distributed.Client, optional
        Use this cluster (e.g. a notebook's) instead of the one ``config`` describes.
    segmenter : Segmenter, optional
        A ready segmenter instance, overriding ``config.backend``.
    progress : bool
        Show a progress bar and print the dashboard link.

    Returns
    -------
    RunResult
    """
    base = dataclasses.asdict(config) if config is not None else {}
    config = make_config(SegmentConfig, base, options)
    started = time.perf_counter()
    # Absolute paths: workers elsewhere must find the same store and result store.
    patch_store = open_patch_store(Path(store).resolve())
    image_mpp = float(config.image_mpp or patch_store.image_mpp)
    segmenter = segmenter or get_segmenter(config.backend, **config.segmenter_options())
    segmenter.check()
    out_dir = Path(out_dir).resolve()
    check_output_dir(out_dir, resume=config.resume, overwrite=config.overwrite)

    informative = patch_store.informative_indices
    notes: list[str] = []  # warnings, logged and recorded in the manifest
    if len(informative) == 0:
        notes.append(
            f"no informative patch in {patch_store.path}: nothing to segment; outputs are empty. "
            "Check the QC thresholds (non_zero_perc_threshold, mean_intensity_threshold)."
        )
        warnings.warn(notes[-1], stacklevel=2)

    timings: dict[str, float] = {}
    with cluster.connect(config, client, segmenter) as dask_client:
        # Inputs are checked before anything is written: a failed check leaves no result store
        # behind, so a retry with the input fixed is not refused as "already holds a run".
        check_finite(dask_client, patch_store, informative)
        tiles = (resolve_tiles(config, segmenter, image_mpp, patch_store)
                 if patch_store.layout == "image" else None)
        group = prepare_result_store(
            out_dir, patch_store, resume=config.resume, overwrite=config.overwrite, tiles=tiles
        )
        result_path = str(out_dir / RESULT_STORE)
        done = np.asarray(group["done"][:], dtype=bool)
        todo = informative[~done[informative]]
        if progress:
            print(f"Dask dashboard: {dask_client.dashboard_link}", file=sys.stderr)
        pin_gpu = segmenter.wants_gpu and bool(cluster.gpu_workers(dask_client))
        feed = (cluster.gpu_feed(cluster.gpu_worker_threads(dask_client), segmenter)
                if pin_gpu else None)
        if feed is not None:
            logger.info("GPU workers: %d threads each keep a GPU busy about %.0f%% of the time "
                        "(%d would keep it busy)", feed.threads, 100 * feed.gpu_busy_fraction,
                        feed.wanted)
        graph_start = time.perf_counter()
        seamless: dict[str, Any] | None = None
        if tiles is not None:
            chosen = [logical_patches(patch_store, **tiles)[int(i)] for i in todo]
            plan, plan_notes = plan_run(
                dask_client, segmenter, tile_plan_shape(chosen), image_mpp, config,
                sum(p.grid.n_tiles for p in chosen), windows=True,
            )
            seamless = run_logical_patches(
                dask_client, patch_store, todo, segmenter, image_mpp, config, out_dir, tiles,
                tiles_per_task=plan.patches_per_task, pin_gpu=pin_gpu, progress=progress,
            )
            notes += seamless_notes(seamless)
        else:
            plan, plan_notes = plan_run(
                dask_client, segmenter, patch_store.patch_shape, image_mpp, config, len(todo)
            )
            if len(todo):
                stats = build_graph(
                    patch_store, todo, plan, segmenter, image_mpp, result_path,
                    config.tie_break, pin_gpu=pin_gpu,
                )
                future = submit(dask_client, stats)
                if progress:
                    show_progress(future)
                future.result()
        notes += plan_notes
        if len(todo):
            timings["graph_s"] = time.perf_counter() - graph_start

    outputs_start = time.perf_counter()
    metadata = finish_outputs(out_dir, group, patch_store, informative, config, image_mpp)
    timings["outputs_s"] = time.perf_counter() - outputs_start
    timings["total_s"] = time.perf_counter() - started
    manifest = run_manifest(patch_store, config, plan, informative, todo, timings, image_mpp,
                            notes)
    if seamless is not None:
        manifest["seamless"] = seamless
    if feed is not None:
        manifest["gpu_feed"] = feed.as_dict()
    write_manifest(out_dir, manifest)
    return RunResult(out_dir, metadata, plan, len(todo), manifest)


def check_finite(client: Client, patch_store: PatchStore, indices: np.ndarray) -> None:
    """Refuse NaN or infinite pixels in the patches ``indices`` before any segmentation.

    Only floating-point stores can hold them, so integer stores cost nothing; a float store is
    read once on the workers, and one flag per patch comes back.

    Raises
    ------
    InputError
        Naming the first patches with NaN or infinite pixels.
    """
    if patch_store.dtype.kind != "f" or len(indices) == 0:
        return
    if patch_store.image is not None:  # logical patches: each a box of the chunked slide
        image = da.from_zarr(patch_store.image)
        flags = [da.isfinite(image[patch_store.patch_box(i).slices()]).all() for i in indices]
        finite = np.asarray(client.compute(da.stack(flags)).result(), bool)
    else:
        patches = da.from_zarr(patch_store.pixels)[indices]
        finite = np.asarray(client.compute(da.isfinite(patches).all(axis=(1, 2, 3))).result(),
                            bool)
    bad = indices[~finite]
    if len(bad):
        raise InputError(
            f"{patch_store.path} has NaN or infinite pixels in {len(bad)} informative patches "
            f"(first: {bad[:5].tolist()}); replace them in the slide (e.g. numpy.nan_to_num) and "
            "re-create the store with `codexdask patch`"
        )


def plan_run(
    client: Client,
    segmenter: Segmenter,
    patch_shape: tuple[int, int],
    image_mpp: float,
    config: SegmentConfig,
    n_patches: int,
    *,
    windows: bool = False,
) -> tuple[BatchPlan, list[str]]:
    """Choose batch sizes from the workers' free memory and the GPU's.

    The host figure is the smallest worker memory budget (limit minus what the worker holds,
    :func:`codexdask.cluster.worker_memory_budgets`); the GPU figure is measured on a GPU worker
    when the segmenter wants one. An automatic batch size is also capped so that ``n_patches``
    give at least ``TASKS_PER_THREAD`` tasks per worker thread: large batches help a GPU but
    must not leave workers idle at the end of a run. ``windows``: ``patch_shape`` is a compute
    window of a logical patch (see :func:`~codexdask.segmenters.planner.plan_batches`).

    Returns
    -------
    plan : BatchPlan
    notes : list of str
        Warnings for the manifest (a GPU whose memory could not be measured).

    Raises
    ------
    ClusterError
        If ``config.gpus`` asked for GPUs and a GPU worker's memory cannot be measured.
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
    balanced = max(1, math.ceil(n_patches / (TASKS_PER_THREAD * threads)))
    if config.batch_size == "auto" and balanced < plan.patches_per_task:
        plan = dataclasses.replace(
            plan,
            patches_per_task=balanced,
            reason=f"{plan.reason}; capped at {balanced} so that {n_patches} patches give at "
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


def build_graph(
    patch_store: PatchStore,
    todo: np.ndarray,
    plan: BatchPlan,
    segmenter: Segmenter,
    image_mpp: float,
    result_path: str,
    tie_break: TieBreakName,
    *,
    pin_gpu: bool,
) -> da.Array:
    """The lazy segmentation graph for the patches ``todo``.

    Each patch is segmented and repaired at its true size (``PatchStore.true_sizes``) and its
    masks are stored zero-padded to the store's patch shape.

    Returns
    -------
    dask.array.Array
        ``(len(todo), len(RESULT_STAT_COLUMNS))`` float64 statistics; computing it writes the masks.
    """
    shape = patch_store.patch_shape
    true_sizes = patch_store.true_sizes(todo)
    batches = split_batches(np.arange(len(todo)), plan.patches_per_task)
    counts = tuple(len(batch) for batch in batches)
    selected = da.from_zarr(patch_store.patches)[todo].rechunk({0: counts})

    labels, timings = [], []
    for block, rows in zip(selected.to_delayed().ravel(), batches):
        with dask.annotate(resources={"GPU": 1}) if pin_gpu else contextlib.nullcontext():
            inferred = delayed(infer_batch, pure=True)(
                segmenter, block, true_sizes[rows], image_mpp
            )
        out = delayed(postprocess_batch, pure=True, nout=2)(segmenter, inferred, len(rows), shape)
        labels.append(da.from_delayed(out[0], (len(rows), *shape, 2), np.uint32))
        timings.append(da.from_delayed(out[1], (len(rows), 2), np.float64)[:, None, None, :])
    # One row per patch: its index in the store and its true height and width.
    where = np.column_stack([todo, true_sizes]).reshape(-1, 1, 1, 3)
    stats = da.map_blocks(
        _repair_block,
        da.concatenate(labels),
        da.concatenate(timings),
        da.from_array(where, chunks=(counts, 1, 1, 3)),
        result_path=result_path,
        tie_break=tie_break,
        chunks=(counts, 1, 1, len(RESULT_STAT_COLUMNS)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64),
    )
    return stats[:, 0, 0, :]


def submit(client: Client, stats: da.Array) -> Any:
    """Send the graph to the scheduler once and return the future of its statistics.

    Dask's array optimisation merges the graph's layers into one and drops layer annotations
    (dask 2026.1), which would let inference run on any worker; the tasks here are coarse (one
    per batch), so the graph is submitted unoptimised and keeps ``resources={"GPU": 1}``.
    """
    return client.compute(stats, optimize_graph=False)


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


def finish_outputs(
    out_dir: Path,
    group: Any,
    patch_store: PatchStore,
    informative: np.ndarray,
    config: SegmentConfig,
    image_mpp: float,
) -> pd.DataFrame:
    """Write the summary outputs from the result store, one patch at a time."""
    stats = read_stats_table(group)
    missing = informative[~stats["done"].to_numpy()[informative]]
    if len(missing):
        raise StoreError(
            f"{len(missing)} informative patches have no result (first: {missing[:5].tolist()}); "
            "run again with --resume"
        )
    metadata = write_metadata_csv(patch_store.metadata, stats, out_dir / METADATA_FILE)
    sizes = patch_store.true_sizes(informative)
    if config.save_pickles:
        write_seg_res_pickles(
            group, informative, out_dir, sizes=sizes,
            compression=config.pickle_compression, level=config.pickle_compression_level,
        )
    if config.save_mosaics:
        write_mosaics(group, patch_store, out_dir, image_mpp=image_mpp)
    for index, (h, w) in zip(informative[: config.n_overlays], sizes):
        patch_id = int(patch_store.metadata["patch_id"].iloc[index])
        region = overlay_region(h, w)
        masks = {name: group[name][(index,) + region.slices()]
                 for name in ("cell_boundary", "nucleus_boundary")}
        write_overlay_png(out_dir / OVERLAYS_DIR / overlay_name(patch_id),
                          patch_store.read_patch(index, region), masks)
    return metadata


#: Largest side of an overlay PNG; a larger patch (a whole slide) shows its centre.
OVERLAY_SIDE = 2048


def overlay_region(height: int, width: int) -> Box:
    """The part of an ``(height, width)`` patch an overlay shows: all, or its centre."""
    h, w = min(height, OVERLAY_SIDE), min(width, OVERLAY_SIDE)
    top, left = (height - h) // 2, (width - w) // 2
    return Box(top, left, top + h, left + w)


def run_serial(
    store: str | Path, config: SegmentConfig | None = None, *, segmenter: Segmenter | None = None
) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
    """The plain loop the engine must equal: load one patch, segment it, repair it.

    Each patch is cut to its true size first; its masks are zero-padded back to the store's.

    Yields
    ------
    index : int
        Patch position in the store (informative patches only, ascending).
    masks : dict
        The nine ``(H, W)`` uint32 masks.
    stats : numpy.ndarray
        Repair statistics in ``layout.REPAIR_STAT_COLUMNS`` order.
    """
    config = config or SegmentConfig()
    patch_store = open_patch_store(store)
    image_mpp = float(config.image_mpp or patch_store.image_mpp)
    segmenter = segmenter or get_segmenter(config.backend, **config.segmenter_options())
    tiles = (resolve_tiles(config, segmenter, image_mpp, patch_store)
             if patch_store.layout == "image" else None)
    for index in patch_store.informative_indices:
        patch = patch_store.read_patch(index)
        if tiles is None:
            labels = segmenter.predict(patch[np.newaxis], image_mpp)[0]
            masks, stats, _ = repair_patch(labels, config.tie_break)
        else:  # a logical patch: tile by tile, as the engine does (codexdask.seamless.serial)
            masks, stats = repair_tiled(patch, segmenter, image_mpp, tiles, config.tie_break)
        yield int(index), {k: pad_to(m, patch_store.patch_shape) for k, m in masks.items()}, stats
