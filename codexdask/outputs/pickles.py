"""The two segmentation pickles of a run, streamed one entry at a time.

``original_seg_res_batch.pickle`` and ``matched_seg_res_batch.pickle`` each hold one list whose
k-th entry belongs to the k-th informative patch (the original pipeline's compact lists): dicts of
``(h, w)`` uint32 masks cut to the patch's true size, plus the repair statistics in the matched
list. They are written one entry at a time, never holding the list, and can be compressed.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import math
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zarr

from codexdask.atomic import atomic_path
from codexdask.errors import ConfigError, InputError, StoreError
from codexdask.layout import (
    COUNT_COLUMNS,
    MATCHED_KEYS,
    MATCHED_PICKLE,
    ORIGINAL_KEYS,
    ORIGINAL_PICKLE,
    RATIO_COLUMNS,
    RESULT_STAT_COLUMNS,
    STATS_ARRAY,
    pickle_compression,
    pickle_suffix,
)
from codexdask.outputs.result_store import read_patch_masks, require_done
from codexdask.repair.counts import matching_stats_from_counts

__all__ = [
    "BLOCK_BYTES",
    "StreamedArray",
    "find_seg_res",
    "iter_seg_res",
    "load_seg_res",
    "matched_entry",
    "original_entry",
    "streamed_mask",
    "write_pickle_stream",
    "write_seg_res_pickles",
]


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


#: Largest block of rows an array is pickled from (bytes); blocks are whole rows.
BLOCK_BYTES = 64 * 2**20


class StreamedArray:
    """An array an entry holds by reference: pickled from blocks of rows read on demand.

    ``pickle.load`` returns the plain ``numpy.ndarray``: the bytes written are those of pickling
    the array itself (numpy's ``__reduce__``: ``_reconstruct`` then a state whose raw data is
    written block by block), so memory stays at one block however large the array.

    Parameters
    ----------
    shape : tuple of int
        The array's shape (C order).
    dtype : numpy.dtype
    blocks : callable
        ``blocks()`` yields consecutive blocks of rows (along the first axis) that together
        make the array.
    """

    def __init__(self, shape: Sequence[int], dtype: Any,
                 blocks: Callable[[], Iterable[np.ndarray]]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.blocks = blocks

    @property
    def nbytes(self) -> int:
        """Size of the array's data."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


_PurePythonPickler: Any = pickle._Pickler  # the C pickler cannot be extended per type


