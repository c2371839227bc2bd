"""Logical patches on a Dask cluster: statistics, blocks, stitching, repair (futures).

For every informative logical patch still to do, in order:

1. the segmenter's image-wide statistics, gathered in passes over boxes of the patch (each pass
   one task per box and a tree of combine tasks; the driver advances the passes);
2. per group of blocks (as many as fill a network call, one for a segmenter without network
   tiles) a prepare task (CPU), a network task (``resources={"GPU": 1}`` on a GPU cluster) and a
   store task (CPU: finish, then store); with network tasks pinned to GPUs, a group's
   preparation waits for the group ``plan.in_flight`` places earlier to be stored, so
   preparation runs ahead of the GPUs by a bounded number of groups; blocks already stored by
   an interrupted run are skipped;
3. once every block is stored, a task that finds the cut objects no block kept and clusters
   their parts, then as many regrow tasks as groups of blocks (placed like the network tasks),
   sharing the clusters out: those objects segmented again in grown windows (nothing to do in the
   common case);
4. a numbering task, one compose task per core, a chain of match tasks (one per band of block
   rows, each waiting for the cores of the few rows it reads), one repair task per core (waiting
   for the bands its region touches) and a finishing task, chained by their futures.

Only small results travel (block reports, counts, the carry between bands); labels, ids,
tallies and the bands' matchings go through the work folder and the result store, so no task
holds anything of the size of the whole patch but the numbering task (the first pixels of all
objects, 8 bytes each, from which it also plans the matching bands). Progress counts blocks and
megapixels per second.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from distributed import Client, as_completed

from codexdask.boxes import Box
from codexdask.engine.block_tasks import (
    bands_of,
    compose_core,
    finish_patch,
    match_patch_band,
    network_blocks,
    number_patch,
    prepare_blocks,
    repair_bands,
    repair_stored_core,
    store_blocks,
    summarise_blocks,
    total,
)
from codexdask.engine.plan import RunPlan
from codexdask.engine.regrow_tasks import add_regrowing, plan_regrowing, regrow_clusters
from codexdask.engine.stages import StageSeconds
from codexdask.engine.work_folder import RunPaths, blocks_done, create_work_folder, read_raw
from codexdask.errors import StateError
from codexdask.layout import BLOCKS_DIR, DONE_ARRAY, RESULT_STORE
from codexdask.outputs.result_store import open_result_store
from codexdask.seamless.blocks import Blocks, LogicalPatch, largest_window
from codexdask.segmenters import Segmenter
from codexdask.statistics.passes import ImageStatistics
from codexdask.store.patch_store import PatchStore

__all__ = ["SeamlessReport", "follow_blocks", "gather_statistics_on", "run_logical_patches"]

logger = logging.getLogger(__name__)

#: Partial statistics combined per task in the trees of combine tasks.
COMBINE_FAN_IN = 16


@dataclasses.dataclass(frozen=True)
class SeamlessReport:
    """What a run of logical patches did.

    Attributes
    ----------
    blocks : Blocks
        The run's compute blocks.
    n_blocks, n_computed : int
        Blocks of the patches computed, and those segmented by this call (fewer on resume).
    dropped, conflicts : (int, int)
        Objects too large for the largest grown window, and pixels two blocks' objects claimed,
        per compartment (whole-cell, nucleus).
    patches : tuple of dict
        One summary per patch (:func:`~codexdask.engine.block_tasks.finish_patch`).
    pixels : int
        Pixels of the patches computed (the stages' seconds cover them all, blocks stored by
        an interrupted run included).
    """

    blocks: Blocks
    n_blocks: int
    n_computed: int
    dropped: tuple[int, int]
    conflicts: tuple[int, int]
    patches: tuple[dict[str, Any], ...]
    pixels: int = 0

    def regrown(self) -> dict[str, Any]:
        """Objects larger than the halo taken from grown windows (whole-cell, nucleus), the
        windows segmented for them and their seconds, summed over the patches."""
        return {"objects": [sum(p["regrown"][c] for p in self.patches) for c in (0, 1)],
                "windows": sum(p["regrow_windows"] for p in self.patches),
                "seconds": sum(p["regrow_s"] for p in self.patches),
                "max_window": self.blocks.max_window}

    def stages(self) -> tuple[StageSeconds, float, float]:
        """Seconds of the segmentation stages, of stitching and of repair, summed over the
        patches (those of blocks stored by an earlier run included)."""
        stages, stitch, repair = StageSeconds(), 0.0, 0.0
        for summary in self.patches:
            stages += StageSeconds.from_dict(summary["stages"])
            stitch += summary["stitch_s"]
            repair += summary["repair_s"]
        return stages, stitch, repair

    def as_dict(self) -> dict[str, Any]:
        """The report as ``run_manifest.json`` records it under ``seamless``."""
        return {"blocks": {"total": self.n_blocks, "computed": self.n_computed,
                           **self.blocks.as_dict()},
                "regrown": self.regrown(),
                "dropped": list(self.dropped), "conflicts": list(self.conflicts),
                "patches": list(self.patches)}

    def notes(self) -> list[str]:
        """Warnings for the log and the manifest: objects too large for the largest grown window
        (dropped) and pixels two blocks' objects claimed (conflicts)."""
        notes = []
        for c, name in enumerate(("whole-cell", "nucleus")):
            if self.dropped[c] and self.blocks.max_window:
                notes.append(f"{self.dropped[c]} {name} objects were larger than the halo of "
                             f"{self.blocks.halo} px allows and did not fit a grown window of "
                             f"at most {self.blocks.max_window} px a side; they were dropped: "
                             "raise --max-window")
            elif self.dropped[c]:
                notes.append(f"{self.dropped[c]} {name} objects were larger than the halo of "
                             f"{self.blocks.halo} px allows and were dropped (max_window 0 "
                             "turns regrowing off): raise --max-window")
            if self.conflicts[c]:
                notes.append(f"{self.conflicts[c]} {name} pixels were claimed by objects of "
                             "two blocks (the lower id kept them); raise --halo")
        for note in notes:
            logger.warning(note)
        return notes


