"""The quantification's files: AnnData tables, mcquant's CSVs, the marker list, the manifest.

Every file is written under a temporary name and renamed, and ``quant_manifest.json`` is written
last, so an interrupted run never leaves a directory that looks complete. Columns are described
in the README (``Outputs reference``) and ``docs/quantification.md``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib.metadata
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from codexdask import _version
from codexdask.atomic import atomic_path
from codexdask.config import QuantifyConfig
from codexdask.layout import (
    CELLS_H5AD,
    MARKERS_FILE,
    NUCLEI_H5AD,
    QUANT_MANIFEST,
    compartment_csv_name,
)
from codexdask.quantification.shapes import SHAPE_COLUMNS
from codexdask.quantification.table import COMPARTMENT_LAYERS, Measured

if TYPE_CHECKING:
    import anndata

__all__ = ["cell_ids", "to_anndata", "write_manifest", "write_tables"]

#: Shape columns besides the exact place (centroid and area) of a compartment.
OTHER_SHAPE_COLUMNS = tuple(c for c in SHAPE_COLUMNS
                            if c not in ("X_centroid", "Y_centroid", "Area"))
#: The shape mask whose columns each compartment's table carries (a cytoplasm is the cell's).
SHAPE_OF = {"cell": "cell", "nucleus": "nucleus", "cytoplasm": "cell"}


def cell_ids(table: Measured, split_mode: str) -> np.ndarray:
    """``CellID``: the mask's own id where ids are slide-wide (``full_image``), else 1..n."""
    if split_mode == "full_image":
        return table.keys["label"].to_numpy(np.int64)
    return np.arange(1, len(table) + 1, dtype=np.int64)


def compartment_frame(
    table: Measured, compartment: str, markers: Sequence[str], ids: np.ndarray
) -> pd.DataFrame:
    """mcquant's table of one compartment: ``CellID``, markers, statistics, then shape."""
    columns: dict[str, Any] = {"CellID": ids}
    stats = table.stats[compartment]
    for stat, values in stats.items():
        suffix = "" if stat == "mean" else f"_{stat}"
        columns.update({f"{m}{suffix}": values[:, i] for i, m in enumerate(markers)})
    columns.update(table.places[compartment].to_dict("series"))
    shapes = table.shapes.get(SHAPE_OF[compartment])
    if shapes is not None:
        columns.update({c: shapes[c].to_numpy() for c in OTHER_SHAPE_COLUMNS})
    columns["patch_id"] = table.keys["patch_id"].to_numpy()
    columns["label"] = table.keys["label"].to_numpy()
    return pd.DataFrame({k: np.asarray(v) for k, v in columns.items()})


def to_anndata(
    table: Measured, main: str, markers: Sequence[str], given: Sequence[str], ids: np.ndarray,
    uns: Mapping[str, Any],
) -> anndata.AnnData:
    """An AnnData of one object set: ``X`` the ``main`` compartment's means (float32).

    ``layers`` hold the other compartments' means (``nucleus_mean``, ``cytoplasm_mean``) and
    every other statistic as ``{compartment}_{stat}``; ``obs`` the ids, the place and shape
    (mcquant's names; other compartments' prefixed); ``obsm["spatial"]`` the centroid.
    """
    import anndata  # noqa: PLC0415 - only the writer needs it (and its import is slow)

    layers = {f"{c}_{s}": values.astype(np.float32)
              for c, stats in table.stats.items() for s, values in stats.items()
              if (c, s) != (main, "mean")}
    obs: dict[str, Any] = {"CellID": ids, "patch_id": table.keys["patch_id"].to_numpy(),
                           "label": table.keys["label"].to_numpy()}
    mpp = float(uns["image_mpp"])
    for compartment, place in table.places.items():
        prefix = "" if compartment == main else f"{compartment}_"
        for column in place.columns:
            obs[prefix + column] = place[column].to_numpy()
        if compartment in table.shapes:
            shapes = table.shapes[compartment]
            obs.update({prefix + c: shapes[c].to_numpy() for c in OTHER_SHAPE_COLUMNS})
    obs["X_centroid_um"] = obs["X_centroid"] * mpp
    obs["Y_centroid_um"] = obs["Y_centroid"] * mpp
    obs_frame = pd.DataFrame(obs, index=pd.Index([str(i) for i in ids], name="cell"))
    var = pd.DataFrame({"channel_index": np.arange(len(markers), dtype=np.int64),
                        "marker_name": list(given)},
                       index=pd.Index(list(markers), name="marker"))
    adata = anndata.AnnData(
        X=table.stats[main]["mean"].astype(np.float32).reshape(len(ids), len(markers)),
        obs=obs_frame, var=var, layers=layers, uns={"codexdask": dict(uns)})
    adata.obsm["spatial"] = np.column_stack([obs["X_centroid"], obs["Y_centroid"]])
    return adata


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and None as "" (what an h5ad's ``uns`` can hold)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return "" if value is None else value


def write_tables(
    out_dir: Path, tables: Mapping[str, Measured], markers: Sequence[str], given: Sequence[str],
    config: QuantifyConfig, manifest: Mapping[str, Any],
) -> list[Path]:
    """Write the AnnData files, one CSV per compartment and ``markers.csv``; the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    uns = _plain({
        "image_mpp": manifest["image_mpp"],
        "units": {"centroid": "pixels (X/Y_centroid), microns (*_um)", "area": "pixels",
                  "lengths": "pixels", "orientation": "radians"},
        "statistics": list(manifest["statistics"]), "masks": config.masks,
        "slide": manifest["slide"], "split_mode": manifest["split_mode"],
        "versions": {name: importlib.metadata.version(name)
                     for name in ("anndata", "numpy", "scikit-image", "pandas")}
        | {"codexdask": _version.__version__},
    })
    # The CSVs are formatted in threads (pyarrow releases the GIL) while the h5ad is written.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        csvs = []
        for name, table in tables.items():
            ids = cell_ids(table, manifest["split_mode"])
            for compartment in COMPARTMENT_LAYERS[config.masks][name]:
                path = out_dir / compartment_csv_name(compartment)
                frame = compartment_frame(table, compartment, markers, ids)
                csvs.append(pool.submit(write_csv, path, frame))
                written.append(path)
            adata = to_anndata(table, name, markers, given, ids, uns)
            path = out_dir / (CELLS_H5AD if name == "cell" else NUCLEI_H5AD)
            with atomic_path(path) as tmp:
                adata.write_h5ad(tmp)
            written.append(path)
        for done in csvs:
            done.result()  # a failed write raises here
    path = out_dir / MARKERS_FILE
    with atomic_path(path) as tmp:
        pd.DataFrame({"channel_number": np.arange(1, len(markers) + 1),
                      "marker_name": list(markers)}).to_csv(tmp, index=False)  # a few rows
    written.append(path)
    return written


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """``frame`` as CSV, atomically: floats in their shortest round-trip form, NaN empty.

    pyarrow's writer formats numbers about 14x faster than ``DataFrame.to_csv`` (a table of a
    million cells is tens of millions of numbers); the header is written plainly, as mcquant's.
    """
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pa_csv  # noqa: PLC0415

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(frame.columns)
        fh.write(header.getvalue().encode())
        pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), fh,
                         pa_csv.WriteOptions(include_header=False, quoting_style="needed"))


def write_manifest(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``out_dir/quant_manifest.json`` atomically, last."""
    path = Path(out_dir) / QUANT_MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(manifest), indent=2, default=str) + "\n")
    return path
