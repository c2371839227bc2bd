"""Open multiplexed slides lazily and form the two-channel segmentation input.

A slide is a ``(C, H, W)`` dask array plus channel names and, when the file says so, microns per
pixel. Nothing is read until a window of the array is computed, so slides larger than memory can
be cut into patches (see :mod:`codexdask.patches`).

Formats
-------
- OME-TIFF, QPTIFF and plain TIFF: level 0 of the largest image series. Uncompressed contiguous
  data is read straight from the file in blocks of whole rows; everything else goes through
  tifffile's Zarr view (one Zarr chunk per TIFF strip or tile). Channel names come from the
  OME-XML ``Channel/@Name`` attributes or, for QPTIFF, from each page's ``Biomarker`` (else
  ``Name``) element; ``image_mpp`` from OME ``PhysicalSizeX`` or a centimetre ``XResolution``.
- Zarr and OME-Zarr (NGFF ``multiscales``: first dataset, ``axes`` for c/y/x, ``omero`` channel
  labels, the x ``scale`` as ``image_mpp`` when its unit is a length).
- ``.npy`` files, read straight from the file in blocks of whole rows (no memory map, so resident
  memory does not grow with the slide).
- In-memory numpy or dask arrays.

Without axes metadata a 2-D array is ``(Y, X)`` (one channel) and a 3-D array is ``(C, Y, X)``
unless its last axis is shorter than its first, in which case it is ``(Y, X, C)``; pass ``axes``
to say otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import tifffile
import zarr

from .errors import InputError, SlideError

__all__ = [
    "Slide",
    "extract_channels",
    "open_slide",
    "read_antibodies",
    "READ_ERRORS",
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
_OPEN_ERRORS = (*READ_ERRORS, IndexError, TypeError, zarr.errors.PathNotFoundError)

_TIFF_SUFFIXES = (".tif", ".tiff", ".qptiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
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


@dataclasses.dataclass
class Slide:
    """A lazily read multiplexed slide.

    Attributes
    ----------
    data : dask.array.Array
        Pixels, shape ``(C, H, W)``, the file's numeric dtype (native byte order).
    channel_names : list of str
        One name per channel, in channel order.
    image_mpp : float or None
        Microns per pixel when the file records it, else ``None``.
    source : str
        File path, or ``"<array>"`` for an in-memory array.
    format : str
        One of ``"ome-tiff"``, ``"qptiff"``, ``"tiff"``, ``"ome-zarr"``, ``"zarr"``, ``"npy"``,
        ``"array"``.
    """

    data: da.Array
    channel_names: list[str]
    image_mpp: float | None = None
    source: str = "<array>"
    format: str = "array"

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return int(self.data.shape[0])

    @property
    def height(self) -> int:
        """Image height ``H`` in pixels."""
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        """Image width ``W`` in pixels."""
        return int(self.data.shape[2])

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype."""
        return np.dtype(self.data.dtype)

    def channel_index(self, name: str) -> int:
        """Position of channel ``name``.

        Raises
        ------
        SlideError
            If the name is absent (listing the available names and the closest match) or occurs
            more than once.
        """
        hits = [i for i, n in enumerate(self.channel_names) if n == name]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise SlideError(
                f"channel name {name!r} occurs {len(hits)} times in {self.source} "
                f"(positions {hits}); give each channel a unique name in the antibodies TSV"
            )
        raise SlideError(
            f"channel {name!r} is not in {self.source}{_closest_hint(name, self.channel_names)}; "
            f"available channels: {', '.join(self.channel_names)}. "
            "Fix --nucleus/--wholecell or pass --antibodies with the right names"
        )


