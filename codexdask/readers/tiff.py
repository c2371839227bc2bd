"""OME-TIFF, QPTIFF and plain TIFF slides: level 0 of the largest image series.

Uncompressed contiguous data is read straight from the file in blocks of whole rows; everything
else goes through tifffile's Zarr view (one Zarr chunk per TIFF strip or tile). Channel names come
from the OME-XML ``Channel/@Name`` attributes or, for QPTIFF, from each page's ``Biomarker`` (else
``Name``) element; ``image_mpp`` from OME ``PhysicalSizeX`` or a centimetre ``XResolution``.
"""

from __future__ import annotations

import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from codexdask.errors import SlideError
from codexdask.readers.common import (
    OPEN_ERRORS,
    SlideFile,
    check_pixel_dtype,
    dask_from_file,
    default_channel_names,
    length_in_um,
    to_cyx,
    unreadable,
)

__all__ = ["TIFF_SUFFIXES", "open_tiff"]

#: File name endings read as TIFF.
TIFF_SUFFIXES = (".tif", ".tiff", ".qptiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")


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


def open_tiff(path: Path, axes: str | None) -> SlideFile:
    """Open a TIFF slide lazily (see the module docstring)."""
    file_size = path.stat().st_size
    with _tifffile_log() as messages:
        try:
            with tifffile.TiffFile(path) as tif:
                n_pages = len(tif.pages)
                index, series = max(
                    enumerate(tif.series), key=lambda s: _yx_area(s[1].levels[0]), default=(0, None)
                )
                if series is None:
                    raise unreadable(path, "no image series")
                level = series.levels[0]
                info = _tiff_info(tif, index, level)
                _check_tiff_extent(path, level, n_pages, file_size)
        except SlideError:
            raise
        except OPEN_ERRORS as exc:
            raise unreadable(path, exc) from exc
    damaged = [m for m in messages if "offset" in m or "truncat" in m.lower() or "invalid" in m]
    if damaged:
        raise unreadable(path, damaged[0])
    level_axes = axes or info["axes"]
    check_pixel_dtype(info["dtype"], f"slide {str(path)!r}", SlideError)
    data = _tiff_dask(path, index, info["raw"], level_axes.upper())
    data = to_cyx(data, level_axes, f"slide {str(path)!r}")
    names = info["names"]
    named = len(names) or None
    if len(names) != data.shape[0]:
        names = default_channel_names(data.shape[0])
    return SlideFile(data, names, info["mpp"], info["format"], named)


def _yx_area(series: Any) -> int:
    shape = dict(zip(series.axes, series.shape, strict=True))
    return int(shape.get("Y", 1)) * int(shape.get("X", 1))


def _tiff_dask(path: Path, index: int, raw: dict[str, Any] | None, axes: str) -> da.Array:
    """Level 0 of series ``index``: read directly when contiguous and uncompressed, else Zarr."""
    if raw is not None and "Y" in axes and len(axes) == len(raw["shape"]):
        return dask_from_file(path, raw["offset"], raw["shape"], raw["dtype"], axes.index("Y"))
    with tifffile.TiffFile(path) as tif:
        # No file cache: each chunk read opens and closes the file, so no handle stays open
        # between reads (tifffile's default keeps it open until garbage collection).
        store = tif.aszarr(series=index, level=0, _openfiles=0)
    array = zarr.open(store, mode="r")
    if isinstance(array, zarr.Group):  # pyramid view: take the full resolution
        array = array[sorted(array.array_keys())[0]]
    return da.from_zarr(array)


def _check_tiff_extent(path: Path, level: Any, n_pages: int, file_size: int) -> None:
    """Raise if the image data of ``level`` runs past the end of the file."""
    dims = zip(level.axes, level.shape, strict=True)
    planes = int(np.prod([s for a, s in dims if a not in "YXS"]))
    if level.dataoffset is not None:
        if level.dataoffset + level.size * level.dtype.itemsize > file_size:
            raise unreadable(path, "image data runs past the end of the file")
        return
    if not level.pages or (len(level.pages) < planes and n_pages < planes):
        raise unreadable(path, f"{planes} image planes expected, {n_pages} pages found")
    for page in level.pages:
        if page is None:
            raise unreadable(path, "missing image page")
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size and int((offsets + counts).max()) > file_size:
            raise unreadable(path, "image data runs past the end of the file")


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
    mpp = length_in_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
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


