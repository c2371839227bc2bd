"""Everything a segmentation run writes: the result store and the summary files of ``--out DIR``.

Pure I/O: numpy arrays in and out, no Dask graph. Every function works one patch at a time, so
memory stays bounded by a few patches (or a few canvas chunks for the mosaics), never by the slide.

Layout of ``OUT/`` (see the module constants for the names)::

    masks.zarr/                 result store: one (N, H, W) uint32 array per mask, "done", "stats"
    patches_metadata.csv        patch-store metadata + STAT_COLUMNS (NaN for non-informative rows)
    original_seg_res_batch.pickle[.gz|.bz2|.xz|.zst]   reference §4.1, compact informative list
    matched_seg_res_batch.pickle[...]
    mosaics/slide.ome.zarr      whole-slide image + label mosaics (OME-NGFF 0.4, zarr v2)
    mosaics/{exp_id}.{name}.segmentations.ome.tiff     pyramidal OME-TIFF per label mosaic
    overlays/                   a few overlay PNGs (codexdask.viz)
    run_manifest.json           written last: its presence marks a complete run

Summary files are written through :func:`atomic_path`, so a crash never leaves a half-written file
under its final name.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import math
import os
import pickle
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numcodecs
import numpy as np
import pandas as pd
import tifffile
import zarr

from .errors import InputError, OutputExistsError, StoreError

MASK_NAMES = (
    "cell",
    "nucleus",
    "cell_boundary",
    "nucleus_boundary",
    "cell_matched_mask",
    "nucleus_matched_mask",
    "cell_outside_nucleus_mask",
    "cell_matched_boundary",
    "nucleus_matched_boundary",
)
ORIGINAL_KEYS = ("cell", "nucleus", "cell_boundary", "nucleus_boundary")
MATCHED_KEYS = (
    "cell_matched_mask",
    "nucleus_matched_mask",
    "cell_outside_nucleus_mask",
    "cell_matched_boundary",
    "nucleus_matched_boundary",
)
STAT_COLUMNS = (
    "matched_fraction",
    "n_cells",
    "n_nuclei",
    "n_matched",
    "n_repaired",
    "frac_cells_matched",
    "frac_nuclei_matched",
    "match_jaccard",
    "infer_s",
    "postprocess_s",
    "repair_s",
)
COUNT_COLUMNS = ("n_cells", "n_nuclei", "n_matched", "n_repaired")
RATIO_COLUMNS = ("frac_cells_matched", "frac_nuclei_matched", "match_jaccard")

RESULT_STORE_NAME = "masks.zarr"
METADATA_NAME = "patches_metadata.csv"
ORIGINAL_PICKLE = "original_seg_res_batch.pickle"
MATCHED_PICKLE = "matched_seg_res_batch.pickle"
MOSAICS_DIR = "mosaics"
OVERLAYS_DIR = "overlays"
MANIFEST_NAME = "run_manifest.json"

PICKLE_SUFFIXES = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}
_COMPRESSION_ALIASES = {
    "none": "none",
    "": "none",
    "gzip": "gzip",
    "gz": "gzip",
    "bz2": "bz2",
    "bzip2": "bz2",
    "xz": "xz",
    "lzma": "xz",
    "zstd": "zstd",
    "zstandard": "zstd",
    "zst": "zstd",
}

# Mosaic label images in the OME-Zarr (NGFF name -> OME-TIFF mask name, reference §4.3).
MOSAIC_LABELS = {
    "cells": "cell",
    "nuclei": "nucleus",
    "cells_matched": "cell_matched_mask",
    "nuclei_matched": "nucleus_matched_mask",
}
MOSAIC_ZARR_NAME = "slide.ome.zarr"
CANVAS_CHUNK = 512
TIFF_TILE = 512
_LABEL_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)
_IMAGE_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
_UINT32_MAX = int(np.iinfo(np.uint32).max)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` when the block succeeds.

    Parameters
    ----------
    final : path
        Where the file or directory must end up.
    replace_dir : bool
        When the caller wrote a directory and ``final`` already exists, remove ``final`` first.
        Without it an existing directory target raises :class:`OutputExistsError`. Files are
        always replaced (``os.replace``).

    Yields
    ------
    Path
        ``final.parent / f".{final.name}.tmp-{pid}"`` (nothing there yet). Write a file or a
        directory to it. On an exception it is deleted and the exception propagates; if the block
        writes nothing, nothing is renamed.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not (tmp.exists() or tmp.is_symlink()):
        return
    if tmp.is_dir() and final.exists():
        if not replace_dir:
            _remove(tmp)
            raise OutputExistsError(
                f"{final} already exists; remove it or rerun with --overwrite"
            )
        _remove(final)
    os.replace(tmp, final)


# --------------------------------------------------------------------------------------------
# Result store
# --------------------------------------------------------------------------------------------


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """Open ``group[name]`` with ``write_empty_chunks=False`` (a runtime option, not stored)."""
    path = f"{group.path}/{name}" if group.path else name
    return zarr.Array(group.store, path=path, write_empty_chunks=False)


def create_result_store(
    path: str | os.PathLike[str],
    n_patches: int,
    patch_shape: Sequence[int],
    *,
    patch_store: str | os.PathLike[str],
    overwrite: bool = False,
) -> zarr.Group:
    """Create an empty result store (``OUT/masks.zarr``).

    Parameters
    ----------
    path : path
        Directory of the new zarr v2 group.
    n_patches : int
        N, the number of patches of the patch store (informative or not).
    patch_shape : (int, int)
        (H, W) of one (padded) patch.
    patch_store : path
        The patch store the results belong to; recorded as an absolute path.
    overwrite : bool
        Replace an existing store instead of raising :class:`OutputExistsError`.

    Returns
    -------
    zarr.Group
        Holding the nine ``MASK_NAMES`` arrays (N, H, W) uint32 chunked (1, H, W), fill 0,
        Blosc zstd + bitshuffle; ``done`` (N,) bool; ``stats`` (N, len(STAT_COLUMNS)) float64,
        fill NaN. ``attrs["codexdask"]`` describes the store.
    """
    path = Path(path)
    n = int(n_patches)
    h, w = (int(v) for v in patch_shape)
    if n < 0 or h < 1 or w < 1:
        raise InputError(f"result store needs n_patches >= 0 and a positive patch shape, got "
                         f"{n_patches}, {tuple(patch_shape)}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; rerun with --resume or --overwrite")
    group = zarr.open_group(str(path), mode="w")
    for name in MASK_NAMES:
        group.create_dataset(
            name, shape=(n, h, w), chunks=(1, h, w), dtype=np.uint32, fill_value=0,
            compressor=_LABEL_COMPRESSOR, write_empty_chunks=False,
        )
    group.create_dataset("done", shape=(n,), chunks=(1,), dtype=bool, fill_value=False)
    group.create_dataset(
        "stats", shape=(n, len(STAT_COLUMNS)), chunks=(1, len(STAT_COLUMNS)), dtype=np.float64,
        fill_value=np.nan,
    )
    group.attrs["codexdask"] = {
        "kind": "result-store",
        "version": 1,
        "n_patches": n,
        "patch_shape": [h, w],
        "patch_store": os.path.abspath(os.fspath(patch_store)),
        "mask_names": list(MASK_NAMES),
        "stat_columns": list(STAT_COLUMNS),
    }
    return group


def open_result_store(path: str | os.PathLike[str], *, mode: str = "r+") -> zarr.Group:
    """Open a result store written by :func:`create_result_store`.

    Raises
    ------
    StoreError
        When ``path`` is missing, is not a zarr group written by codexdask, or lacks an array.
    """
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"no result store at {path}; run `codexdask segment` to create it")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise StoreError(f"{path} is not a zarr group ({exc}); point at OUT/{RESULT_STORE_NAME}")\
            from exc
    info = group.attrs.get("codexdask")
    if not isinstance(info, dict) or info.get("kind") != "result-store":
        raise StoreError(f"{path} was not written by codexdask segment (no result-store "
                         "attributes); choose another output directory")
    missing = [name for name in (*MASK_NAMES, "done", "stats") if name not in group]
    if missing:
        raise StoreError(f"result store {path} lacks arrays {missing}; rerun with --overwrite")
    return group


def _as_stats_row(stats: np.ndarray | Mapping[str, float]) -> np.ndarray:
    if isinstance(stats, Mapping):
        unknown = set(stats) - set(STAT_COLUMNS)
        if unknown:
            raise InputError(f"unknown stats {sorted(unknown)}; known: {list(STAT_COLUMNS)}")
        return np.array([stats.get(c, np.nan) for c in STAT_COLUMNS], dtype=np.float64)
    row = np.asarray(stats, dtype=np.float64)
    if row.shape != (len(STAT_COLUMNS),):
        raise InputError(f"stats must have shape ({len(STAT_COLUMNS)},) in STAT_COLUMNS order, "
                         f"got {row.shape}")
    return row


def _as_uint32(name: str, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == np.uint32:
        return mask
    if mask.dtype.kind not in "iub":
        raise InputError(f"mask {name!r} must hold integer labels, got dtype {mask.dtype}")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > _UINT32_MAX):
        raise InputError(f"mask {name!r} has labels outside the uint32 range")
    return mask.astype(np.uint32)


def write_patch_result(
    group: zarr.Group,
    index: int,
    masks: Mapping[str, np.ndarray],
    stats: np.ndarray | Mapping[str, float],
) -> None:
    """Write patch ``index``'s nine masks, then its stats row, then ``done[index] = True``.

    The order matters for resume: ``done`` is set only once everything else is on disk.

    Parameters
    ----------
    group : zarr.Group
        The result store.
    index : int
        Patch index i in the patch store.
    masks : mapping
        At least every name in ``MASK_NAMES`` -> (H, W) integer labels (cast to uint32).
    stats : ndarray or mapping
        (len(STAT_COLUMNS),) float64 in ``STAT_COLUMNS`` order, or a mapping column -> value
        (absent columns are NaN).
    """
    missing = [name for name in MASK_NAMES if name not in masks]
    if missing:
        raise InputError(f"patch {index}: masks {missing} missing; pass all of {MASK_NAMES}")
    shape = tuple(group[MASK_NAMES[0]].shape[1:])
    row = _as_stats_row(stats)
    checked = {}
    for name in MASK_NAMES:
        mask = _as_uint32(name, masks[name])
        if mask.shape != shape:
            raise InputError(f"patch {index}: mask {name!r} has shape {mask.shape}, the store "
                             f"holds {shape}")
        checked[name] = mask
    for name, mask in checked.items():
        _array(group, name)[index] = mask
    group["stats"][index] = row
    group["done"][index] = True


def read_patch_masks(
    group: zarr.Group, index: int, names: Sequence[str] = MASK_NAMES
) -> dict[str, np.ndarray]:
    """Read patch ``index``'s masks: ``{name: (H, W) uint32}`` for each of ``names``."""
    return {name: np.asarray(group[name][index]) for name in names}


