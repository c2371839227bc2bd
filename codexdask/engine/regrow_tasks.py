"""The work folder's side of regrowing objects larger than the halo (``codexdask.seamless.regrow``).

A block task records the parts of objects it cut (:func:`cut_arrays`, in its ``tables`` file).
Once every block of a patch is stored, :func:`plan_regrowing` keeps the parts that no block's kept
objects cover and groups them in clusters (parts of one object overlap); :func:`regrow_clusters`
tasks share the clusters out and write what each cluster regrew to ``regrowing/`` (one file per
cluster). The numbering keeps the regrown objects that are new (:func:`patch_objects`) and writes
their ids, and each stitching task pastes those that reach its region (:func:`regrown_pieces`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codexdask.boxes import Box
from codexdask.engine.plan import RunPlan
from codexdask.engine.work_folder import (
    COMPARTMENTS,
    RunPaths,
    block_file,
    load_arrays,
    owned_group,
    read_raw,
    save_arrays,
)
from codexdask.layout import WORK_IDS_DIR, WORK_REGROWN_DIR, WORK_TABLES_DIR, regrown_file_name
from codexdask.seamless.blocks import LogicalPatch
from codexdask.seamless.regrow import CutParts, Objects, PatchObjects, regrow_objects
from codexdask.seamless.serial import window_segmenter
from codexdask.seamless.stitch import OwnedObjects
from codexdask.segmenters.base import Segmenter

__all__ = ["RegrowPlan", "Regrowing", "add_regrowing", "cut_arrays", "patch_objects",
           "plan_regrowing", "regrow_clusters", "regrown_pieces", "save_regrown_ids"]


def cut_arrays(kept: Sequence[OwnedObjects]) -> dict[str, np.ndarray]:
    """The cut objects of a block's compartments, as arrays of its ``tables`` file."""
    return {key: value for name, objects in zip(COMPARTMENTS, kept, strict=True)
            for key, value in objects.cut.as_arrays(f"cut_{name}").items()}


@dataclasses.dataclass(frozen=True)
class RegrowPlan:
    """The clusters of cut parts a patch regrows (:func:`plan_regrowing`).

    Attributes
    ----------
    clusters : tuple of CutParts
    unresolved : (int, int)
        Cut objects of blocks stored by codexdask 0.3, which did not record their parts: they
        count as dropped.
    """

    clusters: tuple[CutParts, ...]
    unresolved: tuple[int, int] = (0, 0)


def plan_regrowing(paths: RunPaths, patch: LogicalPatch, stored: Any) -> RegrowPlan:
    """The parts of cut objects of ``patch`` that no block kept, in clusters.

    ``stored`` is the summary of every block of the patch this task waits for: whether a block
    kept an object is read from all of them (one pixel per part and neighbouring block).
    """
    owned = owned_group(paths)

    def kept_label(block: int, c: int, y: int, x: int) -> int:
        window = patch.grid.window(block)
        return int(owned[COMPARTMENTS[c]][patch.block_id(block), y - window.top,
                                           x - window.left])

    parts, unresolved = [], np.zeros(2, np.int64)
    for block in patch.grid:
        with np.load(block_file(paths, WORK_TABLES_DIR, patch.block_id(block))) as table:
            if f"cut_{COMPARTMENTS[0]}_first_pixels" not in table:  # codexdask 0.3
                unresolved += table["report"][2:4].astype(np.int64)
                continue
            for c, name in enumerate(COMPARTMENTS):
                cut = Objects.from_arrays(table, f"cut_{name}")
                if len(cut):
                    parts.append((c, cut.not_kept(patch.grid, c, kept_label)))
    clusters = CutParts.of(parts).clusters()
    return RegrowPlan(tuple(clusters), (int(unresolved[0]), int(unresolved[1])))


@dataclasses.dataclass(frozen=True)
class Regrowing:
    """What regrowing some clusters did.

    Attributes
    ----------
    found : (int, int)
        Objects found whole (whole-cell, nucleus), before the numbering drops those found twice.
    unresolved : (int, int)
        Objects no window within the bound held whole (dropped).
    windows : int
        Windows segmented.
    seconds : float
    """

    found: tuple[int, int] = (0, 0)
    unresolved: tuple[int, int] = (0, 0)
    windows: int = 0
    seconds: float = 0.0

    def __add__(self, other: Regrowing) -> Regrowing:
        return Regrowing((self.found[0] + other.found[0], self.found[1] + other.found[1]),
                         (self.unresolved[0] + other.unresolved[0],
                          self.unresolved[1] + other.unresolved[1]),
                         self.windows + other.windows, self.seconds + other.seconds)


def add_regrowing(*parts: Regrowing) -> Regrowing:
    """The sum of ``parts`` (a step of a tree of tasks)."""
    return sum(parts, Regrowing())


