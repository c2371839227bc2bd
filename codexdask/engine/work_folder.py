"""The work folder of a run of logical patches (``OUT/blocks``): what block tasks hand on.

A block task writes its owned objects, a table of first pixels and then its ``done`` flag; the
numbering task writes each block's global ids; a stitching task writes its core's tally and its
stitched labels with the repair's margin; a band task writes its labels' matching. Every file
is written whole under a temporary name (or, for Zarr chunks, by one task only), so a task that
runs twice writes the same bytes again. The folder is written once and read once, so its labels
use lz4 (fast) where the result store uses zstd (small). Names come from :mod:`codexdask.layout`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
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

__all__ = ["COMPARTMENTS", "RunPaths", "band_file", "block_file", "blocks_done",
           "create_work_folder", "load_arrays", "load_band", "load_tally", "owned_group",
           "read_raw", "save_arrays", "save_tally", "stitched_group"]

#: The two compartments, in label-channel order (whole-cell, nucleus).
COMPARTMENTS = (CELL, NUCLEUS)
#: Side of the chunks of a block's stored window: a neighbour reading the strip of the window
#: that reaches into its core decodes a strip of chunks, not the whole window.
OWNED_CHUNK = 256
#: Compressor of the work folder's labels: written and read once each, so speed over size (lz4
#: encoded 2x and decoded 3x faster than the result store's zstd, at about half its ratio).
WORK_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


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
    kept objects (``h, w`` the largest window; square chunks of :data:`OWNED_CHUNK` px) and
    ``done`` ``(n_blocks,)`` bool is set last for a block. In ``stitched.zarr``, ``cell`` and
    ``nucleus`` ``(n_blocks, s, s)`` uint32 (``s`` = ``block_size`` + 2 x the repair's margin,
    one chunk per block) hold each core's stitched labels with that margin, for the repair.
    """
    root = zarr.open_group(str(Path(path) / OWNED_ZARR), mode="a")
    height, width = window_shape
    _create_labels(root, (n_blocks, height, width),
                   (1, min(height, OWNED_CHUNK), min(width, OWNED_CHUNK)))
    side = block_size + 2 * REPAIR_MARGIN
    _create_labels(zarr.open_group(str(Path(path) / STITCHED_ZARR), mode="a"),
                   (n_blocks, side, side), (1, side, side))
    if DONE_ARRAY not in root:
        root.create_dataset(DONE_ARRAY, shape=(n_blocks,), chunks=(1,), dtype=bool,
                            fill_value=False)
    for folder in WORK_FILE_DIRS:
        (Path(path) / folder).mkdir(parents=True, exist_ok=True)


def _create_labels(group: zarr.Group, shape: tuple[int, int, int],
                   chunks: tuple[int, int, int]) -> None:
    """``cell`` and ``nucleus`` uint32 arrays of the work folder, unless they exist."""
    for name in COMPARTMENTS:
        if name not in group:
            group.create_dataset(name, shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0,
                                 compressor=WORK_COMPRESSOR, write_empty_chunks=False)


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