def read_stats_table(group: zarr.Group) -> pd.DataFrame:
    """The stats of every patch as a table.

    Returns
    -------
    pandas.DataFrame
        N rows (RangeIndex = patch index), float64 columns ``STAT_COLUMNS`` and a bool column
        ``done``. Rows that are not done are all NaN, even if a crash left a stats row behind.
    """
    done = np.asarray(group["done"][:], dtype=bool)
    stats = np.asarray(group["stats"][:], dtype=np.float64).reshape(len(done), len(STAT_COLUMNS))
    stats[~done] = np.nan
    table = pd.DataFrame(stats, columns=list(STAT_COLUMNS))
    table["done"] = done
    return table


# --------------------------------------------------------------------------------------------
# Segmentation pickles (reference §4.1), streamed
# --------------------------------------------------------------------------------------------


def normalize_compression(compression: str | None) -> str:
    """Map a compression name or alias (case-insensitive) to none/gzip/bz2/xz/zstd."""
    key = (compression or "none").strip().lower()
    if key not in _COMPRESSION_ALIASES:
        raise InputError(f"unknown pickle compression {compression!r}; use one of "
                         f"{list(PICKLE_SUFFIXES)}")
    return _COMPRESSION_ALIASES[key]


@contextlib.contextmanager
def _open_write(path: Path, compression: str, level: int | None) -> Iterator[BinaryIO]:
    with contextlib.ExitStack() as stack:
        fh: Any
        if compression == "none":
            fh = open(path, "wb")  # noqa: SIM115
        elif compression == "gzip":
            fh = gzip.open(path, "wb", compresslevel=6 if level is None else level)
        elif compression == "bz2":
            fh = bz2.open(path, "wb", compresslevel=9 if level is None else level)
        elif compression == "xz":
            fh = lzma.open(path, "wb", preset=level)
        else:
            import zstandard

            raw = stack.enter_context(open(path, "wb"))  # noqa: SIM115
            cctx = zstandard.ZstdCompressor(level=3 if level is None else level)
            fh = cctx.stream_writer(raw, closefd=False)
        stack.enter_context(fh)
        yield fh


