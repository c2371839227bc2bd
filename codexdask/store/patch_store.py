"""Patch stores: write a slide as patches with their QC metadata, and open a store again.

A patch store is a directory ``NAME.zarr`` (a Zarr v3 group, v2 with ``zarr_format=2``; both are
read; names in :mod:`codexdask.layout`):

- in ``patches`` mode, array ``patches``: ``(N, H, W, 2)``, the slide's dtype, chunks
  ``(1, H, W, 2)``, Blosc zstd; channel 0 nucleus, channel 1 whole-cell (the "patches" layout);
- in ``full_image``, ``halves`` and ``quarters`` modes, array ``image``: the whole slide
  ``(H, W, 2)`` in ``chunk_size``² chunks (the "image" layout, :mod:`codexdask.store.slide_store`):
  each logical patch is a box of it and is segmented as one image;
- file ``patches_metadata.csv``: one row per patch, in patch order: the geometry
  (:mod:`codexdask.store.placement`), the QC statistics and flags
  (:mod:`codexdask.store.selection`).
- group attribute ``"codexdask"``: the slide's facts and the geometry.

Writing never holds the slide in memory: it reads one window (a run of patches in one patch row,
or a band of chunks, at most ``window_bytes``) at a time, computes its statistics and writes it.
The store is written under a temporary name and renamed when complete
(:mod:`codexdask.atomic`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import zarr

from codexdask._version import __version__
from codexdask.atomic import atomic_path
from codexdask.boxes import Box
from codexdask.config import PatchConfig
from codexdask.errors import OutputExistsError, StoreError
from codexdask.layout import (
    DEFAULT_IMAGE_MPP,
    FLAG_COLUMNS,
    GEOMETRY_COLUMNS,
    IMAGE_ARRAY,
    METADATA_FILE,
    PATCH_STORE_KIND,
    PATCHES_ARRAY,
    QC_STAT_COLUMNS,
)
from codexdask.store import selection
from codexdask.store.formats import create_array, new_group
from codexdask.store.placement import PatchGrid, patch_grid
from codexdask.store.slide import Slide, open_slide, read_window
from codexdask.store.slide_store import PIXEL_COMPRESSOR, image_attrs, write_slide_image

__all__ = ["PatchStore", "open_patch_store", "patch_slide", "write_patch_store"]

#: Version of the store format: 1 for the patches layout, 2 for the image layout.
STORE_VERSION = 2
#: Default upper bound on one window's pixel bytes (two output channels + one being read).
DEFAULT_WINDOW_BYTES = 64 * 2**20
_REQUIRED_COLUMNS = (*GEOMETRY_COLUMNS, *QC_STAT_COLUMNS, *FLAG_COLUMNS)


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
    stat_frame = pd.DataFrame(stats, columns=list(QC_STAT_COLUMNS))
    flags = selection.qc_flags(
        stat_frame, config.non_zero_perc_threshold, config.mean_intensity_threshold
    )
    return pd.concat([meta, stat_frame, flags], axis=1)




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

    Peak memory is one window: in ``patches`` mode a run of patches of one patch row that fits
    ``window_bytes`` (at least one patch); in ``full_image``, ``halves`` and ``quarters`` modes a
    band of ``chunk_size`` rows that fits ``window_bytes`` (at least one chunk), written into the
    chunked ``image`` array whatever the slide size.

    The store is written to ``.NAME.zarr.tmp-<pid>`` beside ``out`` and renamed at the end, so an
    interrupted write never leaves a ``NAME.zarr`` that looks complete; temporaries that killed
    runs left behind are removed (and logged) first.

    Parameters
    ----------
    slide : path, numpy/dask array or Slide
        Any format :func:`codexdask.store.slide.open_slide` reads; arrays are ``(C, H, W)``.
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
    with atomic_path(out, replace_dir=True) as tmp:
        _write(opened, channels, grid, tmp, config, mpp, window_bytes, progress)
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
    root = new_group(tmp, config.zarr_format)
    if grid.split_mode == "patches":
        stats = _write_patches(slide, channels, grid, root, window_bytes, progress)
        layout: dict[str, Any] = {"layout": "patches"}
    else:
        stats = write_slide_image(slide, channels, grid, root, config, window_bytes, progress)
        layout = image_attrs(config)
    meta = _metadata(grid, stats, config)
    meta.to_csv(tmp / METADATA_FILE, index=False)
    root.attrs["codexdask"] = {
        "kind": PATCH_STORE_KIND,
        "version": 2 if grid.split_mode != "patches" else 1,
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
        **layout,
    }


def _write_patches(
    slide: Slide,
    channels: list[int],
    grid: PatchGrid,
    root: zarr.Group,
    window_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, float]]:
    """Write ``grid``'s patches into ``root[PATCHES_ARRAY]`` one window at a time."""
    ph, pw = grid.patch_shape
    patches = create_array(root, PATCHES_ARRAY, shape=(grid.n_patches, ph, pw, 2),
                           chunks=(1, ph, pw, 2), dtype=slide.dtype, fill_value=0,
                           compressor=PIXEL_COMPRESSOR)
    stats: list[dict[str, float]] = []
    bytes_per_pixel = 3 * slide.dtype.itemsize  # two output channels + the channel being read
    done = 0
    for group in _windows(grid, bytes_per_pixel, window_bytes):
        y0, x0, h, _ = grid.boxes[group[0]]
        last = grid.boxes[group[-1]]
        window = read_window(slide, channels, y0, y0 + h, x0, last[1] + last[3])
        stats += _store_window(patches, window, x0, [(i, *grid.boxes[i][1::2]) for i in group])
        del window  # free it before the next window is read
        done += len(group)
        if progress is not None:
            progress(done, grid.n_patches)
    return stats


