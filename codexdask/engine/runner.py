"""The segmentation engine: a patch store in, a result store and the run's outputs out.

:func:`run` builds the run's :class:`~codexdask.engine.plan.RunPlan`, then computes every patch
still to do in one of two ways that share the plan, the segmenter and the result store:

- a store of patches: one lazy Dask array graph (:mod:`codexdask.engine.patch_graph`) whose
  repair is a ``map_blocks`` over the patch store, computed once;
- a store of logical patches: chains of futures over compute blocks, stitched and repaired
  (:mod:`codexdask.engine.logical`).

Then, in the driver, one patch at a time: ``patches_metadata.csv``, pickles, mosaics, overlays,
and ``run_manifest.json`` last (its presence marks a complete run). Why two execution models is
explained in ``docs/architecture.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
from distributed import Client

from codexdask.boxes import Box
from codexdask.config import SegmentConfig, make_config
from codexdask.engine import cluster
from codexdask.engine.logical import SeamlessReport, run_logical_patches
from codexdask.engine.patch_graph import build_graph, submit
from codexdask.engine.plan import RunPlan, build_plan, resolve_blocks
from codexdask.engine.progress import show_progress
from codexdask.engine.stages import StageSeconds, stage_report
from codexdask.engine.tasks import pad_to, repair_patch
from codexdask.errors import InputError, StoreError
from codexdask.layout import (
    CELL_BOUNDARY,
    DONE_ARRAY,
    METADATA_FILE,
    NUCLEUS_BOUNDARY,
    OVERLAYS_DIR,
    RESULT_STAT_COLUMNS,
    RESULT_STORE,
    overlay_name,
)
from codexdask.outputs import (
    check_output_dir,
    prepare_result_store,
    read_stats_table,
    run_manifest,
    write_manifest,
    write_metadata_csv,
    write_mosaics,
    write_seg_res_pickles,
)
from codexdask.outputs.overlays import write_overlay_png
from codexdask.seamless.serial import repair_in_blocks
from codexdask.segmenters import Segmenter, get_segmenter
from codexdask.store.patch_store import PatchStore, open_patch_store

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did.

    Attributes
    ----------
    out_dir : Path
        The output directory.
    metadata : pandas.DataFrame
        ``patches_metadata.csv`` as written: one row per patch with the repair statistics.
    plan : RunPlan
        What the run decided: patches, blocks, batch sizes, weights.
    n_computed : int
        Patches segmented by this call (fewer than the informative ones after ``resume``).
    manifest : dict
        The content of ``run_manifest.json``.
    """

    out_dir: Path
    metadata: pd.DataFrame
    plan: RunPlan
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
            f"batch plan: {self.plan.batch.patches_per_task} patches per task "
            f"({self.plan.batch.reason})",
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
    segmenter = segmenter or get_segmenter(config.backend, **config.segmenter_options())
    segmenter.check()
    out_dir = Path(out_dir).resolve()
    check_output_dir(out_dir, resume=config.resume, overwrite=config.overwrite)

    notes: list[str] = []  # warnings, logged and recorded in the manifest
    if len(patch_store.informative_indices) == 0:
        notes.append(
            f"no informative patch in {patch_store.path}: nothing to segment; outputs are empty. "
            "Check the QC thresholds (non_zero_perc_threshold, mean_intensity_threshold)."
        )
        warnings.warn(notes[-1], stacklevel=2)

    timings: dict[str, float] = {}
    seamless: SeamlessReport | None = None
    stages: dict[str, Any] | None = None
    with cluster.connect(config, client, segmenter) as dask_client:
        plan = build_plan(dask_client, config, patch_store, segmenter, out_dir)
        notes += plan.notes
        # Inputs are checked before anything is written: a failed check leaves no result store
        # behind, so a retry with the input fixed is not refused as "already holds a run".
        check_finite(dask_client, patch_store, np.asarray(plan.informative, dtype=np.int64))
        group = prepare_result_store(out_dir, patch_store, resume=config.resume,
                                     overwrite=config.overwrite, blocks=plan.blocks,
                                     zarr_format=config.zarr_format)
        if progress:
            print(f"Dask dashboard: {dask_client.dashboard_link}", file=sys.stderr)
        graph_start = time.perf_counter()
        gpus = len(cluster.gpu_workers(dask_client)) if plan.pin_gpu else 0
        if plan.blocks is not None:
            seamless = run_logical_patches(dask_client, patch_store, segmenter, plan, out_dir,
                                           progress=progress)
            notes += seamless.notes()
            graph_s = time.perf_counter() - graph_start
            spent, stitch_s, repair_s = seamless.stages()
            stages = stage_report(spent, repair_s=repair_s, stitch_s=stitch_s,
                                  megapixels=seamless.pixels / 1e6, graph_s=graph_s, gpus=gpus)
        elif plan.todo:
            stats_future, stages_future = submit(dask_client, build_graph(
                patch_store, plan, segmenter, str(out_dir / RESULT_STORE)))
            if progress:
                show_progress(stats_future)
            stats = np.asarray(stats_future.result())
            seconds = np.asarray(stages_future.result()).sum(axis=0)
            graph_s = time.perf_counter() - graph_start
            pixels = float(np.prod(patch_store.true_sizes(np.asarray(plan.todo)), axis=1).sum())
            stages = stage_report(
                StageSeconds(*seconds.tolist()), stitch_s=None, megapixels=pixels / 1e6,
                repair_s=float(stats[:, RESULT_STAT_COLUMNS.index("repair_s")].sum()),
                graph_s=graph_s, gpus=gpus)
        if plan.todo:
            timings["graph_s"] = graph_s

    outputs_start = time.perf_counter()
    metadata = finish_outputs(out_dir, group, patch_store, plan, config)
    timings["outputs_s"] = time.perf_counter() - outputs_start
    timings["total_s"] = time.perf_counter() - started
    manifest = run_manifest(patch_store, config, plan.as_dict(), len(plan.informative),
                            len(plan.todo), timings, notes)
    if stages is not None:
        manifest["stages"] = stages
    if seamless is not None:
        manifest["seamless"] = seamless.as_dict()
    write_manifest(out_dir, manifest)
    return RunResult(out_dir, metadata, plan, len(plan.todo), manifest)


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


