"""``.npy`` slides, read straight from the file in blocks of whole rows (no memory map, so
resident memory does not grow with the slide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codexdask.errors import SlideError
from codexdask.readers import common
from codexdask.readers.common import SlideFile, unreadable

__all__ = ["open_npy"]


def open_npy(path: Path, axes: str | None) -> SlideFile:
    """Open a ``.npy`` file lazily (see :mod:`codexdask.readers`)."""
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
        raise unreadable(path, exc) from exc
    if dtype.hasobject:
        raise SlideError(f"{where} holds Python objects, not pixels; save a numeric array "
                         "(uint8/uint16/float32)")
    if len(shape) < 2:
        raise SlideError(f"{where} has shape {shape}; a slide needs 2 or 3 dimensions "
                         "((C, H, W), (H, W, C) or (H, W))")
    common.check_pixel_dtype(dtype, where, SlideError)
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise unreadable(path, "the file is shorter than its header says")
    axes = (axes or common.guess_axes(tuple(shape))).upper()
    if fortran or "Y" not in axes or len(axes) != len(shape):
        data = common.dask_from_numpy(np.load(path, mmap_mode="r"))
    else:
        data = common.dask_from_file(path, offset, tuple(shape), dtype, axes.index("Y"))
    data = common.to_cyx(data, axes, where)
    return SlideFile(data, common.default_channel_names(data.shape[0]), None, "npy")
