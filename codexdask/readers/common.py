"""What every slide reader shares: the errors of a damaged file, lazy arrays over numpy arrays and
raw files, and axis handling.

Readers return a :class:`SlideFile`: a lazy ``(C, H, W)`` dask array with the file's channel names
and pixel size. Nothing is read until a window of the array is computed.
"""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import tifffile
import zarr

from codexdask.errors import SlideError

__all__ = [
    "OPEN_ERRORS",
    "READ_ERRORS",
    "SlideFile",
    "check_pixel_dtype",
    "dask_from_file",
    "dask_from_numpy",
    "default_channel_names",
    "guess_axes",
    "length_in_um",
    "to_cyx",
    "unreadable",
]

#: Exceptions that reading a damaged slide window can raise; callers turn them into SlideError.
READ_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    EOFError,
    zlib.error,
    tifffile.TiffFileError,
)
#: Exceptions that opening a damaged file can raise.
OPEN_ERRORS = (*READ_ERRORS, IndexError, TypeError, FileNotFoundError,
               zarr.errors.NodeNotFoundError)

_LENGTH_UNITS_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "Å": 1e-4, "angstrom": 1e-4,
}
# Chunk (rows, columns) for in-memory numpy arrays: dask copies whole chunks before slicing, so
# chunks stay small (1 MiB at uint16).
_DEFAULT_CHUNK = (256, 2048)


class SlideFile(NamedTuple):
    """What a reader found in a file.

    Attributes
    ----------
    data : dask.array.Array
        Pixels ``(C, H, W)``, the file's numeric dtype in native byte order.
    channel_names : list of str
        One per channel (``channel_0``... when the file names none).
    image_mpp : float or None
        Microns per pixel when the file records it.
    format : str
        ``"ome-tiff"``, ``"qptiff"``, ``"tiff"``, ``"ome-zarr"``, ``"zarr"`` or ``"npy"``.
    named_channels : int or None
        How many channel names the file's metadata gave (``None``: none). When it differs from
        the pixels' channel count the names were replaced by ``channel_i``.
    """

    data: da.Array
    channel_names: list[str]
    image_mpp: float | None
    format: str
    named_channels: int | None = None


def check_pixel_dtype(dtype: np.dtype, where: str, error: type[Exception]) -> np.dtype:
    """``dtype`` if it is an integer or floating-point pixel type; else raise ``error``."""
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise error(
            f"{where} has dtype {dtype}, which is not an integer or floating-point pixel type; "
            "convert it to uint8/uint16/float32 before patching"
        )
    return dtype