def _dump_list_streamed(path: Path, entries: Iterable[Any], compression: str,
                        level: int | None) -> None:
    """Pickle ``entries`` to ``path`` as ONE list, holding a single entry at a time.

    ``pickle.dump(list)`` needs the whole list in memory. Instead we emit the opcodes that
    ``pickle.dump`` would emit for a list, by hand: ``PROTO 4``, ``EMPTY_LIST``, then per entry
    the entry's own opcodes followed by ``APPEND`` (pop the entry, append it to the list below it
    on the unpickler's stack), then ``STOP``. ``pickle.load`` thus returns the complete list.
    The entry opcodes come from the pure-Python ``pickle._Pickler.save`` (the C pickler exposes
    only ``dump``, which would wrap every entry in its own PROTO ... STOP). The pickler runs in
    fast mode (``fast = True``): no memo, so (a) the opcodes of each entry are self-contained,
    never referring to memo slots of earlier entries, and (b) the pickler keeps no reference to
    the objects it has written (a memo would keep every entry, i.e. the whole list, alive).
    Entries must not be self-referencing (ours are dicts of arrays and numbers). No FRAME opcodes
    are written; framing is optional in protocol 4.
    """
    with _open_write(path, compression, level) as fh:
        pickler: Any = pickle._Pickler(fh, protocol=4)
        pickler.fast = True
        fh.write(pickle.PROTO + bytes([4]) + pickle.EMPTY_LIST)
        for entry in entries:
            pickler.save(entry)
            fh.write(pickle.APPEND)
            del entry
        fh.write(pickle.STOP)