def run_logical_patches(
    client: Client,
    patch_store: PatchStore,
    segmenter: Segmenter,
    plan: RunPlan,
    out_dir: Path,
    *,
    progress: bool,
) -> SeamlessReport:
    """Segment, stitch and repair the logical patches ``plan.todo`` (store row indices)."""
    if plan.blocks is None:
        raise StateError("run_logical_patches needs a plan of logical patches (a store of the "
                         "image layout)")
    paths = RunPaths(str(patch_store.path.resolve()), str(out_dir / RESULT_STORE),
                     str(out_dir / BLOCKS_DIR))
    create_work_folder(paths.work, sum(p.grid.n_blocks for p in plan.patches),
                       largest_window(plan.patches), plan.blocks.size)
    per_task = plan.batch.patches_per_task
    gpu = _pinned(plan)
    stored, finished, n_blocks_now, pixels_now = [], [], 0, 0
    # the last plan.in_flight groups' store tasks, across patches (none kept without a bound)
    reports: collections.deque[Any] = collections.deque(maxlen=plan.in_flight or 0)
    for patch in plan.chosen:
        remaining = set(np.flatnonzero(~blocks_done(paths, patch)).tolist())
        # also when every block is stored: regrowing may still have windows to segment
        stats = gather_statistics_on(client, segmenter, paths, patch, plan.image_mpp)
        # Shipped to each worker once, not inside every block task (they can be megabytes); a
        # task's result rather than scattered data, so a lost worker's copy is recomputed.
        shared = client.submit(_identity, stats, pure=False) if stats is not None else None
        added, pending = [], []
        for start in range(0, patch.grid.n_blocks, per_task):
            group = list(range(start, min(start + per_task, patch.grid.n_blocks)))
            todo_here = [b for b in group if b in remaining]
            after = reports[0] if plan.in_flight and len(reports) == plan.in_flight else None
            prepared = client.submit(prepare_blocks, segmenter, plan, paths, patch, group,
                                     shared, after, pure=False)
            networked = client.submit(network_blocks, segmenter, prepared, pure=False, **gpu)
            report = client.submit(store_blocks, segmenter, networked, paths, patch, group,
                                   pure=False)
            reports.append(report)
            pending.append(report)
            # added up right after their group, so each block's result is released early
            if len(pending) == COMBINE_FAN_IN or start + per_task >= patch.grid.n_blocks:
                added.append(client.submit(summarise_blocks, *pending, pure=False))
                pending = []
            if todo_here:
                if progress:
                    stored.append(report)
                n_blocks_now += len(todo_here)
                pixels_now += sum(patch.grid.core(t).shape[0] * patch.grid.core(t).shape[1]
                                  for t in todo_here)
        finished.append(_chain(client, segmenter, plan, paths, patch, shared, added))
    if progress:
        follow_blocks(stored, n_blocks_now, pixels_now)
    summaries = client.gather(finished)
    if _all_done(out_dir, plan):  # the work folder is needed only to finish a run
        shutil.rmtree(paths.work, ignore_errors=True)
    dropped, conflicts = ([sum(s[key][c] for s in summaries) for c in (0, 1)]
                          for key in ("dropped", "conflicts"))
    return SeamlessReport(plan.blocks, sum(p.grid.n_blocks for p in plan.chosen), n_blocks_now,
                          (dropped[0], dropped[1]), (conflicts[0], conflicts[1]),
                          tuple(summaries), sum(p.shape[0] * p.shape[1] for p in plan.chosen))


