"""Cut a slide into a patch store: geometry, QC statistics, out-of-core writing, and reading back.

Geometry follows reference §1.2–1.3 (``patches``, ``full_image``, ``halves``, ``quarters``), the
statistics and flags follow §1.4, the metadata columns follow §1.5 plus ``x_start``/``y_start``.

A patch store is a directory ``NAME.zarr`` (Zarr v2 group):

- array ``patches``: ``(N, H, W, 2)``, the slide's dtype, chunks ``(1, H, W, 2)``, Blosc zstd;
  channel 0 nucleus, channel 1 whole-cell. Patches smaller than ``H x W`` (``halves``/``quarters``
  with odd sizes) are zero-padded bottom/right; the metadata ``height``/``width`` hold their size.
- file ``patches_metadata.csv``: one row per patch, in patch order.
- group attribute ``"codexdask"``: the slide's facts and the geometry.

Writing never holds the slide in memory: it reads one window (a run of patches in one patch row,
at most ``window_bytes``) at a time, computes its statistics and writes its patches.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs
import numpy as np
import pandas as pd
import zarr

from . import __version__
from .config import PatchConfig
from .errors import InputError, OutputExistsError, SlideError, StoreError
from .select import informative_indices
from .slide import READ_ERRORS, Slide, open_slide

__all__ = [
    "METADATA_FILE",
    "PATCHES_ARRAY",
    "STAT_COLUMNS",
    "FLAG_COLUMNS",
    "PatchGrid",
    "PatchStore",
    "patch_grid",
    "patch_statistics",
    "qc_flags",
    "write_patch_store",
    "patch_slide",
    "open_patch_store",
]

METADATA_FILE = "patches_metadata.csv"
PATCHES_ARRAY = "patches"
STORE_KIND = "patch-store"
STORE_VERSION = 1
DEFAULT_IMAGE_MPP = 0.5
#: Default upper bound on one window's pixel bytes (two output channels + one being read).
DEFAULT_WINDOW_BYTES = 64 * 2**20

STAT_COLUMNS = (
    "nucleus_mean",
    "nucleus_std",
    "nucleus_non_zero_perc",
    "wholecell_mean",
    "wholecell_std",
    "wholecell_non_zero_perc",
)
FLAG_COLUMNS = ("is_empty", "is_noisy", "is_bad_patch", "is_informative")
_REQUIRED_COLUMNS = ("patch_id", "x_start", "y_start", "height", "width", *STAT_COLUMNS,
                     *FLAG_COLUMNS)


# --------------------------------------------------------------------------------------------
# geometry


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one slide lie.

    Attributes
    ----------
    split_mode : str
    slide_shape : (int, int)
        Slide height and width ``(H, W)``.
    padded_shape : (int, int)
        Height and width after zero padding at the bottom/right (``patches`` mode; else the slide).
    patch_shape : (int, int)
        Height and width of every stored patch (the largest patch for ``halves``/``quarters``).
    step : (int, int)
        Row and column step between neighbouring patches.
    overlap : float
        Overlap fraction used (0 outside ``patches`` mode).
    boxes : tuple of (int, int, int, int)
        ``(y_start, x_start, height, width)`` of each patch in patch order, in padded coordinates.
    """

    split_mode: str
    slide_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    patch_shape: tuple[int, int]
    step: tuple[int, int]
    overlap: float
    boxes: tuple[tuple[int, int, int, int], ...]

    @property
    def n_patches(self) -> int:
        """Number of patches ``N``."""
        return len(self.boxes)

    def to_frame(self) -> pd.DataFrame:
        """The boxes as a DataFrame with columns ``y_start, x_start, height, width`` (int64)."""
        return pd.DataFrame(list(self.boxes), columns=["y_start", "x_start", "height", "width"],
                            dtype=np.int64)


def _pad(size: int, patch: int, step: int) -> int:
    # reference §1.2: over-pads by up to patch - step; Python's % keeps it valid for size < patch
    return (patch - (size - patch) % step) % patch


