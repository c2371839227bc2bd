"""The work folder of a run of logical patches (``OUT/blocks``): what block tasks hand on.

A block task writes its owned objects, a table of first pixels and then its ``done`` flag; the
numbering task writes each block's global ids; a stitching task writes its core's tally and its
stitched labels with the repair's margin; a band task writes its labels' matching. Every file
is written whole under a temporary name (or, for a Zarr shard, by one task only), so a task that
runs twice writes the same bytes again. The folder is written once and read once, so its labels
use lz4 (fast) where the result store uses zstd (small). Only codexdask reads it, so it is Zarr v3
whatever the run's ``zarr_format`` (a resumed run of an older version keeps its v2 arrays). Names
come from :mod:`codexdask.layout`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from codexdask.atomic import atomic_path
from codexdask.boxes import Box
from codexdask.layout import (
    CELL,
    DONE_ARRAY,
    IMAGE_ARRAY,
    NUCLEUS,
    OWNED_ZARR,
    STITCHED_ZARR,
    WORK_BANDS_DIR,
    WORK_FILE_DIRS,
    band_file_name,
    block_file_name,
)
from codexdask.repair.bands import BandMatching
from codexdask.repair.matching import RepairTally
from codexdask.seamless.blocks import LogicalPatch
from codexdask.seamless.regions import REPAIR_MARGIN
from codexdask.store.formats import Blosc, create_array, new_group, unit_shards

__all__ = ["COMPARTMENTS", "RunPaths", "band_file", "block_file", "blocks_done",
           "create_work_folder", "load_arrays", "load_band", "load_tally", "owned_group",
           "read_raw", "save_arrays", "save_tally", "stitched_group"]

#: The two compartments, in label-channel order (whole-cell, nucleus).
COMPARTMENTS = (CELL, NUCLEUS)
#: Side of the inner chunks of a block's stored window (one shard per block): a neighbour reading
#: the strip of the window that reaches into its core decodes a strip of chunks, not the window.
OWNED_CHUNK = 256
#: Compressor of the work folder's labels: written and read once each, so speed over size (lz4
#: encoded 2x and decoded 3x faster than the result store's zstd, at about half its ratio).
WORK_COMPRESSOR = Blosc("lz4", 5)


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run reads and writes (absolute paths, valid on every worker).

    Attributes
    ----------
    store : str
        The patch store (its ``image`` array holds the slide).
    result : str
        The result store ``OUT/masks.zarr``.
    work : str
        The work folder ``OUT/blocks``.
    """

    store: str
    result: str
    work: str


def create_work_folder(
    path: str | Path, n_blocks: int, window_shape: tuple[int, int], block_size: int
) -> None:
    """Create the work folder's arrays unless they exist (a resumed run keeps them).

    In ``owned.zarr``, ``cell`` and ``nucleus`` ``(n_blocks, h, w)`` uint32 hold each block's
    kept objects (``h, w`` the largest window; one shard per block, inner chunks of about
    :data:`OWNED_CHUNK` px) and ``done`` ``(n_blocks,)`` bool is set last for a block. In
    ``stitched.zarr``, ``cell`` and ``nucleus`` ``(n_blocks, s, s)`` uint32 (``s`` =
    ``block_size`` + 2 x the repair's margin, one chunk per block) hold each core's stitched
    labels with that margin, for the repair.
    """
    root = _work_group(Path(path) / OWNED_ZARR)
    height, width = window_shape
    _create_labels(root, *unit_shards((1, height, width), OWNED_CHUNK), n_blocks)
    side = block_size + 2 * REPAIR_MARGIN
    _create_labels(_work_group(Path(path) / STITCHED_ZARR), (1, side, side), None, n_blocks)
    if DONE_ARRAY not in root:
        create_array(root, DONE_ARRAY, shape=(n_blocks,), chunks=(1,), dtype=bool,
                     fill_value=False)
    for folder in WORK_FILE_DIRS:
        (Path(path) / folder).mkdir(parents=True, exist_ok=True)


def _work_group(path: Path) -> zarr.Group:
    """The Zarr group at ``path``: the one there (resume), else a new v3 group."""
    return zarr.open_group(str(path), mode="r+") if path.exists() else new_group(path, 3)


