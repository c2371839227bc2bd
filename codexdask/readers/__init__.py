"""Slide file readers: each format opened lazily as a ``(C, H, W)`` dask array with its channel
names and pixel size (a :class:`~codexdask.readers.common.SlideFile`).

- :mod:`~codexdask.readers.tiff` — OME-TIFF, QPTIFF and plain TIFF;
- :mod:`~codexdask.readers.ngff` — Zarr and OME-Zarr (NGFF);
- :mod:`~codexdask.readers.npy` — ``.npy`` files;
- :mod:`~codexdask.readers.common` — lazy arrays, axis handling and read errors they share.

Users open slides with :func:`codexdask.store.slide.open_slide`, which adds antibody names and
checks.
"""

from __future__ import annotations

from pathlib import Path

from codexdask.errors import SlideError
from codexdask.readers.common import READ_ERRORS, SlideFile
from codexdask.readers.ngff import open_zarr
from codexdask.readers.npy import open_npy
from codexdask.readers.tiff import TIFF_SUFFIXES, open_tiff

__all__ = ["READ_ERRORS", "SlideFile", "read_slide_file"]


def read_slide_file(path: Path, axes: str | None = None) -> SlideFile:
    """Open the slide at ``path`` lazily, choosing the reader by name, else by magic bytes.

    Parameters
    ----------
    path : pathlib.Path
        A TIFF-family file, a Zarr directory or a ``.npy`` file.
    axes : str, optional
        Axis letters of the stored array (e.g. ``"YXC"``) when the file does not say.

    Raises
    ------
    SlideError
        Missing, truncated or unreadable file, or a format codexdask does not read.
    """
    if not path.exists():
        raise SlideError(f"slide {str(path)!r} does not exist; check the path")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zarr"):
        return open_zarr(path, axes)
    if name.endswith(".npy"):
        return open_npy(path, axes)
    if name.endswith(TIFF_SUFFIXES):
        return open_tiff(path, axes)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] in (b"II", b"MM"):
        return open_tiff(path, axes)
    if magic[:4] == b"\x93NUM":
        return open_npy(path, axes)
    raise SlideError(
        f"slide {str(path)!r} is not a format codexdask reads; use OME-TIFF/QPTIFF/TIFF, Zarr/"
        "OME-Zarr or .npy"
    )