def finish_outputs(
    out_dir: Path, group: Any, patch_store: PatchStore, plan: RunPlan, config: SegmentConfig
) -> pd.DataFrame:
    """Write the summary outputs from the result store, one patch at a time."""
    informative = np.asarray(plan.informative, dtype=np.int64)
    stats = read_stats_table(group)
    missing = informative[~stats[DONE_ARRAY].to_numpy()[informative]]
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
        write_mosaics(group, patch_store, out_dir, image_mpp=plan.image_mpp)
    for index, (h, w) in zip(informative[: config.n_overlays], sizes):
        patch_id = int(patch_store.metadata["patch_id"].iloc[index])
        region = overlay_region(h, w)
        masks = {name: group[name][(index,) + region.slices()]
                 for name in (CELL_BOUNDARY, NUCLEUS_BOUNDARY)}
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
    blocks = resolve_blocks(config, segmenter, image_mpp, patch_store)
    for index in patch_store.informative_indices:
        patch = patch_store.read_patch(index)
        if blocks is None:
            labels = segmenter.predict(patch[np.newaxis], image_mpp)[0]
            masks, stats, _ = repair_patch(labels, config.tie_break)
        else:  # a logical patch: block by block, as the engine does (codexdask.seamless.serial)
            masks, stats = repair_in_blocks(patch, segmenter, image_mpp, blocks, config.tie_break)
        yield int(index), {k: pad_to(m, patch_store.patch_shape) for k, m in masks.items()}, stats