def pickle_suffix(compression: str | None) -> str:
    """Suffix of a pickle compression: none "", gzip ".gz", bz2 ".bz2", xz ".xz", zstd ".zst"."""
    return PICKLE_SUFFIXES[normalize_compression(compression)]


def write_pickle_stream(
    path: str | os.PathLike[str],
    entries: Iterable[Any],
    *,
    compression: str | None = "none",
    level: int | None = None,
) -> Path:
    """Pickle ``entries`` (any iterable, e.g. a generator) as one list at ``path``, streamed.

    Protocol 4; ``pickle.load`` returns ``list(entries)``. Only one entry is in memory at a time
    (when ``entries`` is a generator). Written atomically.

    Parameters
    ----------
    path : path
        The file, suffix included (see :func:`pickle_suffix`).
    entries : iterable
        Picklable, non-self-referencing objects (dicts of arrays and numbers).
    compression : {"none", "gzip", "bz2", "xz", "zstd"} or an alias (gz, bzip2, lzma, zst, ...)
    level : int, optional
        gzip/bz2 compresslevel, xz preset, zstd level; None = gzip 6, bz2 9, xz 6, zstd 3.
    """
    comp = normalize_compression(compression)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _dump_list_streamed(tmp, entries, comp, level)
    return path


def _check_done(group: zarr.Group, indices: Sequence[int]) -> None:
    done = np.asarray(group["done"][:], dtype=bool)
    n = len(done)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise InputError(f"patch indices {bad[:5]} outside the result store (N={n})")
    missing = [i for i in indices if not done[i]]
    if missing:
        raise StoreError(f"informative patches {missing[:10]} have no results yet; rerun "
                         "`codexdask segment` with --resume to finish them")


