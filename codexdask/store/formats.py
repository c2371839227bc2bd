"""The Zarr formats of the stores codexdask writes: Zarr v3 by default, v2 on request.

Every new store (patch store, result store, mosaics) is a Zarr v3 group unless ``zarr_format=2``
is asked for (``--zarr-format 2``, for readers that only know v2; the work folder, read only by
codexdask, is always v3); stores of either format are read, and a resumed run keeps its result
store's format (``docs/architecture.md``, "Store formats"). Arrays are created through
:func:`create_array`, which picks the codecs of the group's format, so callers name a
compressor once (:class:`Blosc`).

Sharding (v3 only) packs many chunks into one file. zarr-python has no locking: two processes
that write chunks of one shard at the same time lose one of the writes. So an array is sharded
only where a single writer fills every chunk of a shard: the mosaics (written by one process)
and the inner chunks of one task's write unit (:func:`unit_shards`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numcodecs
import zarr
from zarr.codecs import BloscCodec

from codexdask.config import DEFAULT_ZARR_FORMAT, ZARR_FORMATS, check_zarr_format

__all__ = ["DEFAULT_ZARR_FORMAT", "ZARR_FORMATS", "Blosc", "create_array", "new_group",
           "unit_shards", "writer", "zarr_format_of"]


@dataclass(frozen=True)
class Blosc:
    """A Blosc compressor with byte shuffle, in either format's spelling.

    >>> Blosc("zstd", 1).codec(2)
    Blosc(cname='zstd', clevel=1, shuffle=SHUFFLE, blocksize=0)
    """

    cname: str
    clevel: int

    def codec(self, zarr_format: int) -> Any:
        """numcodecs' Blosc for Zarr v2, zarr's ``BloscCodec`` for v3."""
        if zarr_format == 2:
            return numcodecs.Blosc(cname=self.cname, clevel=self.clevel,
                                   shuffle=numcodecs.Blosc.SHUFFLE)
        return BloscCodec(cname=self.cname, clevel=self.clevel, shuffle="shuffle")


def new_group(path: str | os.PathLike[str], zarr_format: int) -> zarr.Group:
    """A new, empty Zarr group of ``zarr_format`` at ``path`` (replacing what is there)."""
    return zarr.open_group(os.fspath(path), mode="w", zarr_format=check_zarr_format(zarr_format))


def zarr_format_of(node: zarr.Group | zarr.Array) -> int:
    """The Zarr format (2 or 3) a group or array is stored in."""
    return int(node.metadata.zarr_format)


def create_array(
    group: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    fill_value: Any,
    compressor: Blosc | None = None,
    shards: tuple[int, ...] | None = None,
    dimension_names: tuple[str, ...] | None = None,
    store_empty_chunks: bool = False,
) -> zarr.Array:
    """Create ``group[name]`` in the group's format.

    Parameters
    ----------
    shape, chunks : tuple of int
        The array's shape and its (inner) chunks.
    dtype, fill_value
        As for ``zarr.Group.create_array``; unwritten and all-fill chunks are not stored.
    compressor : Blosc, optional
        zarr's default compressor when omitted.
    shards : tuple of int, optional
        Shard shape, a multiple of ``chunks`` (Zarr v3 only; ignored for v2).
    dimension_names : tuple of str, optional
        Names of the axes (Zarr v3 only; OME-Zarr 0.5 asks for them).
    store_empty_chunks : bool
        Store chunks that hold only ``fill_value`` too, through the returned array object (a
        runtime option, not saved). zarr 3 checks every chunk written for it at ~1.5 ms per MiB,
        which a writer that skips empty blocks itself need not pay.

    Notes
    -----
    Chunk keys use ``/`` in both formats (``c/0/1`` in v3, ``0/1`` in v2), as OME-Zarr asks.
    """
    fmt = zarr_format_of(group)
    options: dict[str, Any] = {}
    if compressor is not None:
        options["compressors"] = compressor.codec(fmt)
    if fmt == 2:
        options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        if shards is not None and tuple(shards) != tuple(chunks):
            options["shards"] = tuple(int(s) for s in shards)
        if dimension_names is not None:
            options["dimension_names"] = tuple(dimension_names)
    return group.create_array(name, shape=tuple(int(s) for s in shape),
                              chunks=tuple(int(c) for c in chunks), dtype=dtype,
                              fill_value=fill_value,
                              config={"write_empty_chunks": store_empty_chunks}, **options)


def writer(array: zarr.Array) -> zarr.Array:
    """``array`` for writing labels: chunks of zeros are stored as they come.

    zarr 3 otherwise checks every chunk written for its fill value, at ~1.5 ms per MiB (more than
    Blosc takes to compress it); a chunk of zeros compresses to a few dozen bytes. Writing the
    zeros (rather than skipping them) also replaces whatever an earlier attempt left there.
    """
    return array.with_config({"write_empty_chunks": True})


def unit_shards(unit: tuple[int, ...], inner: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(chunks, shards)`` for arrays that one task writes ``unit`` at a time.

    The shard is the write unit, so no two tasks ever write one file; along each of the last
    two axes the unit is cut into inner chunks of the largest divisor of its side that is at
    most ``inner`` and at least ``inner // 2`` (so a reader of a window decodes only the
    chunks it needs). A side without such a divisor stays whole.

    >>> unit_shards((1, 2048, 2048), 512)
    ((1, 512, 512), (1, 2048, 2048))
    >>> unit_shards((1, 600, 700), 512)
    ((1, 300, 350), (1, 600, 700))
    >>> unit_shards((1, 256, 256), 512)
    ((1, 256, 256), (1, 256, 256))
    """
    chunks = list(unit)
    for axis in (-2, -1):
        side = unit[axis]
        if side > inner:
            chunks[axis] = next((d for d in range(inner, inner // 2 - 1, -1) if side % d == 0),
                                side)
    return tuple(chunks), tuple(unit)