def patch_grid(height: int, width: int, config: PatchConfig) -> PatchGrid:
    """Patch geometry of an ``height x width`` slide (reference §1.2–1.3).

    ``patches``: step ``s = max(1, p - int(p * overlap))`` per axis, padding
    ``(p - (size - p) mod s) mod p`` at the bottom/right (at least up to one patch), tiles in
    row-major order over the padded image. ``full_image``: one patch. ``halves``: left/right
    (``vertical``) or top/bottom (``horizontal``) split at ``W // 2`` / ``H // 2``.
    ``quarters``: TL, TR, BL, BR split at ``(H // 2, W // 2)``. Only ``patches`` mode pads or
    overlaps.

    Returns
    -------
    PatchGrid

    Raises
    ------
    SlideError
        If the slide is too small for the mode (e.g. one pixel wide for ``halves``).
    """
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise SlideError(f"the slide is empty ({h}x{w} pixels)")
    mode = config.split_mode
    if mode == "patches":
        ph, pw = config.patch_size
        sh = max(1, ph - int(ph * config.overlap))
        sw = max(1, pw - int(pw * config.overlap))
        # an image smaller than the patch whose (size - p) is a multiple of the step gets no
        # padding from the formula and would yield no patch: pad it to one patch instead
        he, we = max(h + _pad(h, ph, sh), ph), max(w + _pad(w, pw, sw), pw)
        boxes = tuple(
            (y, x, ph, pw) for y in range(0, he - ph + 1, sh) for x in range(0, we - pw + 1, sw)
        )
        return PatchGrid(mode, (h, w), (he, we), (ph, pw), (sh, sw), float(config.overlap), boxes)
    h2, w2 = h // 2, w // 2
    if mode == "full_image":
        boxes = ((0, 0, h, w),)
    elif mode == "halves" and config.split_direction == "horizontal":
        _need(h2, "halves (horizontal) needs a slide at least 2 pixels high")
        boxes = ((0, 0, h2, w), (h2, 0, h - h2, w))
    elif mode == "halves":
        _need(w2, "halves (vertical) needs a slide at least 2 pixels wide")
        boxes = ((0, 0, h, w2), (0, w2, h, w - w2))
    elif mode == "quarters":
        _need(min(h2, w2), "quarters needs a slide at least 2x2 pixels")
        boxes = ((0, 0, h2, w2), (0, w2, h2, w - w2), (h2, 0, h - h2, w2), (h2, w2, h - h2, w - w2))
    else:  # PatchConfig already refuses other values
        raise SlideError(f"unknown split_mode {mode!r}")
    shape = (max(b[2] for b in boxes), max(b[3] for b in boxes))
    return PatchGrid(mode, (h, w), (h, w), shape, (h, w), 0.0, boxes)


def _need(value: int, message: str) -> None:
    if value < 1:
        raise SlideError(f"{message}; use split_mode full_image")


# --------------------------------------------------------------------------------------------
# QC


def patch_statistics(patch: np.ndarray) -> dict[str, float]:
    """The six QC statistics of one patch (reference §1.4).

    Parameters
    ----------
    patch : numpy.ndarray
        ``(h, w, 2)``, any numeric dtype; channel 0 nucleus, channel 1 whole-cell.

    Returns
    -------
    dict
        ``{nucleus,wholecell}_{mean,std,non_zero_perc}`` as floats; std is the population std
        (ddof 0) and ``non_zero_perc`` is a fraction in [0, 1].
    """
    out: dict[str, float] = {}
    n = patch.shape[0] * patch.shape[1]
    for c, prefix in enumerate(("nucleus", "wholecell")):
        channel = patch[..., c]
        out[f"{prefix}_mean"] = float(channel.mean(dtype=np.float64))
        out[f"{prefix}_std"] = float(channel.std(dtype=np.float64))
        out[f"{prefix}_non_zero_perc"] = float(np.count_nonzero(channel)) / n
    return out


def qc_flags(
    stats: pd.DataFrame,
    non_zero_perc_threshold: float = 0.05,
    mean_intensity_threshold: float = 1.0,
) -> pd.DataFrame:
    """QC flags from the nucleus statistics only (reference §1.4, strict ``<``).

    Parameters
    ----------
    stats : pandas.DataFrame
        Needs ``nucleus_non_zero_perc`` and ``nucleus_mean``.

    Returns
    -------
    pandas.DataFrame
        Boolean columns ``is_empty, is_noisy, is_bad_patch, is_informative``, same index.
    """
    empty = stats["nucleus_non_zero_perc"].to_numpy() < non_zero_perc_threshold
    noisy = stats["nucleus_mean"].to_numpy() < mean_intensity_threshold
    bad = empty | noisy
    return pd.DataFrame(
        {"is_empty": empty, "is_noisy": noisy, "is_bad_patch": bad, "is_informative": ~bad},
        index=stats.index,
    )