def dask_from_numpy(array: np.ndarray) -> da.Array:
    """A lazy view of an in-memory (or memory-mapped) array, chunked in windows of ~1 MiB.

    Computing a window copies only that window, never the whole array.
    """
    rows, cols = _DEFAULT_CHUNK
    chunks: tuple[int, ...] = (*([1] * (array.ndim - 2)), min(array.shape[-2], rows),
                               min(array.shape[-1], cols))
    if array.ndim == 3 and array.shape[0] > array.shape[2]:  # likely (Y, X, C): keep C whole
        chunks = (min(array.shape[0], rows), min(array.shape[1], cols), array.shape[2])
    # a named, non-ndarray source: dask neither hashes nor copies the whole (memory-mapped) array
    return da.from_array(
        _WindowReader(array), chunks=chunks, name=f"slide-{uuid.uuid4().hex}",
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


class _WindowReader:
    """Array-like view of a numpy array or memmap whose ``[key]`` copies only that window."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self.array[key])


def dask_from_file(
    path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, row_axis: int
) -> da.Array:
    """A C-ordered raw array in a file, chunked into blocks of whole rows of about 1 MiB."""
    row_bytes = int(np.prod(shape[row_axis + 1 :])) * dtype.itemsize
    rows = max(1, min(shape[row_axis], 2**20 // max(1, row_bytes)))
    chunks = tuple(1 if i < row_axis else rows if i == row_axis else n for i, n in enumerate(shape))
    return da.from_array(
        _RawFile(path, offset, shape, dtype, row_axis), chunks=chunks,
        name=f"slide-{uuid.uuid4().hex}", meta=np.empty((0,) * len(shape), dtype=dtype),
    )


class _RawFile:
    """Array-like over raw C-ordered pixels in a file; a block of whole rows is one plain read.

    Unlike a memory map, reads leave nothing mapped, so resident memory stays at the windows
    being processed however large the file is.
    """

    def __init__(
        self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, row_axis: int
    ) -> None:
        self.path = path
        self.offset = offset
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.row_axis = row_axis

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        bounds = [
            k.indices(n) if isinstance(k, slice) else None
            for k, n in zip(key, self.shape, strict=False)
        ]
        ax = self.row_axis
        simple = len(key) == self.ndim and all(b is not None and b[2] == 1 for b in bounds)
        if simple:
            spans = [(b[0], b[1]) for b in bounds if b is not None]
            simple = all(hi - lo == 1 for lo, hi in spans[:ax]) and all(
                (lo, hi) == (0, n) for (lo, hi), n in zip(spans[ax + 1 :], self.shape[ax + 1 :],
                                                          strict=True)
            )
        if not simple:  # not a block of whole rows: read through a temporary memory map
            mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
            return np.array(mapped[key])
        first = [lo for lo, _ in spans[: ax + 1]] + [0] * (self.ndim - ax - 1)
        start = int(np.ravel_multi_index(first, self.shape)) if min(self.shape) else 0
        out_shape = tuple(hi - lo for lo, hi in spans)
        out = np.empty(out_shape, dtype=self.dtype)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.dtype.itemsize)
            got = fh.readinto(out.reshape(-1).view(np.uint8).data)
        if got != out.nbytes:
            raise EOFError(f"{self.path} ends before the pixel data does: the file is truncated")
        return out


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axis letters of an array without axes metadata (see :mod:`codexdask.store.slide`).

    Examples
    --------
    >>> guess_axes((4, 100, 120)), guess_axes((100, 120, 4)), guess_axes((100, 120))
    ('CYX', 'YXC', 'YX')
    """
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "CYX" if shape[0] <= shape[2] else "YXC"
    return "Q" * (len(shape) - 2) + "YX"


def to_cyx(data: da.Array, axes: str | None, where: str) -> da.Array:
    """Reorder an array with axis letters ``axes`` to ``(C, Y, X)``."""
    axes = (axes or guess_axes(tuple(data.shape))).upper()
    if len(axes) != data.ndim or "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        raise SlideError(
            f"{where}: axes {axes!r} do not fit shape {tuple(data.shape)}; give one distinct "
            "letter per dimension including Y and X, e.g. axes='CYX'"
        )
    others = [i for i, a in enumerate(axes) if a not in "YX"]
    big = [i for i in others if data.shape[i] > 1]
    if len(big) > 1:
        desc = ", ".join(f"{axes[i]}={data.shape[i]}" for i in big)
        raise SlideError(
            f"{where} has more than one non-spatial axis of size > 1 ({desc}); codexdask needs a "
            "single channel axis: select one time point / z-plane first"
        )
    channel = big[0] if big else (others[0] if others else None)
    index: list[Any] = [slice(None) if i == channel or a in "YX" else 0 for i, a in enumerate(axes)]
    data = data[tuple(index)]
    kept = [a for i, a in enumerate(axes) if i == channel or a in "YX"]
    if channel is None:
        data = data[None]
        kept = ["C", *kept]
    order = [kept.index(a) for a in (axes[channel] if channel is not None else "C", "Y", "X")]
    data = data.transpose(order)
    if min(data.shape) < 1:
        raise SlideError(f"{where} is empty (shape {tuple(data.shape)}); check the file")
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def default_channel_names(n: int) -> list[str]:
    """``channel_0 ... channel_{n-1}``, the names of channels a file does not name."""
    return [f"channel_{i}" for i in range(n)]


def unreadable(path: Path, exc: BaseException | str) -> SlideError:
    """The SlideError for a truncated or damaged file (``exc`` says what failed)."""
    return SlideError(
        f"slide {str(path)!r} is truncated or unreadable ({exc}); re-export or re-copy the file "
        "and check its size against the original"
    )


def length_in_um(value: Any, unit: str | None) -> float | None:
    """A length in microns from a value and its unit name (µm, nm, mm, cm, Å...).

    ``None`` when the value is missing, not a positive number, or the unit is unknown.

    Examples
    --------
    >>> length_in_um("377", "nm")
    0.377
    """
    if value is None:
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    factor = _LENGTH_UNITS_UM.get((unit or "µm").strip())
    if factor is None or not size > 0:
        return None
    return size * factor
