"""Open multiplexed slides lazily and read windows of the two-channel segmentation input.

A slide is a ``(C, H, W)`` dask array plus channel names and, when the file says so, microns per
pixel. Nothing is read until a window is asked for, so slides larger than memory can be cut into
patches (see :mod:`codexdask.store.patch_store`).

Formats (one reader each in :mod:`codexdask.readers`): OME-TIFF, QPTIFF and plain TIFF; Zarr and
OME-Zarr; ``.npy`` files; and in-memory numpy or dask arrays.

Without axes metadata a 2-D array is ``(Y, X)`` (one channel) and a 3-D array is ``(C, Y, X)``
unless its last axis is shorter than its first, in which case it is ``(Y, X, C)``; pass ``axes``
to say otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd

from codexdask.errors import InputError, SlideError
from codexdask.readers import READ_ERRORS, read_slide_file
from codexdask.readers.common import (
    check_pixel_dtype,
    dask_from_numpy,
    default_channel_names,
    to_cyx,
)
from codexdask.store.channels import wholecell_channel

__all__ = ["Slide", "open_slide", "read_antibodies", "read_window"]


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
    named_channels : int or None
        How many channel names the file's metadata gave (``None``: none); when it is not
        ``C`` the file's names were set aside (see :class:`~codexdask.readers.common.SlideFile`).
    """

    data: da.Array
    channel_names: list[str]
    image_mpp: float | None = None
    source: str = "<array>"
    format: str = "array"
    named_channels: int | None = None

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




def read_window(
    slide: Slide, channels: Sequence[int], y0: int, y1: int, x0: int, x1: int
) -> np.ndarray:
    """The two-channel segmentation input over rows ``y0:y1`` and columns ``x0:x1``.

    Parameters
    ----------
    slide : Slide
    channels : sequence of int
        The nucleus channel's index, then the whole-cell markers' indices (at least one); the
        whole-cell channel is formed by :func:`codexdask.store.channels.wholecell_channel`.
    y0, y1, x0, x1 : int
        The window; parts beyond the slide's bottom or right edge are zeros (padding).

    Returns
    -------
    numpy.ndarray
        ``(y1 - y0, x1 - x0, 2)``, the slide's dtype; channel 0 nucleus, channel 1 whole-cell.
        Memory: the two output channels plus the one channel being read.

    Raises
    ------
    SlideError
        If the file is truncated or unreadable within the window.
    InputError
        If a pixel is NaN or infinite (the message gives the first one's position).
    """
    out = np.zeros((y1 - y0, x1 - x0, 2), dtype=slide.dtype)
    ry, rx = min(y1, slide.height), min(x1, slide.width)
    if ry <= y0 or rx <= x0:
        return out

    def read(channel: int) -> np.ndarray:
        return _read_channel(slide, channel, y0, ry, x0, rx)

    out[: ry - y0, : rx - x0, 0] = read(channels[0])
    wholecell_channel(channels[1:], read, out[: ry - y0, : rx - x0, 1])
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise InputError(
            f"{slide.source} has NaN or infinite pixels (first at row {y0 + bad[0]}, column "
            f"{x0 + bad[1]}, {'nucleus' if bad[2] == 0 else 'whole-cell'} channel); replace them "
            "(e.g. numpy.nan_to_num) before patching"
        )
    return out


def _read_channel(slide: Slide, channel: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    try:
        return np.asarray(slide.data[channel, y0:y1, x0:x1].compute(scheduler="threads"))
    except READ_ERRORS as exc:
        raise SlideError(
            f"could not read channel {slide.channel_names[channel]!r}, rows {y0}-{y1}, columns "
            f"{x0}-{x1} of {slide.source}: the file is truncated or unreadable ({exc}); "
            "re-export or re-copy the slide"
        ) from exc


def _from_array(array: np.ndarray | da.Array, axes: str | None) -> Slide:
    if array.ndim < 2:
        raise InputError(
            f"a slide array needs 2 or 3 dimensions ((C, H, W), (H, W, C) or (H, W)); "
            f"got shape {tuple(array.shape)}"
        )
    check_pixel_dtype(array.dtype, "the slide array", InputError)
    data = dask_from_numpy(array) if isinstance(array, np.ndarray) else array
    try:
        data = to_cyx(data, axes, "the slide array")
    except SlideError as exc:
        raise InputError(str(exc)) from None
    return Slide(data=data, channel_names=default_channel_names(data.shape[0]))


def _from_path(path: Path, axes: str | None) -> Slide:
    found = read_slide_file(path, axes)
    return Slide(data=found.data, channel_names=found.channel_names, image_mpp=found.image_mpp,
                 source=str(path), format=found.format, named_channels=found.named_channels)


def _closest_hint(name: str, names: Sequence[str]) -> str:
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return f" (did you mean {lowered[name.lower()]!r}? names are case-sensitive)"
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.4)
    return f" (closest match: {close[0]!r})" if close else ""