def _metadata(grid: PatchGrid, stats: list[dict[str, float]], config: PatchConfig) -> pd.DataFrame:
    frame = grid.to_frame()
    ids = np.arange(grid.n_patches, dtype=np.int64)
    if grid.split_mode == "patches":
        meta = pd.DataFrame({
            "patch_id": ids,
            "x_start": frame["x_start"],
            "y_start": frame["y_start"],
            "height": frame["height"],
            "width": frame["width"],
        })
    else:
        meta = pd.DataFrame({
            "patch_id": ids,
            "patch_index": ids,
            "x_start": frame["x_start"],
            "y_start": frame["y_start"],
            "patch_width": frame["width"],
            "patch_height": frame["height"],
            "height": frame["height"],
            "width": frame["width"],
        })
    stat_frame = pd.DataFrame(stats, columns=list(STAT_COLUMNS))
    flags = qc_flags(stat_frame, config.non_zero_perc_threshold, config.mean_intensity_threshold)
    return pd.concat([meta, stat_frame, flags], axis=1)


# --------------------------------------------------------------------------------------------
# writing


def _windows(grid: PatchGrid, bytes_per_pixel: int, budget: int) -> list[list[int]]:
    """Group consecutive patches sharing a row (same y and height) into windows under budget."""
    groups: list[list[int]] = []
    for i, (y, x, h, w) in enumerate(grid.boxes):
        if groups:
            first = grid.boxes[groups[-1][0]]
            span = x + w - first[1]
            if first[0] == y and first[2] == h and x > first[1] and (
                h * span * bytes_per_pixel <= budget
            ):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def _read_window(
    slide: Slide, channels: list[int], y0: int, y1: int, x0: int, x1: int
) -> np.ndarray:
    """Extracted ``(y1 - y0, x1 - x0, 2)`` window, zero beyond the slide edge (padding).

    Channels are read one at a time into the output, so the window costs its two output channels
    plus one channel being read.
    """
    out = np.zeros((y1 - y0, x1 - x0, 2), dtype=slide.dtype)
    ry, rx = min(y1, slide.height), min(x1, slide.width)
    if ry <= y0 or rx <= x0:
        return out
    nucleus = out[: ry - y0, : rx - x0, 0]
    whole = out[: ry - y0, : rx - x0, 1]
    nucleus[...] = _read_channel(slide, channels[0], y0, ry, x0, rx)
    if len(channels) == 2:
        whole[...] = _read_channel(slide, channels[1], y0, ry, x0, rx)
    else:  # reference §1.1: max over the markers, starting from zeros of the nucleus dtype
        for c in channels[1:]:
            np.maximum(whole, _read_channel(slide, c, y0, ry, x0, rx), out=whole)
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