def open_slide(
    slide: str | Path | np.ndarray | da.Array | Slide,
    *,
    antibodies: str | Path | None = None,
    channel_names: Sequence[str] | None = None,
    image_mpp: float | None = None,
    axes: str | None = None,
) -> Slide:
    """Open a slide lazily as a ``(C, H, W)`` dask array with channel names.

    Parameters
    ----------
    slide : path, numpy array, dask array or Slide
        OME-TIFF / QPTIFF / TIFF, Zarr / OME-Zarr directory, ``.npy`` file, or an array
        (``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``; see ``axes``).
    antibodies : path, optional
        TSV with an ``antibody_name`` column, one row per channel in channel order; overrides the
        names found in the file.
    channel_names : sequence of str, optional
        Channel names; override the file's names (used for in-memory arrays).
    image_mpp : float, optional
        Microns per pixel; overrides the file's value.
    axes : str, optional
        Axis letters of the stored array, e.g. ``"CYX"``, ``"YXC"``, ``"YX"``, ``"TCZYX"``; needs
        ``Y`` and ``X``, other axes must be of size 1 except one channel axis.

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        Missing, truncated or unreadable file; unsupported layout; names that do not fit.
    InputError
        An in-memory array with the wrong number of dimensions or a non-numeric dtype.
    """
    if isinstance(slide, Slide):
        result = dataclasses.replace(slide, channel_names=list(slide.channel_names))
    elif isinstance(slide, (np.ndarray, da.Array)):
        result = _from_array(slide, axes)
    else:
        result = _from_path(Path(slide), axes)
    names = result.channel_names
    if channel_names is not None:
        names = [str(n) for n in channel_names]
        if len(names) != result.n_channels:
            raise SlideError(
                f"{len(names)} channel names given for {result.n_channels} channels in "
                f"{result.source}; give exactly one name per channel"
            )
    if antibodies is not None:
        names = read_antibodies(antibodies)
        if len(names) != result.n_channels:
            raise SlideError(
                f"antibodies TSV {str(antibodies)!r} has {len(names)} rows but {result.source} has "
                f"{result.n_channels} channels; the TSV needs one antibody_name row per channel, "
                "in channel order"
            )
    result.channel_names = names
    if image_mpp is not None:
        result.image_mpp = float(image_mpp)
    return result