class _StreamingPickler(_PurePythonPickler):
    """The pure-Python pickler, writing :class:`StreamedArray` data block by block."""

    dispatch = _PurePythonPickler.dispatch.copy()

    def save_streamed(self, obj: StreamedArray) -> None:
        # numpy's ndarray.__reduce__: _reconstruct(ndarray, (0,), b"b"), then BUILD with the
        # state (1, shape, dtype, False, raw bytes); the bytes object is written in blocks.
        reduced: Any = np.empty(0, dtype=obj.dtype).__reduce__()
        function, arguments, state = reduced
        self.save(function)
        self.save(arguments)
        self.write(pickle.REDUCE)
        self.write(pickle.MARK)
        for item in (state[0], obj.shape, state[2], False):
            self.save(item)
        size = obj.nbytes
        if size <= 0xFF:
            self.write(pickle.SHORT_BINBYTES + struct.pack("<B", size))
        elif size <= 0xFFFFFFFF:
            self.write(pickle.BINBYTES + struct.pack("<I", size))
        else:
            self.write(pickle.BINBYTES8 + struct.pack("<Q", size))
        written = 0
        for block in obj.blocks():
            data = np.ascontiguousarray(block, dtype=obj.dtype).reshape(-1).view(np.uint8)
            self.write(data.data)
            written += data.size
        if written != size:
            raise StoreError(f"an array of {size} bytes was read as {written} bytes while it "
                             "was pickled; the result store changed during the write")
        self.write(pickle.TUPLE)
        self.write(pickle.BUILD)

    dispatch[StreamedArray] = save_streamed


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
    are written; framing is optional in protocol 4. :class:`StreamedArray` values are written
    from their blocks.
    """
    with _open_write(path, compression, level) as fh:
        pickler = _StreamingPickler(fh, protocol=4)
        pickler.fast = True
        fh.write(pickle.PROTO + bytes([4]) + pickle.EMPTY_LIST)
        for entry in entries:
            pickler.save(entry)
            fh.write(pickle.APPEND)
            del entry
        fh.write(pickle.STOP)



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
    comp = pickle_compression(compression)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _dump_list_streamed(tmp, entries, comp, level)
    return path


def _crop(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return mask
    return np.ascontiguousarray(mask[: int(size[0]), : int(size[1])])


def _int_or_zero(value: float) -> int:
    return 0 if math.isnan(value) else int(value)


def _masks(group: zarr.Group, index: int, names: Sequence[str], size: tuple[int, int] | None,
           streamed: bool) -> dict[str, Any]:
    if not streamed:
        return {k: _crop(v, size) for k, v in read_patch_masks(group, index, names).items()}
    return {name: streamed_mask(group[name], index, size) for name in names}


def streamed_mask(array: zarr.Array, index: int, size: tuple[int, int] | None) -> StreamedArray:
    """Mask ``index`` of a result-store array, cut to ``size``, as a :class:`StreamedArray`.

    Blocks are bands of whole rows of at most :data:`BLOCK_BYTES` (and at most one chunk tall).
    """
    height, width = size if size is not None else tuple(array.shape[1:])
    rows = int(max(1, min(array.chunks[1], BLOCK_BYTES // max(1, width * array.dtype.itemsize))))

    def blocks() -> Iterator[np.ndarray]:
        for top in range(0, height, rows):
            yield np.asarray(array[index, top:min(top + rows, height), :width])

    return StreamedArray((height, width), array.dtype, blocks)


def original_entry(group: zarr.Group, index: int, size: tuple[int, int] | None = None,
                   *, streamed: bool = False) -> dict[str, Any]:
    """Patch ``index`` as the seed's segmentation dict: ORIGINAL_KEYS -> (h, w) uint32.

    ``size`` is the patch's true ``(h, w)``; the stored masks are cut to it (None keeps the
    stored ``(H, W)``). ``streamed`` gives :class:`StreamedArray` masks, read while pickled.
    """
    return _masks(group, index, ORIGINAL_KEYS, size, streamed)


def matched_entry(group: zarr.Group, index: int, size: tuple[int, int] | None = None,
                  *, streamed: bool = False) -> dict[str, Any]:
    """Patch ``index`` as a repaired dict (the seed's keys plus the explicit counts and ratios).

    Returns
    -------
    dict
        MATCHED_KEYS -> (h, w) uint32; ``matched_fraction`` float; ``matching_stats`` (nested
        dict from the counts, :func:`~codexdask.repair.masks.matching_stats_from_counts`);
        ``n_cells``, ``n_nuclei``, ``n_matched``, ``n_repaired`` int; ``frac_cells_matched``,
        ``frac_nuclei_matched``, ``match_jaccard`` float.
    """
    entry: dict[str, Any] = _masks(group, index, MATCHED_KEYS, size, streamed)
    values = np.asarray(group[STATS_ARRAY][index], dtype=np.float64).tolist()
    row = dict(zip(RESULT_STAT_COLUMNS, values, strict=True))
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
    sizes: Sequence[tuple[int, int]] | np.ndarray | None = None,
    *,
    streamed: bool = False,
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
    sizes : sequence of (int, int) or (K, 2) int array, optional
        True (height, width) per index to crop to; None keeps (H, W).
    streamed : bool
        Masks as :class:`StreamedArray` (for :func:`write_pickle_stream`), not arrays.
    """
    if kind not in ("original", "matched"):
        raise ConfigError(f"kind must be 'original' or 'matched', got {kind!r}")
    make = original_entry if kind == "original" else matched_entry
    for k, index in enumerate(indices):
        size = None if sizes is None else (int(sizes[k][0]), int(sizes[k][1]))
        yield make(group, int(index), size, streamed=streamed)


def write_seg_res_pickles(
    group: zarr.Group,
    informative_indices: Iterable[int],
    out_dir: str | os.PathLike[str],
    *,
    compression: str | None = "none",
    level: int | None = None,
    sizes: Sequence[tuple[int, int]] | np.ndarray | None = None,
) -> list[Path]:
    """Write ``original_seg_res_batch.pickle{sfx}`` then ``matched_seg_res_batch.pickle{sfx}``.

    Each file is one pickled list (protocol 4; ``pickle.load`` returns it) whose k-th entry
    belongs to the k-th informative patch, streamed one entry at a time so the list is never
    held in memory, and each mask streamed from the store in bands of rows, so memory stays
    bounded however large a patch (a whole slide) is; one file is finished before the next.

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
    sizes : sequence of (int, int) or (K, 2) int array, optional
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
    require_done(group, indices)
    out_dir = Path(out_dir)
    written = []
    for kind, name in (("original", ORIGINAL_PICKLE), ("matched", MATCHED_PICKLE)):
        path = out_dir / f"{name}{suffix}"
        entries = iter_seg_res(group, indices, kind, sizes, streamed=True)
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