def _crop(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return mask
    return np.ascontiguousarray(mask[: int(size[0]), : int(size[1])])


def _int_or_zero(value: float) -> int:
    return 0 if math.isnan(value) else int(value)


def original_entry(group: zarr.Group, index: int,
                   size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Patch ``index`` as a reference §1.7 dict: ORIGINAL_KEYS -> (h, w) uint32."""
    return {k: _crop(v, size) for k, v in read_patch_masks(group, index, ORIGINAL_KEYS).items()}


def matched_entry(group: zarr.Group, index: int,
                  size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Patch ``index`` as a repaired dict (reference §2.5 plus the explicit counts and ratios).

    Returns
    -------
    dict
        MATCHED_KEYS -> (h, w) uint32; ``matched_fraction`` float; ``matching_stats`` (§2.7
        nested dict, from the counts); ``n_cells``, ``n_nuclei``, ``n_matched``, ``n_repaired``
        int; ``frac_cells_matched``, ``frac_nuclei_matched``, ``match_jaccard`` float.
    """
    from .repair import matching_stats_from_counts

    entry: dict[str, Any] = {
        k: _crop(v, size) for k, v in read_patch_masks(group, index, MATCHED_KEYS).items()
    }
    values = np.asarray(group["stats"][index], dtype=np.float64).tolist()
    row = dict(zip(STAT_COLUMNS, values, strict=True))
    counts = {c: _int_or_zero(row[c]) for c in COUNT_COLUMNS}
    entry["matched_fraction"] = float(row["matched_fraction"])
    entry["matching_stats"] = matching_stats_from_counts(
        counts["n_cells"], counts["n_nuclei"], counts["n_matched"]
    )
    entry.update(counts)
    entry.update({c: float(row[c]) for c in RATIO_COLUMNS})
    return entry


def iter_seg_res(
    group: zarr.Group,
    indices: Iterable[int],
    kind: str,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the seg-res dicts of patches ``indices`` one at a time.

    Parameters
    ----------
    group : zarr.Group
        The result store (the patches must be done).
    indices : iterable of int
        Patch indices (usually the informative ones, in order).
    kind : {"original", "matched"}
        :func:`original_entry` or :func:`matched_entry` dicts.
    sizes : sequence of (int, int), optional
        True (height, width) per index to crop to; None keeps (H, W).
    """
    if kind not in ("original", "matched"):
        raise InputError(f"kind must be 'original' or 'matched', got {kind!r}")
    make = original_entry if kind == "original" else matched_entry
    for k, index in enumerate(indices):
        size = None if sizes is None else (int(sizes[k][0]), int(sizes[k][1]))
        yield make(group, int(index), size)


def write_seg_res_pickles(
    group: zarr.Group,
    informative_indices: Iterable[int],
    out_dir: str | os.PathLike[str],
    *,
    compression: str | None = "none",
    level: int | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[Path]:
    """Write ``original_seg_res_batch.pickle{sfx}`` then ``matched_seg_res_batch.pickle{sfx}``.

    Each file is one pickled list (protocol 4; ``pickle.load`` returns it) whose k-th entry
    belongs to the k-th informative patch (reference §1.8), streamed one entry at a time so the
    list is never held in memory; one file is finished before the next is started.

    Parameters
    ----------
    group : zarr.Group
        The result store; every index in ``informative_indices`` must be done.
    informative_indices : sequence of int
        Patch indices of the informative patches, in patch order.
    out_dir : path
        Directory receiving the two files (written atomically).
    compression : {"none", "gzip", "bz2", "xz", "zstd"} or an alias (gz, bzip2, lzma, zst, ...)
        Suffix "", ".gz", ".bz2", ".xz", ".zst".
    level : int, optional
        gzip/bz2 compresslevel, xz preset, zstd level; None = gzip 6, bz2 9, xz 6, zstd 3.
    sizes : sequence of (int, int), optional
        True (height, width) of each informative patch, same order; masks are cropped to it.
        None keeps the stored (H, W).

    Returns
    -------
    list of Path
        [original file, matched file].
    """
    suffix = pickle_suffix(compression)
    indices = [int(i) for i in informative_indices]
    if sizes is not None and len(sizes) != len(indices):
        raise InputError(f"sizes has {len(sizes)} entries for {len(indices)} informative patches")
    _check_done(group, indices)
    out_dir = Path(out_dir)
    written = []
    for kind, name in (("original", ORIGINAL_PICKLE), ("matched", MATCHED_PICKLE)):
        path = out_dir / f"{name}{suffix}"
        entries = iter_seg_res(group, indices, kind, sizes)
        written.append(write_pickle_stream(path, entries, compression=compression, level=level))
    return written


def _open_read(path: Path) -> Any:
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.BufferedReader(reader)
    return open(path, "rb")  # noqa: SIM115


def find_seg_res(path: str | os.PathLike[str]) -> Path:
    """Resolve a pickle path: ``path`` itself, else ``path`` + .zst/.gz/.bz2/.xz (first found)."""
    path = Path(path)
    if path.is_file():
        return path
    for suffix in (".zst", ".gz", ".bz2", ".xz"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    raise StoreError(f"no segmentation pickle at {path}[.zst|.gz|.bz2|.xz]; run "
                     "`codexdask segment` (pickles are written at the end of a run)")


def load_seg_res(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load a seg-res pickle of any compression (chosen from the suffix).

    ``path`` may omit the compression suffix (see :func:`find_seg_res`). Returns the list.
    """
    with _open_read(find_seg_res(path)) as fh:
        return pickle.load(fh)


# --------------------------------------------------------------------------------------------
# Metadata, manifest
# --------------------------------------------------------------------------------------------


def write_metadata_csv(
    metadata: pd.DataFrame, stats: pd.DataFrame | None, path: str | os.PathLike[str]
) -> pd.DataFrame:
    """Write the patch metadata plus the per-patch stats as ``patches_metadata.csv``.

    Parameters
    ----------
    metadata : DataFrame
        N rows (patch order) with a bool ``is_informative`` column (the patch store's metadata).
        Existing STAT_COLUMNS are replaced when ``stats`` is given.
    stats : DataFrame or None
        N rows with ``STAT_COLUMNS`` (e.g. :func:`read_stats_table`). None writes ``metadata``
        unchanged.
    path : path
        Output CSV, written atomically with ``index=False``.

    Returns
    -------
    DataFrame
        The table written (RangeIndex).

    Notes
    -----
    Non-informative rows get NaN (an empty CSV cell) in every stat column. Count columns are
    written as integers (nullable ``Int64``), the rest as floats.
    """
    out = metadata.reset_index(drop=True)
    if stats is not None:
        if len(metadata) != len(stats):
            raise InputError(f"metadata has {len(metadata)} rows but stats has {len(stats)}")
        if "is_informative" not in metadata.columns:
            raise InputError("metadata lacks the is_informative column; pass the patch store "
                             "metadata")
        missing = [c for c in STAT_COLUMNS if c not in stats.columns]
        if missing:
            raise InputError(f"stats lacks columns {missing}")
        out = out.drop(columns=[c for c in STAT_COLUMNS if c in out.columns])
        values = stats.loc[:, list(STAT_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
        informative = out["is_informative"].astype(bool).to_numpy()
        values[~informative] = np.nan
        table = pd.DataFrame(values, columns=list(STAT_COLUMNS))
        for column in COUNT_COLUMNS:
            table[column] = table[column].round().astype("Int64")
        out = pd.concat([out, table], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return out


def write_manifest(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``out_dir/run_manifest.json`` atomically (json, indent 2, ``default=str``)."""
    path = Path(out_dir) / MANIFEST_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(manifest), indent=2, default=str) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Whole-slide mosaics
# --------------------------------------------------------------------------------------------


class PatchStoreLike(Protocol):
    """What :func:`write_mosaics` needs from a patch store (``patches.open_patch_store``)."""

    @property
    def patches(self) -> Any:
        """(N, H, W, 2) zarr array: nucleus, whole-cell."""

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per patch with x_start, y_start, height, width, is_informative."""

    @property
    def attrs(self) -> Mapping[str, Any]:
        """Store facts: padded_shape, image_mpp, nucleus_channel, wholecell_channels."""


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Level shapes of a 2x striding pyramid (reference §4.3).

    A level is added while both sides of the current one are >= 512 and the new one is >= 256
    on both sides: 1200x1200 -> 600x600 -> 300x300.
    """
    shapes = [(int(height), int(width))]
    while min(shapes[-1]) >= 512:
        h, w = shapes[-1]
        nxt = ((h + 1) // 2, (w + 1) // 2)
        if min(nxt) < 256:
            break
        shapes.append(nxt)
    return shapes


def _create_level(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any,
                  compressor: Any) -> zarr.Array:
    chunks = (1,) + tuple(min(CANVAS_CHUNK, s) or 1 for s in shape[1:])
    return group.create_dataset(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressor=compressor,
        write_empty_chunks=False, dimension_separator="/",
    )


def _downsample(src: zarr.Array, dst: zarr.Array) -> None:
    """dst = src[:, ::2, ::2], one destination block (CANVAS_CHUNK²) at a time."""
    _, h, w = dst.shape
    step = CANVAS_CHUNK
    for y in range(0, h, step):
        for x in range(0, w, step):
            y1, x1 = min(y + step, h), min(x + step, w)
            block = src[:, 2 * y : 2 * y1 : 2, 2 * x : 2 * x1 : 2]
            if block.any():
                dst[:, y:y1, x:x1] = block


def _multiscales(name: str, n_levels: int, mpp: float) -> list[dict]:
    """NGFF 0.4 ``multiscales`` for (c, y, x) levels 0..n_levels-1, each 2x the previous."""
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, mpp * 2**level, mpp * 2**level]}
            ],
        }
        for level in range(n_levels)
    ]
    return [{
        "version": "0.4",
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"method": "numpy striding [::2, ::2]"},
    }]


def _placements(metadata: pd.DataFrame, canvas: tuple[int, int],
                patch_shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of every patch, cropped to its true size and to the canvas."""
    needed = ["x_start", "y_start", "height", "width", "is_informative"]
    missing = [c for c in needed if c not in metadata.columns]
    if missing:
        raise StoreError(f"patch store metadata lacks {missing}; rewrite it with `codexdask patch`")
    out = []
    for y, x, h, w in metadata[["y_start", "x_start", "height", "width"]].itertuples(index=False):
        y, x = max(int(y), 0), max(int(x), 0)
        h = max(min(int(h), patch_shape[0], canvas[0] - y), 0)
        w = max(min(int(w), patch_shape[1], canvas[1] - x), 0)
        out.append((y, x, h, w))
    return out


def _paste_labels(canvas: zarr.Array, labels: np.ndarray, y: int, x: int, offset: int) -> None:
    """Shift non-zero ``labels`` by offset - 1 and write them where ``canvas`` is still 0."""
    h, w = labels.shape
    if h == 0 or w == 0 or not labels.any():
        return
    if offset - 1 + int(labels.max()) > _UINT32_MAX:
        raise StoreError("the slide has more than 2^32 - 1 labels; the uint32 mosaics cannot "
                         "hold them")
    region = np.asarray(canvas[0, y : y + h, x : x + w])
    write = (region == 0) & (labels > 0)
    if not write.any():
        return
    region[write] = labels[write] + np.uint32(offset - 1)
    canvas[0, y : y + h, x : x + w] = region


def _tiles(level: zarr.Array, tile: int = TIFF_TILE) -> Iterator[np.ndarray]:
    """Yield the (tile, tile) tiles of ``level[0]`` in row-major order (edge tiles smaller).

    Reads one band of ``tile`` rows by CANVAS_CHUNK columns at a time.
    """
    _, h, w = level.shape
    band = max(CANVAS_CHUNK // tile, 1) * tile
    for y in range(0, h, tile):
        for xb in range(0, w, band):
            block = np.asarray(level[0, y : y + tile, xb : xb + band])
            for x in range(0, block.shape[1], tile):
                yield np.ascontiguousarray(block[:, x : x + tile])


def _write_ome_tiff(path: Path, levels: Sequence[zarr.Array], name: str, mpp: float) -> None:
    """Pyramidal OME-TIFF (BigTIFF, uint32, zlib, 512² tiles, SubIFD levels), tile by tile."""
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": [name]},
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, level in enumerate(levels):
            tif.write(
                _tiles(level),
                shape=tuple(level.shape),
                dtype=np.uint32,
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                photometric="minisblack",
                subifds=len(levels) - 1 if k == 0 else None,
                subfiletype=0 if k == 0 else 1,
                metadata=metadata if k == 0 else None,
            )


def write_mosaics(
    group: zarr.Group,
    patch_store: PatchStoreLike,
    out_dir: str | os.PathLike[str],
    *,
    exp_id: str = "codexdask",
    image_mpp: float | None = None,
) -> dict[str, Path]:
    """Whole-slide mosaics of the image and of the cell / nucleus labels (original and matched).

    Canvas: the patch store's ``padded_shape`` (He, We). Patches are placed at (y_start,
    x_start) cropped to their true (height, width); labels come from informative patches only,
    in patch order, with the reference §4.3 running offset: a patch's non-zero labels are shifted
    by offset - 1 (offset starts at 1), then offset += that patch's maximum label, and pixels are
    written only where the canvas is still 0 (the first patch wins on overlap). ``cell`` and
    ``nucleus`` have independent offsets; ``cell_matched_mask`` and ``nucleus_matched_mask``
    share one (advanced by the larger maximum of the two), so matched pairs keep equal IDs.

    Written under ``out_dir/mosaics/`` (built in a temporary sibling, then renamed; an existing
    ``mosaics/`` is replaced):

    - ``slide.ome.zarr``: OME-NGFF 0.4 (zarr v2) image (2, He, We) (nucleus, whole-cell; the
      patch store dtype) with ``labels/{cells,nuclei,cells_matched,nuclei_matched}``, each
      (1, He, We) uint32 with the same number of levels as the image;
    - ``{exp_id}.{name}.segmentations.ome.tiff`` for name in cell, nucleus, cell_matched_mask,
      nucleus_matched_mask: pyramidal OME-TIFF of the same levels.

    Every level is a 2x nearest-neighbour striding of the one above (:func:`pyramid_shapes`).
    Memory: one patch plus one canvas block at a time.

    Parameters
    ----------
    group : zarr.Group
        The result store; every informative patch must be done.
    patch_store : PatchStore
        ``.patches`` (N, H, W, 2), ``.metadata`` (x_start, y_start, height, width,
        is_informative), ``.attrs`` (padded_shape, optionally image_mpp and channel names).
    out_dir : path
        The run's output directory.
    exp_id : str
        Base name of the OME-TIFF files.
    image_mpp : float, optional
        Microns per pixel (PhysicalSizeX/Y and NGFF scale); default the store's ``image_mpp``.

    Returns
    -------
    dict
        ``{"ome_zarr": Path, "cell": Path, "nucleus": Path, "cell_matched_mask": Path,
        "nucleus_matched_mask": Path}`` (final paths).
    """
    attrs = dict(patch_store.attrs)
    if "padded_shape" not in attrs:
        raise StoreError("patch store attributes lack padded_shape; rewrite it with "
                         "`codexdask patch`")
    mpp = float(image_mpp if image_mpp is not None else attrs.get("image_mpp") or 0.5)
    canvas_shape = (int(attrs["padded_shape"][0]), int(attrs["padded_shape"][1]))
    metadata = patch_store.metadata.reset_index(drop=True)
    n, ph, pw = (int(v) for v in group[MASK_NAMES[0]].shape)
    if len(metadata) != n or int(patch_store.patches.shape[0]) != n:
        raise StoreError(f"result store has {n} patches but the patch store has "
                         f"{len(metadata)}; use the patch store the run was made from")
    placements = _placements(metadata, canvas_shape, (ph, pw))
    informative = [i for i, flag in enumerate(metadata["is_informative"].astype(bool)) if flag]
    _check_done(group, informative)
    shapes = pyramid_shapes(*canvas_shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MOSAICS_DIR

    with atomic_path(final, replace_dir=True) as tmp:
        tmp.mkdir()
        root = zarr.open_group(str(tmp / MOSAIC_ZARR_NAME), mode="w")
        image_levels = [
            _create_level(root, str(k), (2, *s), patch_store.patches.dtype, _IMAGE_COMPRESSOR)
            for k, s in enumerate(shapes)
        ]
        labels_root = root.create_group("labels")
        label_levels: dict[str, list[zarr.Array]] = {}
        for label in MOSAIC_LABELS:
            lg = labels_root.create_group(label)
            label_levels[label] = [
                _create_level(lg, str(k), (1, *s), np.uint32, _LABEL_COMPRESSOR)
                for k, s in enumerate(shapes)
            ]

        # Level 0: one patch at a time.
        image0 = image_levels[0]
        window = [0.0, 0.0]  # display maximum per channel: max over patches of the 99.9th pct
        offsets = {"cells": 1, "nuclei": 1, "matched": 1}
        informative_set = set(informative)
        for i, (y, x, h, w) in enumerate(placements):
            if h == 0 or w == 0:
                continue
            patch = np.asarray(patch_store.patches[i, :h, :w, :])
            image0[:, y : y + h, x : x + w] = np.moveaxis(patch, -1, 0)
            for c in range(2):
                sample = patch[::4, ::4, c]  # a display window needs no exact percentile
                window[c] = max(window[c], float(np.percentile(sample, 99.9)))
            if i not in informative_set:
                continue
            for label, key in (("cells", "cell"), ("nuclei", "nucleus")):
                mask = np.asarray(group[key][i, :h, :w])
                _paste_labels(label_levels[label][0], mask, y, x, offsets[label])
                offsets[label] += int(mask.max(initial=0))
            pair = {key: np.asarray(group[key][i, :h, :w])
                    for key in ("cell_matched_mask", "nucleus_matched_mask")}
            for label, key in (("cells_matched", "cell_matched_mask"),
                               ("nuclei_matched", "nucleus_matched_mask")):
                _paste_labels(label_levels[label][0], pair[key], y, x, offsets["matched"])
            offsets["matched"] += max(int(m.max(initial=0)) for m in pair.values())

        # Lower levels by striding, then metadata.
        for levels in (image_levels, *label_levels.values()):
            for k in range(1, len(levels)):
                _downsample(levels[k - 1], levels[k])
        channels = [str(attrs.get("nucleus_channel", "nucleus")),
                    "+".join(attrs.get("wholecell_channels", [])) or "whole-cell"]
        root.attrs["multiscales"] = _multiscales("slide", len(shapes), mpp)
        max_value = int(np.iinfo(patch_store.patches.dtype).max) \
            if np.issubdtype(patch_store.patches.dtype, np.integer) else 1
        root.attrs["omero"] = {
            "name": "slide",
            "version": "0.4",
            "channels": [
                {"label": label, "color": color, "active": True, "coefficient": 1,
                 "family": "linear", "inverted": False,
                 "window": {"min": 0, "max": max_value, "start": 0, "end": end or max_value}}
                for label, color, end in zip(channels, ("0000FF", "00FF00"), window, strict=True)
            ],
            "rdefs": {"model": "color"},
        }
        labels_root.attrs["labels"] = list(MOSAIC_LABELS)
        for label in MOSAIC_LABELS:
            lg = labels_root[label]
            lg.attrs["multiscales"] = _multiscales(label, len(shapes), mpp)
            lg.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}

        for label, name in MOSAIC_LABELS.items():
            _write_ome_tiff(tmp / f"{exp_id}.{name}.segmentations.ome.tiff",
                            label_levels[label], name, mpp)

    paths = {"ome_zarr": final / MOSAIC_ZARR_NAME}
    for name in MOSAIC_LABELS.values():
        paths[name] = final / f"{exp_id}.{name}.segmentations.ome.tiff"
    return paths
