"""Multiplexed slides with known cells, finished runs on them, and the plain reference tables.

:func:`cell_slide` draws small round cells (a nucleus of half the radius) in a DAPI and a CD45
channel above the components segmenter's threshold, plus channels of random 16-bit pixels over
the whole range; :func:`segmented_run` writes it as an OME-TIFF, cuts it into a patch store and
segments it with :func:`helpers.large_objects.components_segmenter` on a real cluster.
:func:`reference_table` is what the quantification must equal: ``np.bincount`` means per channel
and ``regionprops`` per object, on the same masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from skimage.measure import regionprops

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine.runner import run
from codexdask.layout import DONE_ARRAY, MASK_NAMES, RESULT_STORE
from codexdask.outputs import create_result_store, write_manifest
from codexdask.repair.masks import repair_masks
from codexdask.seamless.blocks import Blocks
from codexdask.store.patch_store import patch_slide
from helpers.large_objects import THRESHOLD, components_segmenter

CHANNELS = ["DAPI", "CD45", "Ki67", "CD8", "PanCK"]
#: regionprops attribute of each shape column (centroids handled apart).
REGIONPROPS = {"Area": "area", "MajorAxisLength": "axis_major_length",
               "MinorAxisLength": "axis_minor_length", "Eccentricity": "eccentricity",
               "Solidity": "solidity", "Extent": "extent", "Orientation": "orientation",
               "Perimeter": "perimeter", "ConvexArea": "area_convex"}
EXACT = {"Area", "ConvexArea", "Solidity", "Extent"}


def cell_slide(height: int, width: int, seed: int = 0, density: int = 250,
               apart: bool = False) -> np.ndarray:
    """``(C, H, W)`` uint16 with one cell per ``density`` pixels (radius 3-7 px); with
    ``apart`` a cell that would touch another is not drawn (no merged clusters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = rng.integers(0, 65536, size=(len(CHANNELS), height, width)).astype(np.uint16)
    image[:2] = rng.integers(1, 101, size=(2, height, width))
    for _ in range(height * width // density):
        cy, cx, r = rng.uniform(-4, height + 4), rng.uniform(-4, width + 4), rng.uniform(3, 7)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if apart and (image[1][d2 <= (r + 2) ** 2] > THRESHOLD).any():
            continue
        image[1][d2 <= r * r] = rng.integers(THRESHOLD + 1, 5000)
        image[0][d2 <= (r / 2) ** 2] = rng.integers(THRESHOLD + 1, 5000)
    return image


def write_slide(path: Path, image: np.ndarray, names: list[str] | None = None) -> Path:
    """``image`` as an OME-TIFF with channel names and 0.5 µm pixels."""
    tifffile.imwrite(path, image, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": names or CHANNELS},
                               "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path


def segmented_run(folder: Path, image: np.ndarray, client, *, split_mode: str = "full_image",
                  patch_size: int = 96, overlap: float = 0.3) -> Path:
    """Write, patch and segment ``image``; the run's output directory."""
    folder.mkdir(parents=True, exist_ok=True)
    slide = write_slide(folder / "slide.ome.tif", image)
    store = patch_slide(slide, folder / "slide.zarr", PatchConfig(
        nucleus="DAPI", wholecell=["CD45"], split_mode=split_mode, chunk_size=64,
        patch_size=(patch_size, patch_size), overlap=overlap, non_zero_perc_threshold=0.0))
    config = SegmentConfig(block_size=64, halo=12, save_mosaics=False, save_pickles=False,
                           n_overlays=0)
    run(store, folder / "out", config, client=client, segmenter=components_segmenter())
    return folder / "out"


def run_from_masks(folder: Path, image: np.ndarray, cell: np.ndarray, nucleus: np.ndarray,
                   names: list[str], chunk: int = 128) -> Path:
    """A finished ``full_image`` run whose masks are ``cell`` and ``nucleus`` (repaired here):
    the slide as an OME-TIFF, its patch store, the result store and the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    slide = write_slide(folder / "slide.ome.tif", image, names)
    store = patch_slide(slide, folder / "slide.zarr", PatchConfig(
        nucleus=names[0], wholecell=[names[1]], split_mode="full_image", chunk_size=64,
        non_zero_perc_threshold=0.0))
    out = folder / "out"
    out.mkdir()
    group = create_result_store(out / RESULT_STORE, 1, cell.shape, patch_store=store.resolve(),
                                blocks=Blocks(chunk, 0))
    masks = {"cell": cell, "nucleus": nucleus, **repair_masks(cell, nucleus)}
    for name in MASK_NAMES:
        if name in masks:
            group[name][0] = np.asarray(masks[name], np.uint32)
    group[DONE_ARRAY][0] = True
    write_manifest(out, {"written_by": "tests/helpers/quant_slides.py"})
    return out


def reference_table(image: np.ndarray, labels: np.ndarray, *,
                    shapes: np.ndarray | None = None) -> pd.DataFrame:
    """One row per label of ``labels`` (ascending): ``label``, the mean of each channel by
    ``np.bincount``, centroid, and regionprops of ``shapes`` (default ``labels``) per label."""
    shapes = labels if shapes is None else shapes
    flat = labels.reshape(-1).astype(np.int64)
    ids = np.unique(flat[flat > 0])
    counts = np.bincount(flat)
    table = {"label": ids}
    for channel, name in enumerate(CHANNELS[: image.shape[0]]):
        sums = np.bincount(flat, weights=image[channel].reshape(-1).astype(np.float64))
        table[name] = sums[ids] / counts[ids]
    rows, cols = np.indices(labels.shape)
    table["Y_centroid"] = np.bincount(flat, rows.reshape(-1).astype(np.float64))[ids] / counts[ids]
    table["X_centroid"] = np.bincount(flat, cols.reshape(-1).astype(np.float64))[ids] / counts[ids]
    table["Area"] = counts[ids]
    props = {p.label: p for p in regionprops(shapes.astype(np.int64))}
    for column, attr in REGIONPROPS.items():
        table[f"shape_{column}"] = [float(getattr(props[i], attr)) if i in props else np.nan
                                    for i in ids]
    return pd.DataFrame(table)


def assert_matches_reference(measured: pd.DataFrame, expected: pd.DataFrame,
                             markers: list[str], with_shape: bool = True) -> float:
    """Every marker mean, the centroid and area, and (``with_shape``) every shape column.

    Returns the worst relative difference of the shape columns computed in floating point.
    """
    assert len(measured) == len(expected)
    for name in markers:
        np.testing.assert_allclose(measured[name].to_numpy(), expected[name].to_numpy(),
                                   rtol=1e-12, err_msg=name)
    for column in ("X_centroid", "Y_centroid"):
        np.testing.assert_allclose(measured[column], expected[column], rtol=1e-14, atol=1e-12)
    np.testing.assert_array_equal(measured["Area"].to_numpy(), expected["Area"].to_numpy())
    worst = 0.0
    for column in REGIONPROPS if with_shape else ():
        if column == "Area":
            continue
        got, want = measured[column].to_numpy(float), expected[f"shape_{column}"].to_numpy()
        if column in EXACT:
            np.testing.assert_array_equal(got, want, err_msg=column)
        else:
            error = np.abs(got - want) / np.maximum(1.0, np.abs(want))
            assert error.max(initial=0) <= 1e-9, (column, error.max())
            worst = max(worst, float(error.max(initial=0)))
    return worst


def _injected_failure(*args, **kwargs):
    raise RuntimeError("injected failure of the shapes pass")


def break_shapes_pass() -> None:
    """Make this process's shapes-pass task fail (run on every worker with ``client.run``)."""
    from codexdask.quantification import tasks

    tasks.window_task, tasks.working_window_task = _injected_failure, tasks.window_task


def mend_shapes_pass() -> None:
    """Undo :func:`break_shapes_pass`."""
    from codexdask.quantification import tasks

    tasks.window_task = tasks.working_window_task