def _store_window(
    patches: zarr.Array, window: np.ndarray, x0: int, tiles: list[tuple[int, int, int]]
) -> list[dict[str, float]]:
    """Write the tiles ``(index, x_start, width)`` of ``window`` (``(h, w, 2)``); their stats."""
    ph, pw = patches.shape[1:3]
    stats = []
    for i, x, w in tiles:
        tile = window[:, x - x0 : x - x0 + w]
        stats.append(selection.patch_statistics(tile))
        if tile.shape[:2] != (ph, pw):
            padded = np.zeros((ph, pw, 2), dtype=window.dtype)
            padded[: tile.shape[0], : tile.shape[1]] = tile
            tile = padded
        patches[i] = tile
    return stats



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
    patches : zarr.Array or None
        ``(N, H, W, 2)``, numeric dtype, read-only (the "patches" layout).
    metadata : pandas.DataFrame
        One row per patch (``patches_metadata.csv``); flag columns are bool.
    attrs : dict
        The group's ``"codexdask"`` attributes.
    image : zarr.Array or None
        ``(H, W, 2)``: the whole slide, whose logical patches are boxes (the "image" layout).
    """

    path: Path
    patches: zarr.Array | None
    metadata: pd.DataFrame
    attrs: dict[str, Any]
    image: zarr.Array | None = None

    @property
    def layout(self) -> str:
        """``"patches"`` (one chunk per patch) or ``"image"`` (logical patches of one image)."""
        return "image" if self.image is not None else "patches"

    @property
    def split_mode(self) -> str:
        """How the slide was split: ``patches``, ``full_image``, ``halves`` or ``quarters``."""
        return str(self.attrs.get("split_mode", "patches"))

    @property
    def pixels(self) -> zarr.Array:
        """The pixel array of either layout."""
        array = self.image if self.image is not None else self.patches
        if array is None:  # open_patch_store never builds such a store
            raise StoreError(f"{self.path} holds no pixels")
        return array

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype."""
        return np.dtype(self.pixels.dtype)

    @property
    def n_patches(self) -> int:
        """Number of patches ``N``."""
        return len(self.metadata)

    @property
    def patch_shape(self) -> tuple[int, int]:
        """Stored patch height and width ``(H, W)`` (the largest logical patch's, for images)."""
        if self.patches is not None:
            return int(self.patches.shape[1]), int(self.patches.shape[2])
        return int(self.metadata["height"].max()), int(self.metadata["width"].max())

    @property
    def image_mpp(self) -> float:
        """Microns per pixel recorded at patching time (0.5 if absent)."""
        value = self.attrs.get("image_mpp")
        return float(value) if value is not None else DEFAULT_IMAGE_MPP

    @property
    def informative_indices(self) -> np.ndarray:
        """Positions of the informative patches, ascending, int64 ``(n_informative,)``."""
        return selection.informative_indices(self.metadata)

    def true_sizes(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """True ``(height, width)`` of the patches ``indices``, ``(K, 2)`` int64.

        Stored patches are ``patch_shape`` each; a half or a quarter of an odd-sized slide is
        one pixel smaller on a side and was zero-padded.
        """
        rows = self.metadata.iloc[np.asarray(indices, dtype=np.int64)]
        return rows[["height", "width"]].to_numpy(dtype=np.int64).reshape(-1, 2)

    def patch_box(self, index: int) -> Box:
        """Where patch ``index`` lies on the slide (its true size)."""
        row = self.metadata.iloc[int(index)]
        y, x = int(row["y_start"]), int(row["x_start"])
        return Box(y, x, y + int(row["height"]), x + int(row["width"]))

    def read_patch(self, index: int, region: Box | None = None) -> np.ndarray:
        """Patch ``index`` at its true size, ``(h, w, 2)``, or the part ``region`` of it
        (patch coordinates)."""
        box = self.patch_box(index)
        region = Box.whole(box.shape) if region is None else region
        if self.image is not None:
            return np.asarray(self.image[region.shift(box.top, box.left).slices()])
        return np.asarray(self.pixels[(int(index),) + region.slices()])

    def as_dask(self) -> da.Array:
        """The patches as a lazy dask array ``(N, H, W, 2)`` (zero-padded to ``patch_shape``)."""
        if self.image is None:
            return da.from_zarr(self.pixels)
        image = da.from_zarr(self.image)
        height, width = self.patch_shape
        parts = []
        for index in range(self.n_patches):
            box = self.patch_box(index)
            pad = ((0, height - box.shape[0]), (0, width - box.shape[1]), (0, 0))
            parts.append(da.pad(image[box.slices()], pad))
        return da.stack(parts)


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
    except (zarr.errors.NodeNotFoundError, ValueError, OSError) as exc:
        raise StoreError(
            f"{str(path)!r} is not a Zarr group ({exc}); pass a patch store made by "
            "`codexdask patch`"
        ) from exc
    attrs = root.attrs.get("codexdask")
    if not isinstance(attrs, dict) or attrs.get("kind") != PATCH_STORE_KIND:
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
    layout = attrs.get("layout", "patches")
    name = IMAGE_ARRAY if layout == "image" else PATCHES_ARRAY
    array = root.get(name)
    if not isinstance(array, zarr.Array):
        raise StoreError(
            f"{str(path)!r} has no '{name}' array; the store is incomplete, re-create it "
            "with `codexdask patch`"
        )
    expected = 3 if layout == "image" else 4
    if array.ndim != expected or array.shape[-1] != 2:
        axes = "(H, W, 2)" if layout == "image" else "(N, H, W, 2)"
        raise StoreError(
            f"'{name}' in {str(path)!r} has shape {array.shape}; expected {axes} "
            "(nucleus, whole-cell); re-create the store with `codexdask patch`"
        )
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise StoreError(
            f"'{name}' in {str(path)!r} has dtype {dtype}, not an integer or float pixel "
            "type; re-create the store from a numeric slide"
        )
    if layout == "image":
        meta = _read_metadata(path, int(attrs.get("n_patches", 0)))
        return PatchStore(path=path, patches=None, metadata=meta, attrs=dict(attrs), image=array)
    meta = _read_metadata(path, array.shape[0])
    return PatchStore(path=path, patches=array, metadata=meta, attrs=dict(attrs))


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
        meta[column] = selection.parse_flags(meta[column], column, repr(str(file)))
    return meta