def _chain(client: Client, segmenter: Segmenter, plan: RunPlan, paths: RunPaths,
           patch: LogicalPatch, statistics: Any, summaries: list[Any]) -> Any:
    """Submit regrowing -> numbering -> compose per core -> match per band -> repair per core
    -> finish."""
    stored = _tree(client, summarise_blocks, summaries)
    per_task = plan.batch.patches_per_task
    gpu = _pinned(plan)
    clusters = client.submit(plan_regrowing, paths, patch, stored, pure=False)
    shares = math.ceil(patch.grid.n_blocks / per_task)  # as many as groups of blocks
    regrown = _tree(client, add_regrowing, [
        client.submit(regrow_clusters, segmenter, plan, paths, patch, statistics, clusters,
                      share, shares, pure=False, **gpu) for share in range(shares)])
    numbered = client.submit(number_patch, paths, patch, clusters, regrown, pure=False)
    n_cols, bands = patch.grid.n_cols, bands_of(patch)
    composed = [client.submit(compose_core, plan, paths, patch, block, numbered, pure=False)
                for block in patch.grid]
    rows = [composed[row * n_cols:(row + 1) * n_cols] for row in range(patch.grid.n_rows)]
    banded: list[Any] = []
    for band in range(bands.n_rows):
        needed = [rows[row] for row in bands.tally_rows(band)]
        banded.append(client.submit(match_patch_band, plan, paths, patch, band, numbered,
                                    banded[-1] if banded else None, needed, pure=False))
    repaired = [client.submit(repair_stored_core, paths, patch, block,
                              banded[repair_bands(patch, block)[-1]], pure=False)
                for block in patch.grid]
    return client.submit(finish_patch, paths, patch, banded[-1], stored, regrown, numbered,
                         _tree(client, total, repaired), pure=False)


def _tree(client: Client, func: Any, futures: list[Any]) -> Any:
    """One future of ``func`` applied over ``futures`` through a tree of tasks, each taking
    :data:`COMBINE_FAN_IN` (the parts are released as they are added up)."""
    while True:
        futures = [client.submit(func, *futures[i:i + COMBINE_FAN_IN], pure=False)
                   for i in range(0, len(futures), COMBINE_FAN_IN)]
        if len(futures) == 1:
            return futures[0]


def _pinned(plan: RunPlan) -> dict[str, Any]:
    """``submit`` keywords of the tasks that run the network: on a GPU when it is pinned."""
    return {"resources": {"GPU": 1}} if plan.pin_gpu else {}


def _identity(value: Any) -> Any:
    return value


def _all_done(out_dir: Path, plan: RunPlan) -> bool:
    done = np.asarray(open_result_store(out_dir / RESULT_STORE)[DONE_ARRAY][:], dtype=bool)
    return bool(done[list(plan.informative)].all())


# --------------------------------------------------------------------------------------------
# statistics on the cluster


def gather_statistics_on(
    client: Client, segmenter: Segmenter, paths: RunPaths, patch: LogicalPatch,
    image_mpp: float,
) -> ImageStatistics | None:
    """The segmenter's image-wide statistics of ``patch``, each pass run as Dask tasks."""
    stats = segmenter.statistics(image_mpp)
    while stats is not None and not stats.done:
        # Each group of boxes is submitted with its combine task right after it: the scheduler
        # then combines as it goes, so at most a few groups of partial results are held at once,
        # however many boxes the patch has.
        partials = []
        boxes = stats.boxes(patch.shape)
        for first in range(0, len(boxes), COMBINE_FAN_IN):
            group = [client.submit(_measure, stats, paths, patch, box, pure=False)
                     for box in boxes[first:first + COMBINE_FAN_IN]]
            partials.append(client.submit(stats.combine, group, pure=False))
        stats = stats.advance(_tree(client, functools.partial(_combine, stats), partials).result())
    return stats


def _combine(stats: ImageStatistics, *partials: Any) -> Any:
    return stats.combine(partials)


def _measure(stats: ImageStatistics, paths: RunPaths, patch: LogicalPatch, box: Box) -> Any:
    read_box = stats.read_box(box, patch.shape)
    return stats.measure(read_raw(paths, patch, read_box), read_box, box, patch.shape)


# --------------------------------------------------------------------------------------------
# progress


def follow_blocks(futures: list[Any], n_blocks: int, pixels: int, stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
    """Print blocks done out of ``n_blocks`` and megapixels per second as store tasks finish.

    On a terminal one line is redrawn; elsewhere a line is printed every ``every_s`` seconds
    and at the end. ``futures`` is emptied: each future is let go once counted, so its worker
    can release the result.
    """
    stream = sys.stdout if stream is None else stream
    tty = stream.isatty()
    start = last = time.perf_counter()
    done_blocks = done_pixels = 0
    finishing = as_completed(futures)
    futures.clear()
    for future in finishing:
        if future.status != "finished":
            continue
        for report in future.result():
            done_blocks += 1
            done_pixels += report.pixels
        now = time.perf_counter()
        rate = done_pixels / 1e6 / max(now - start, 1e-9)
        line = (f"blocks: {done_blocks} of {n_blocks} done, {done_pixels / 1e6:.1f} of "
                f"{pixels / 1e6:.1f} MP, {rate:.2f} MP/s")
        if tty:
            print(f"\r{line}", end="", file=stream, flush=True)
        elif now - last >= every_s or done_blocks >= n_blocks:
            print(line, file=stream, flush=True)
            last = now
    if tty:
        print(file=stream)