def regrow_clusters(
    segmenter: Segmenter,
    plan: RunPlan,
    paths: RunPaths,
    patch: LogicalPatch,
    statistics: Any,
    regrowing: RegrowPlan,
    share: int,
    n_shares: int,
) -> Regrowing:
    """Regrow clusters ``share``, ``share + n_shares``, ... of ``regrowing`` (each once: a
    stored result of the same parts is read back). Share 0 also reports the plan's
    ``unresolved``."""
    segment = window_segmenter(segmenter, plan.image_mpp, statistics, patch.shape,
                               lambda box: read_raw(paths, patch, box))
    done = Regrowing(unresolved=regrowing.unresolved) if share == 0 else Regrowing()
    for index in range(share, len(regrowing.clusters), n_shares):
        parts = regrowing.clusters[index]
        path = _cluster_file(paths, WORK_REGROWN_DIR, patch, index)
        if not (path.exists() and np.array_equal(load_arrays(path, ["anchors"])[0],
                                                 parts.parts.first_pixels)):
            start = time.perf_counter()
            found, report = regrow_objects(parts.by_compartment(len(COMPARTMENTS)), segment,
                                           patch.shape, patch.grid.halo, patch.grid.max_window)
            save_arrays(path, {
                **{key: value for name, objects in zip(COMPARTMENTS, found, strict=True)
                   for key, value in objects.as_arrays(name).items()},
                "anchors": parts.parts.first_pixels,
                "report": np.array([*(len(objects) for objects in found), *report.unresolved,
                                    report.windows, time.perf_counter() - start], np.float64)})
        cells, nuclei, unresolved_cells, unresolved_nuclei, windows, seconds = load_arrays(
            path, ["report"])[0].tolist()  # the masks stay on disk
        done += Regrowing((int(cells), int(nuclei)),
                          (int(unresolved_cells), int(unresolved_nuclei)), int(windows), seconds)
    return done


def _cluster_file(paths: RunPaths, folder: str, patch: LogicalPatch, cluster: int) -> Path:
    """A cluster's file in the work folder's ``regrowing`` (its objects) or ``ids``."""
    return Path(paths.work) / folder / regrown_file_name(patch.index, cluster)


def _regrown(paths: RunPaths, patch: LogicalPatch, cluster: int) -> list[Objects]:
    """The objects cluster ``cluster`` regrew, per compartment."""
    with np.load(_cluster_file(paths, WORK_REGROWN_DIR, patch, cluster)) as saved:
        return [Objects.from_arrays(saved, name) for name in COMPARTMENTS]


def patch_objects(paths: RunPaths, patch: LogicalPatch, regrowing: RegrowPlan) -> PatchObjects:
    """The stored objects of every block of ``patch`` and of its clusters, and which regrown
    ones are new."""
    firsts: list[list[np.ndarray]] = [[], []]
    for block in patch.grid:
        cells, nuclei = load_arrays(block_file(paths, WORK_TABLES_DIR, patch.block_id(block)),
                                    ["first_cell", "first_nucleus"])
        firsts[0].append(cells)
        firsts[1].append(nuclei)
    return PatchObjects.of(firsts, {cluster: _regrown(paths, patch, cluster)
                                    for cluster in range(len(regrowing.clusters))})


def save_regrown_ids(paths: RunPaths, patch: LogicalPatch, objects: PatchObjects,
                     ids: Sequence[dict[int, np.ndarray]]) -> np.ndarray:
    """Write each cluster's ids in the patch (``ids[c][cluster]``, 0: not new) to the work
    folder; returns ``(n_clusters, 4)`` int64: the box holding each cluster's new objects (empty
    boxes for none), for :func:`regrown_pieces`."""
    boxes = np.zeros((len(objects.regrown), 4), np.int64)
    for cluster, found in objects.regrown.items():
        save_arrays(_cluster_file(paths, WORK_IDS_DIR, patch, cluster),
                    {name: ids[c][cluster] for c, name in enumerate(COMPARTMENTS)})
        new = [found[c].boxes[ids[c][cluster] > 0] for c in range(len(COMPARTMENTS))]
        held = np.concatenate(new)
        if held.size:
            boxes[cluster] = (held[:, 0].min(), held[:, 1].min(), held[:, 2].max(),
                              held[:, 3].max())
    return boxes


def regrown_pieces(paths: RunPaths, patch: LogicalPatch, region: Box,
                   cluster_boxes: np.ndarray) -> list[list[Any]]:
    """Per compartment, the new regrown objects that overlap ``region``, as
    :func:`codexdask.seamless.stitch.compose` pieces with their ids in the patch
    (``cluster_boxes`` from :func:`save_regrown_ids`: only the clusters reaching the region are
    read)."""
    pieces: list[list[Any]] = [[], []]
    for cluster, box in enumerate(cluster_boxes.tolist()):
        if not Box(*box).overlaps(region):
            continue
        found = _regrown(paths, patch, cluster)
        ids = load_arrays(_cluster_file(paths, WORK_IDS_DIR, patch, cluster), COMPARTMENTS)
        for c in range(len(COMPARTMENTS)):
            pieces[c] += found[c].pieces(ids[c], region)
    return pieces