def read_antibodies(path: str | Path) -> list[str]:
    """Channel names from an antibodies TSV (column ``antibody_name``; row order = channel order).

    Raises
    ------
    SlideError
        If the file is missing, unreadable, empty or lacks the ``antibody_name`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(
            f"antibodies TSV {str(path)!r} does not exist; check the --antibodies path"
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise SlideError(f"antibodies TSV {str(path)!r} cannot be read as TSV: {exc}") from exc
    if "antibody_name" not in table.columns:
        raise SlideError(
            f"antibodies TSV {str(path)!r} has no 'antibody_name' column (columns: "
            f"{', '.join(map(str, table.columns))}); it must be tab-separated with a header row "
            "containing antibody_name"
        )
    names = [str(n).strip() for n in table["antibody_name"]]
    if not names:
        raise SlideError(f"antibodies TSV {str(path)!r} has no rows; add one row per channel")
    return names


def extract_channels(slide: Slide, nucleus: str, wholecell: Sequence[str] | str) -> da.Array:
    """The two-channel segmentation input, lazily (reference §1.1).

    Parameters
    ----------
    slide : Slide
        The opened slide, data ``(C, H, W)``.
    nucleus : str
        Nucleus channel name.
    wholecell : str or sequence of str
        Whole-cell marker names. One marker is used as is; several are combined by pixel-wise
        maximum starting from zeros of the nucleus dtype (no scaling).

    Returns
    -------
    dask.array.Array
        Shape ``(H, W, 2)``, the slide's dtype; channel 0 nucleus, channel 1 whole-cell.

    Raises
    ------
    SlideError
        If a name is not a channel of the slide (the message lists the available names).
    """
    markers = [wholecell] if isinstance(wholecell, str) else list(wholecell)
    if not markers:
        raise SlideError("name at least one whole-cell marker, e.g. --wholecell CD45")
    nuc = slide.data[slide.channel_index(nucleus)]
    indices = [slide.channel_index(m) for m in markers]
    if len(indices) == 1:
        whole = slide.data[indices[0]]
    else:
        whole = da.zeros_like(nuc, dtype=nuc.dtype)
        for i in indices:
            whole = da.maximum(whole, slide.data[i])
    return da.stack([nuc, whole.astype(nuc.dtype)], axis=-1)


# --------------------------------------------------------------------------------------------
# arrays and axes


def _check_dtype(dtype: np.dtype, where: str, error: type[Exception]) -> np.dtype:
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise error(
            f"{where} has dtype {dtype}, which is not an integer or floating-point pixel type; "
            "convert it to uint8/uint16/float32 before patching"
        )
    return dtype


def _from_array(array: np.ndarray | da.Array, axes: str | None) -> Slide:
    if array.ndim < 2:
        raise InputError(
            f"a slide array needs 2 or 3 dimensions ((C, H, W), (H, W, C) or (H, W)); "
            f"got shape {tuple(array.shape)}"
        )
    _check_dtype(array.dtype, "the slide array", InputError)
    if isinstance(array, np.ndarray):
        data = _dask_from_numpy(array)
    else:
        data = array
    try:
        data = _to_cyx(data, axes, "the slide array")
    except SlideError as exc:
        raise InputError(str(exc)) from None
    return Slide(data=data, channel_names=_default_names(data.shape[0]))


def _dask_from_numpy(array: np.ndarray) -> da.Array:
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


def _dask_from_file(
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


def _guess_axes(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "CYX" if shape[0] <= shape[2] else "YXC"
    return "Q" * (len(shape) - 2) + "YX"


def _to_cyx(data: da.Array, axes: str | None, where: str) -> da.Array:
    """Reorder an array with axis letters ``axes`` to ``(C, Y, X)``."""
    axes = (axes or _guess_axes(tuple(data.shape))).upper()
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


def _default_names(n: int) -> list[str]:
    return [f"channel_{i}" for i in range(n)]


def _closest_hint(name: str, names: Sequence[str]) -> str:
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return f" (did you mean {lowered[name.lower()]!r}? names are case-sensitive)"
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.4)
    return f" (closest match: {close[0]!r})" if close else ""


# --------------------------------------------------------------------------------------------
# files


def _from_path(path: Path, axes: str | None) -> Slide:
    if not path.exists():
        raise SlideError(f"slide {str(path)!r} does not exist; check the path")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zarr"):
        return _open_zarr(path, axes)
    if name.endswith(".npy"):
        return _open_npy(path, axes)
    if name.endswith(_TIFF_SUFFIXES):
        return _open_tiff(path, axes)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] in (b"II", b"MM"):
        return _open_tiff(path, axes)
    if magic[:4] == b"\x93NUM":
        return _open_npy(path, axes)
    raise SlideError(
        f"slide {str(path)!r} is not a format codexdask reads; use OME-TIFF/QPTIFF/TIFF, Zarr/"
        "OME-Zarr or .npy"
    )


def _unreadable(path: Path, exc: BaseException | str) -> SlideError:
    return SlideError(
        f"slide {str(path)!r} is truncated or unreadable ({exc}); re-export or re-copy the file "
        "and check its size against the original"
    )


def _open_npy(path: Path, axes: str | None) -> Slide:
    where = f"slide {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise _unreadable(path, exc) from exc
    if dtype.hasobject:
        raise SlideError(f"{where} holds Python objects, not pixels; save a numeric array "
                         "(uint8/uint16/float32)")
    if len(shape) < 2:
        raise SlideError(f"{where} has shape {shape}; a slide needs 2 or 3 dimensions "
                         "((C, H, W), (H, W, C) or (H, W))")
    _check_dtype(dtype, where, SlideError)
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise _unreadable(path, "the file is shorter than its header says")
    axes = (axes or _guess_axes(tuple(shape))).upper()
    if fortran or "Y" not in axes or len(axes) != len(shape):
        data = _dask_from_numpy(np.load(path, mmap_mode="r"))
    else:
        data = _dask_from_file(path, offset, tuple(shape), dtype, axes.index("Y"))
    data = _to_cyx(data, axes, where)
    return Slide(data=data, channel_names=_default_names(data.shape[0]), source=str(path),
                 format="npy")


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    """Collect tifffile's warnings (it logs, rather than raises, on a damaged IFD chain).

    They are kept from the terminal: a damaged file becomes one SlideError instead.
    """
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    logger = logging.getLogger("tifffile")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _open_tiff(path: Path, axes: str | None) -> Slide:
    file_size = path.stat().st_size
    with _tifffile_log() as messages:
        try:
            with tifffile.TiffFile(path) as tif:
                n_pages = len(tif.pages)
                index, series = max(
                    enumerate(tif.series), key=lambda s: _yx_area(s[1].levels[0]), default=(0, None)
                )
                if series is None:
                    raise _unreadable(path, "no image series")
                level = series.levels[0]
                info = _tiff_info(tif, index, level)
                _check_tiff_extent(path, level, n_pages, file_size)
        except SlideError:
            raise
        except _OPEN_ERRORS as exc:
            raise _unreadable(path, exc) from exc
    damaged = [m for m in messages if "offset" in m or "truncat" in m.lower() or "invalid" in m]
    if damaged:
        raise _unreadable(path, damaged[0])
    level_axes = axes or info["axes"]
    _check_dtype(info["dtype"], f"slide {str(path)!r}", SlideError)
    data = _tiff_dask(path, index, info["raw"], level_axes.upper())
    data = _to_cyx(data, level_axes, f"slide {str(path)!r}")
    names = info["names"] if len(info["names"]) == data.shape[0] else _default_names(data.shape[0])
    return Slide(data=data, channel_names=names, image_mpp=info["mpp"], source=str(path),
                 format=info["format"])


def _yx_area(series: Any) -> int:
    shape = dict(zip(series.axes, series.shape, strict=True))
    return int(shape.get("Y", 1)) * int(shape.get("X", 1))


def _tiff_dask(path: Path, index: int, raw: dict[str, Any] | None, axes: str) -> da.Array:
    """Level 0 of series ``index``: read directly when contiguous and uncompressed, else Zarr."""
    if raw is not None and "Y" in axes and len(axes) == len(raw["shape"]):
        return _dask_from_file(path, raw["offset"], raw["shape"], raw["dtype"], axes.index("Y"))
    store = tifffile.imread(path, aszarr=True, series=index, level=0)
    array = zarr.open(store, mode="r")
    if isinstance(array, zarr.hierarchy.Group):  # pyramid view: take the full resolution
        array = array[sorted(array.array_keys())[0]]
    return da.from_zarr(array)


def _check_tiff_extent(path: Path, level: Any, n_pages: int, file_size: int) -> None:
    """Raise if the image data of ``level`` runs past the end of the file."""
    dims = zip(level.axes, level.shape, strict=True)
    planes = int(np.prod([s for a, s in dims if a not in "YXS"]))
    if level.dataoffset is not None:
        if level.dataoffset + level.size * level.dtype.itemsize > file_size:
            raise _unreadable(path, "image data runs past the end of the file")
        return
    if not level.pages or (len(level.pages) < planes and n_pages < planes):
        raise _unreadable(path, f"{planes} image planes expected, {n_pages} pages found")
    for page in level.pages:
        if page is None:
            raise _unreadable(path, "missing image page")
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size and int((offsets + counts).max()) > file_size:
            raise _unreadable(path, "image data runs past the end of the file")


def _tiff_info(tif: tifffile.TiffFile, index: int, level: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "axes": level.axes, "dtype": level.dtype, "names": [], "mpp": None, "format": "tiff",
        "raw": None,
    }
    if level.dataoffset is not None:  # contiguous and uncompressed
        info["raw"] = {"offset": int(level.dataoffset), "shape": tuple(level.shape),
                       "dtype": np.dtype(tif.byteorder + level.dtype.char)}
    if tif.is_ome and tif.ome_metadata:
        names, mpp = _ome_tiff_meta(tif.ome_metadata, index)
        info.update(names=names, mpp=mpp, format="ome-tiff")
    first = level.pages[0] if level.pages else None
    if first is not None and (
        tif.is_qpi or "PerkinElmer-QPI" in (first.description or "")
    ):
        info["format"] = "qptiff"
        info["names"] = info["names"] or _qptiff_names(level.pages)
    if info["mpp"] is None and first is not None:
        info["mpp"] = _resolution_mpp(first)
    return info


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_tiff_meta(xml: str, index: int) -> tuple[list[str], float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return [], None
    images = [el for el in root if _local(el.tag) == "Image"]
    if not images:
        return [], None
    image = images[index] if index < len(images) else images[0]
    pixels = next((el for el in image if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return [], None
    names = [
        ch.get("Name") or ch.get("ID") or f"channel_{i}"
        for i, ch in enumerate(el for el in pixels if _local(el.tag) == "Channel")
    ]
    mpp = _to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
    return names, mpp


def _qptiff_names(pages: Sequence[Any]) -> list[str]:
    names = []
    for page in pages:
        try:
            root = ET.fromstring(page.description)
        except (ET.ParseError, AttributeError, TypeError):
            return []
        found = {_local(el.tag): (el.text or "").strip() for el in root.iter()}
        name = found.get("Biomarker") or found.get("Name")
        if not name:
            return []
        names.append(name)
    return names


def _resolution_mpp(page: Any) -> float | None:
    unit = page.tags.get("ResolutionUnit")
    xres = page.tags.get("XResolution")
    if unit is None or xres is None or int(unit.value) != 3:  # 3 = centimetre
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num:
        return None
    mpp = 1e4 * float(den) / float(num)
    return mpp if 1e-3 < mpp < 1e3 else None


def _to_um(value: Any, unit: str | None) -> float | None:
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


def _open_zarr(path: Path, axes: str | None) -> Slide:
    if (path / "zarr.json").exists() and not (path / ".zgroup").exists() and not (
        path / ".zarray"
    ).exists():
        raise SlideError(
            f"slide {str(path)!r} is a Zarr v3 store; codexdask reads Zarr v2 (zarr<3). Re-save "
            "it as Zarr v2 (zarr_format=2) or as OME-TIFF"
        )
    if path.is_dir() and not ((path / ".zgroup").exists() or (path / ".zarray").exists()):
        raise SlideError(
            f"{str(path)!r} is a directory but not a Zarr store (no .zgroup/.zarray); pass a "
            "slide file or a Zarr/OME-Zarr directory"
        )
    try:
        node = zarr.open(str(path), mode="r")
    except _OPEN_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    names: list[str] = []
    mpp = None
    fmt = "zarr"
    if isinstance(node, zarr.hierarchy.Group):
        attrs = node.attrs.asdict()
        if "codexdask" in attrs:
            raise SlideError(
                f"{str(path)!r} is a codexdask patch/result store, not a slide; segment it with "
                "`codexdask segment` or pass the original slide"
            )
        if "multiscales" in attrs:
            array, zaxes, names, mpp = _ngff(node, attrs, path)
            axes = axes or zaxes
            fmt = "ome-zarr"
        else:
            keys = sorted(node.array_keys())
            if len(keys) != 1:
                raise SlideError(
                    f"Zarr group {str(path)!r} has no OME-NGFF 'multiscales' metadata and "
                    f"{len(keys)} arrays ({', '.join(keys) or 'none'}); pass the path of the image "
                    "array itself (e.g. slide.zarr/0)"
                )
            array = node[keys[0]]
    else:
        array = node
    if axes is None:
        dims = array.attrs.get("_ARRAY_DIMENSIONS")
        if isinstance(dims, list) and len(dims) == array.ndim:
            axes = "".join(str(d)[:1].upper() for d in dims)
    if array.ndim < 2:
        raise SlideError(f"Zarr array in {str(path)!r} has shape {array.shape}; need 2-3 dims")
    _check_dtype(array.dtype, f"slide {str(path)!r}", SlideError)
    data = _to_cyx(da.from_zarr(array), axes, f"slide {str(path)!r}")
    if len(names) != data.shape[0]:
        names = _default_names(data.shape[0])
    return Slide(data=data, channel_names=names, image_mpp=mpp, source=str(path), format=fmt)


def _ngff(
    group: zarr.hierarchy.Group, attrs: dict[str, Any], path: Path
) -> tuple[zarr.Array, str | None, list[str], float | None]:
    try:
        multiscale = attrs["multiscales"][0]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise SlideError(
            f"OME-Zarr {str(path)!r} has malformed 'multiscales' metadata ({exc!r}); it needs "
            "multiscales[0].datasets[0].path naming an array"
        ) from exc
    raw_axes = multiscale.get("axes")
    axes = None
    x_unit = None
    x_pos = -1
    if isinstance(raw_axes, list) and len(raw_axes) == array.ndim:
        letters = []
        for i, ax in enumerate(raw_axes):
            axis_name = ax.get("name", "") if isinstance(ax, dict) else str(ax)
            letters.append(axis_name[:1].upper() or "Q")
            if letters[-1] == "X" and isinstance(ax, dict):
                x_unit = ax.get("unit")
            if letters[-1] == "X":
                x_pos = i
        axes = "".join(letters)
    mpp = None
    for transform in dataset.get("coordinateTransformations", []) or []:
        if transform.get("type") == "scale" and axes and "X" in axes and x_unit:
            mpp = _to_um(transform["scale"][x_pos], str(x_unit))
    omero = attrs.get("omero") or {}
    names = [
        str(ch.get("label") or f"channel_{i}") for i, ch in enumerate(omero.get("channels", []))
    ]
    return array, axes, names, mpp