def write_patch_store(
    slide: str | Path | np.ndarray | da.Array | Slide,
    out: str | Path,
    config: PatchConfig,
    *,
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Cut a slide into a patch store ``out`` (a ``NAME.zarr`` directory).

    Peak memory is a few patches: one window (a run of patches of one patch row that fits
    ``window_bytes``, at least one patch) is read, measured and written at a time. In
    ``full_image`` mode the single patch is the whole slide, so that mode holds the two-channel
    slide (plus the markers being combined) in memory; ``halves``/``quarters`` hold one
    half/quarter at a time. This is inherent to those modes.

    The store is written to ``NAME.zarr.tmp-<pid>`` beside ``out`` and renamed at the end, so an
    interrupted write never leaves a ``NAME.zarr`` that looks complete.

    Parameters
    ----------
    slide : path, numpy/dask array or Slide
        Any format :func:`codexdask.slide.open_slide` reads; arrays are ``(C, H, W)``.
    out : path
        Store directory to create.
    config : PatchConfig
        Channels, geometry and QC thresholds (``config.antibodies`` and ``config.image_mpp``
        override the file's names and microns per pixel).
    channel_names : sequence of str, optional
        Channel names for an in-memory array (or to override the file's).
    overwrite : bool
        Replace an existing ``out``; otherwise an existing ``out`` is refused.
    window_bytes : int
        Upper bound on one window's pixels (its two output channels plus the channel being
        read); a window always holds at least one patch.
    progress : callable, optional
        Called as ``progress(done, total)`` with patch counts after each window.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    SlideError, InputError
        Unreadable slide, unknown channel names, NaN/inf pixels.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{str(out)!r} already exists; choose another --out or pass --overwrite to replace it"
        )
    opened = open_slide(
        slide, antibodies=config.antibodies, channel_names=channel_names,
        image_mpp=config.image_mpp,
    )
    channels = [opened.channel_index(config.nucleus)]
    channels += [opened.channel_index(m) for m in config.wholecell]
    grid = patch_grid(opened.height, opened.width, config)
    mpp = opened.image_mpp if opened.image_mpp is not None else DEFAULT_IMAGE_MPP

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write(opened, channels, grid, tmp, config, mpp, window_bytes, progress)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(
    slide: Slide,
    channels: list[int],
    grid: PatchGrid,
    tmp: Path,
    config: PatchConfig,
    mpp: float,
    window_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    ph, pw = grid.patch_shape
    dtype = slide.dtype
    root = zarr.group(store=zarr.DirectoryStore(str(tmp)), overwrite=True)
    patches = root.create_dataset(
        PATCHES_ARRAY,
        shape=(grid.n_patches, ph, pw, 2),
        chunks=(1, ph, pw, 2),
        dtype=dtype,
        compressor=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
        fill_value=0,
    )
    stats: list[dict[str, float]] = []
    bytes_per_pixel = 3 * dtype.itemsize  # two output channels + the channel being read
    done = 0
    for group in _windows(grid, bytes_per_pixel, window_bytes):
        y0, x0, h, _ = grid.boxes[group[0]]
        last = grid.boxes[group[-1]]
        window = _read_window(slide, channels, y0, y0 + h, x0, last[1] + last[3])
        stats += _store_window(patches, window, x0, [(i, *grid.boxes[i][1::2]) for i in group])
        del window  # free it before the next window is read
        done += len(group)
        if progress is not None:
            progress(done, grid.n_patches)
    meta = _metadata(grid, stats, config)
    meta.to_csv(tmp / METADATA_FILE, index=False)
    root.attrs["codexdask"] = {
        "kind": STORE_KIND,
        "version": STORE_VERSION,
        "codexdask_version": __version__,
        "channels": list(slide.channel_names),
        "nucleus_channel": config.nucleus,
        "wholecell_channels": list(config.wholecell),
        "image_mpp": float(mpp),
        "image_mpp_from": "config" if config.image_mpp is not None else (
            "file" if slide.image_mpp is not None else "default"
        ),
        "split_mode": grid.split_mode,
        "split_direction": config.split_direction,
        "patch_size": [ph, pw],
        "overlap": grid.overlap,
        "step": list(grid.step),
        "slide_shape": list(grid.slide_shape),
        "padded_shape": list(grid.padded_shape),
        "n_patches": grid.n_patches,
        "n_informative": int(meta["is_informative"].sum()),
        "non_zero_perc_threshold": float(config.non_zero_perc_threshold),
        "mean_intensity_threshold": float(config.mean_intensity_threshold),
        "source": slide.source,
        "source_format": slide.format,
        "dtype": dtype.str,
    }


def _store_window(
    patches: zarr.Array, window: np.ndarray, x0: int, tiles: list[tuple[int, int, int]]
) -> list[dict[str, float]]:
    """Write the tiles ``(index, x_start, width)`` of ``window`` (``(h, w, 2)``); their stats."""
    ph, pw = patches.shape[1:3]
    stats = []
    for i, x, w in tiles:
        tile = window[:, x - x0 : x - x0 + w]
        stats.append(patch_statistics(tile))
        if tile.shape[:2] != (ph, pw):
            padded = np.zeros((ph, pw, 2), dtype=window.dtype)
            padded[: tile.shape[0], : tile.shape[1]] = tile
            tile = padded
        patches[i] = tile
    return stats


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, moving an existing ``out`` aside first and deleting it after."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        if old.is_dir():
            shutil.rmtree(old)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def patch_slide(
    slide_path: str | Path, out: str | Path, config: PatchConfig, *, overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Entry point of ``codexdask patch``: cut ``slide_path`` into the patch store ``out``.

    See :func:`write_patch_store`; channel names come from the file or ``config.antibodies``.
    """
    return write_patch_store(slide_path, out, config, overwrite=overwrite, progress=progress)


# --------------------------------------------------------------------------------------------
# reading


@dataclasses.dataclass
class PatchStore:
    """An opened patch store.

    Attributes
    ----------
    path : pathlib.Path
    patches : zarr.Array
        ``(N, H, W, 2)``, numeric dtype, read-only.
    metadata : pandas.DataFrame
        One row per patch (``patches_metadata.csv``); flag columns are bool.
    attrs : dict
        The group's ``"codexdask"`` attributes.
    """

    path: Path
    patches: zarr.Array
    metadata: pd.DataFrame
    attrs: dict[str, Any]

    @property
    def n_patches(self) -> int:
        """Number of patches ``N``."""
        return int(self.patches.shape[0])

    @property
    def patch_shape(self) -> tuple[int, int]:
        """Stored patch height and width ``(H, W)``."""
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    @property
    def image_mpp(self) -> float:
        """Microns per pixel recorded at patching time (0.5 if absent)."""
        value = self.attrs.get("image_mpp")
        return float(value) if value is not None else DEFAULT_IMAGE_MPP

    @property
    def informative_indices(self) -> np.ndarray:
        """Positions of the informative patches, ascending, int64 ``(n_informative,)``."""
        return informative_indices(self.metadata)

    def as_dask(self) -> da.Array:
        """The patches as a lazy dask array ``(N, H, W, 2)``, one patch per chunk."""
        return da.from_zarr(self.patches)


def open_patch_store(path: str | Path) -> PatchStore:
    """Open and check a patch store written by :func:`write_patch_store`.

    Raises
    ------
    StoreError
        Missing path, not a codexdask patch store, a ``patches`` array that is not
        ``(N, H, W, 2)`` numeric, or metadata with missing columns / a different row count.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(
            f"patch store {str(path)!r} does not exist; run `codexdask patch SLIDE --out "
            f"{path.name}` first"
        )
    try:
        root = zarr.open_group(str(path), mode="r")
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError,
            OSError) as exc:
        raise StoreError(
            f"{str(path)!r} is not a Zarr group ({exc}); pass a patch store made by "
            "`codexdask patch`"
        ) from exc
    attrs = root.attrs.get("codexdask")
    if not isinstance(attrs, dict) or attrs.get("kind") != STORE_KIND:
        kind = attrs.get("kind") if isinstance(attrs, dict) else None
        what = (
            f"a codexdask {kind}" if kind
            else "not a codexdask patch store (no 'codexdask' attributes)"
        )
        raise StoreError(
            f"{str(path)!r} is {what}; create a patch store with `codexdask patch SLIDE --out "
            "NAME.zarr` and pass that"
        )
    if int(attrs.get("version", 0)) > STORE_VERSION:
        raise StoreError(
            f"{str(path)!r} was written by a newer codexdask (store version {attrs['version']}); "
            "upgrade codexdask"
        )
    if PATCHES_ARRAY not in root.array_keys():
        raise StoreError(
            f"{str(path)!r} has no '{PATCHES_ARRAY}' array; the store is incomplete, re-create it "
            "with `codexdask patch`"
        )
    patches = root[PATCHES_ARRAY]
    if patches.ndim != 4 or patches.shape[-1] != 2:
        raise StoreError(
            f"'{PATCHES_ARRAY}' in {str(path)!r} has shape {patches.shape}; expected (N, H, W, 2) "
            "(nucleus, whole-cell); re-create the store with `codexdask patch`"
        )
    dtype = np.dtype(patches.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise StoreError(
            f"'{PATCHES_ARRAY}' in {str(path)!r} has dtype {dtype}, not an integer or float pixel "
            "type; re-create the store from a numeric slide"
        )
    meta = _read_metadata(path, patches.shape[0])
    return PatchStore(path=path, patches=patches, metadata=meta, attrs=dict(attrs))


def _read_metadata(path: Path, n_patches: int) -> pd.DataFrame:
    file = path / METADATA_FILE
    if not file.is_file():
        raise StoreError(
            f"{str(path)!r} has no {METADATA_FILE}; the store is incomplete, re-create it with "
            "`codexdask patch`"
        )
    try:
        meta = pd.read_csv(file)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise StoreError(
            f"{str(file)!r} cannot be read as CSV ({exc}); re-create the store"
        ) from exc
    missing = [c for c in _REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise StoreError(
            f"{str(file)!r} lacks the columns {', '.join(missing)}; re-create the store with "
            "`codexdask patch` (or add the columns, e.g. x_start/y_start from the patch grid)"
        )
    if len(meta) != n_patches:
        raise StoreError(
            f"{str(file)!r} has {len(meta)} rows but the store holds {n_patches} patches; the "
            "metadata belongs to another store: re-create it with `codexdask patch`"
        )
    for column in FLAG_COLUMNS:
        meta[column] = _as_bool(meta[column], column, file)
    return meta


def _as_bool(values: pd.Series, column: str, file: Path) -> pd.Series:
    if values.dtype == bool:
        return values
    mapped = values.astype(str).str.strip().str.lower().map(
        {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    )
    if mapped.isna().any():
        raise StoreError(
            f"column {column!r} of {str(file)!r} must hold True/False; found "
            f"{values[mapped.isna()].iloc[0]!r}"
        )
    return mapped.astype(bool)
