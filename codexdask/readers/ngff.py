"""Zarr (v2, v3) and OME-Zarr (0.4, 0.5) slides (NGFF ``multiscales``: first dataset, ``axes``
for c/y/x, ``omero`` channel labels, the x ``scale`` as ``image_mpp`` when its unit is a
length; NGFF 0.5 keeps them under an ``ome`` attribute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from codexdask.errors import SlideError
from codexdask.readers.common import (
    OPEN_ERRORS,
    SlideFile,
    check_pixel_dtype,
    default_channel_names,
    length_in_um,
    to_cyx,
    unreadable,
)

__all__ = ["open_zarr"]


def open_zarr(path: Path, axes: str | None) -> SlideFile:
    """Open a Zarr (v2 or v3) array or (OME-)Zarr group lazily (see the module docstring)."""
    if path.is_dir() and not any((path / name).exists()
                                 for name in ("zarr.json", ".zgroup", ".zarray")):
        raise SlideError(
            f"{str(path)!r} is a directory but not a Zarr store (no zarr.json, .zgroup or "
            ".zarray); pass a slide file or a Zarr/OME-Zarr directory"
        )
    try:
        node = zarr.open(str(path), mode="r")
    except OPEN_ERRORS as exc:
        raise unreadable(path, exc) from exc
    names: list[str] = []
    mpp = None
    fmt = "zarr"
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        attrs = {**attrs, **attrs.get("ome", {})}  # OME-Zarr 0.5 keeps its metadata under "ome"
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
        dims = (array.attrs.get("_ARRAY_DIMENSIONS")  # xarray's convention (v2)
                or getattr(array.metadata, "dimension_names", None))  # Zarr v3
        if isinstance(dims, (list, tuple)) and len(dims) == array.ndim and None not in dims:
            axes = "".join(str(d)[:1].upper() for d in dims)
    if array.ndim < 2:
        raise SlideError(f"Zarr array in {str(path)!r} has shape {array.shape}; need 2-3 dims")
    check_pixel_dtype(array.dtype, f"slide {str(path)!r}", SlideError)
    data = to_cyx(da.from_zarr(array), axes, f"slide {str(path)!r}")
    named = len(names) or None
    if len(names) != data.shape[0]:
        names = default_channel_names(data.shape[0])
    return SlideFile(data, names, mpp, fmt, named)


def _ngff(
    group: zarr.Group, attrs: dict[str, Any], path: Path
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
            mpp = length_in_um(transform["scale"][x_pos], str(x_unit))
    omero = attrs.get("omero") or {}
    names = [
        str(ch.get("label") or f"channel_{i}") for i, ch in enumerate(omero.get("channels", []))
    ]
    return array, axes, names, mpp