def _create_labels(group: zarr.Group, chunks: tuple[int, ...],
                   shards: tuple[int, ...] | None, n_blocks: int) -> None:
    """``cell`` and ``nucleus`` ``(n_blocks, h, w)`` uint32 arrays, unless they exist; ``(h, w)``
    is the last two sides of ``shards`` (else of ``chunks``)."""
    height, width = (shards or chunks)[1:]
    for name in COMPARTMENTS:
        if name not in group:
            create_array(group, name, shape=(n_blocks, height, width), chunks=chunks,
                         shards=shards, dtype=np.uint32, fill_value=0, compressor=WORK_COMPRESSOR)


@functools.lru_cache(maxsize=8)
def _open(path: str, mode: str = "r") -> zarr.Group:
    return zarr.open_group(path, mode=mode)


def owned_group(paths: RunPaths) -> zarr.Group:
    """``owned.zarr``: each block's kept objects and ``done`` flags."""
    return zarr.open_group(str(Path(paths.work) / OWNED_ZARR), mode="r+")


def stitched_group(paths: RunPaths) -> zarr.Group:
    """``stitched.zarr``: each core's stitched labels with the repair's margin."""
    return zarr.open_group(str(Path(paths.work) / STITCHED_ZARR), mode="r+")


def block_file(paths: RunPaths, folder: str, block_id: int) -> Path:
    """A block's file in one of the work folder's ``tables``, ``ids`` or ``tallies``."""
    return Path(paths.work) / folder / block_file_name(block_id)


def band_file(paths: RunPaths, patch: LogicalPatch, band: int) -> Path:
    """The file of one matching band of ``patch``."""
    return Path(paths.work) / WORK_BANDS_DIR / band_file_name(patch.index, band)


def save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` as one ``.npz`` file, all or nothing."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_arrays(path: Path, names: Sequence[str]) -> list[np.ndarray]:
    """The arrays ``names`` of a file :func:`save_arrays` wrote."""
    with np.load(path) as saved:
        return [saved[name] for name in names]


def save_tally(path: Path, tally: RepairTally) -> None:
    """Write a core's :class:`~codexdask.repair.matching.RepairTally`."""
    arrays = {field.name: np.asarray(getattr(tally, field.name))
              for field in dataclasses.fields(tally) if field.name != "order"}
    if tally.order is not None:
        arrays.update(order_cell=tally.order[0], order_nucleus=tally.order[1],
                      order_first=tally.order[2])
    save_arrays(path, arrays)


def load_tally(path: Path) -> RepairTally:
    """The tally :func:`save_tally` wrote."""
    with np.load(path) as saved:
        fields = {name: saved[name] if saved[name].ndim else saved[name].item()
                  for name in saved.files if not name.startswith("order_")}
        order = None
        if "order_cell" in saved:
            order = (saved["order_cell"], saved["order_nucleus"], saved["order_first"])
        return RepairTally(**fields, order=order)


def load_band(path: Path) -> BandMatching:
    """A band's matching, as its task wrote it."""
    with np.load(path) as saved:
        return BandMatching(**{field.name: saved[field.name]
                               for field in dataclasses.fields(BandMatching)})


def blocks_done(paths: RunPaths, patch: LogicalPatch, blocks: Sequence[int] | None = None
                ) -> np.ndarray:
    """Which of ``blocks`` (default: all) of ``patch`` are stored: bool, one per block."""
    # only these flags: each is a file, and a patch can have thousands of blocks
    ids = [patch.block_id(b) for b in (patch.grid if blocks is None else blocks)]
    return np.asarray(owned_group(paths)[DONE_ARRAY].get_coordinate_selection(ids), dtype=bool)


def read_raw(paths: RunPaths, patch: LogicalPatch, box: Box) -> np.ndarray:
    """Raw pixels ``(h, w, 2)`` of ``box`` (patch coordinates) from the patch store."""
    image = _open(paths.store)[IMAGE_ARRAY]
    return np.asarray(image[box.shift(patch.box.top, patch.box.left).slices()])
