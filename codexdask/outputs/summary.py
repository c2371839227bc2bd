"""The run's summary files: ``patches_metadata.csv`` with the repair statistics, and the manifest.

Both are written atomically; ``run_manifest.json`` is written last by the engine, so a directory
holding it holds a complete run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from codexdask._version import __version__
from codexdask.atomic import atomic_path
from codexdask.errors import InputError, StoreError
from codexdask.layout import COUNT_COLUMNS, MANIFEST, RESULT_STAT_COLUMNS

if TYPE_CHECKING:
    from codexdask.config import SegmentConfig
    from codexdask.store.patch_store import PatchStore

__all__ = [
    "load_manifest",
    "package_versions",
    "run_manifest",
    "write_manifest",
    "write_metadata_csv",
]


def write_metadata_csv(
    metadata: pd.DataFrame, stats: pd.DataFrame | None, path: str | os.PathLike[str]
) -> pd.DataFrame:
    """Write the patch metadata plus the per-patch stats as ``patches_metadata.csv``.

    Parameters
    ----------
    metadata : DataFrame
        N rows (patch order) with a bool ``is_informative`` column (the patch store's metadata).
        Existing RESULT_STAT_COLUMNS are replaced when ``stats`` is given.
    stats : DataFrame or None
        N rows with ``RESULT_STAT_COLUMNS`` (e.g. :func:`~codexdask.outputs.read_stats_table`).
        None writes ``metadata`` unchanged.
    path : path
        Output CSV, written atomically with ``index=False``.

    Returns
    -------
    DataFrame
        The table written (RangeIndex).

    Notes
    -----
    Non-informative rows get NaN (an empty CSV cell) in every stat column. Count columns are
    written as integers (nullable ``Int64``), the rest as floats.
    """
    out = metadata.reset_index(drop=True)
    if stats is not None:
        if len(metadata) != len(stats):
            raise InputError(f"metadata has {len(metadata)} rows but stats has {len(stats)}")
        if "is_informative" not in metadata.columns:
            raise InputError("metadata lacks the is_informative column; pass the patch store "
                             "metadata")
        missing = [c for c in RESULT_STAT_COLUMNS if c not in stats.columns]
        if missing:
            raise InputError(f"stats lacks columns {missing}")
        out = out.drop(columns=[c for c in RESULT_STAT_COLUMNS if c in out.columns])
        values = stats.loc[:, list(RESULT_STAT_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
        informative = out["is_informative"].astype(bool).to_numpy()
        values[~informative] = np.nan
        table = pd.DataFrame(values, columns=list(RESULT_STAT_COLUMNS))
        for column in COUNT_COLUMNS:
            table[column] = table[column].round().astype("Int64")
        out = pd.concat([out, table], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return out


def write_manifest(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``out_dir/run_manifest.json`` atomically (json, indent 2, ``default=str``)."""
    path = Path(out_dir) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(manifest), indent=2, default=str) + "\n")
    return path



def run_manifest(
    patch_store: PatchStore,
    config: SegmentConfig,
    plan: Mapping[str, Any],
    n_informative: int,
    n_computed: int,
    timings: Mapping[str, float],
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything needed to reproduce and audit a run (the content of ``run_manifest.json``).

    ``plan`` is the run's plan as a dict (split mode, blocks, batch sizes, the weights and
    their SHA-256, ...); ``n_informative`` and ``n_computed`` count the informative patches and
    those computed by this run; ``warnings`` what the run logged as warnings (e.g. a GPU whose
    memory could not be measured).
    """
    return {
        "codexdask_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "patch_store": str(patch_store.path.resolve()),
        "config": dataclasses.asdict(config),
        "image_mpp": plan["image_mpp"],
        "n_patches": patch_store.n_patches,
        "n_informative": int(n_informative),
        "n_computed": int(n_computed),
        "plan": dict(plan),
        "timings": dict(timings),
        "versions": package_versions(),
        "warnings": list(warnings),
    }


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``out_dir/run_manifest.json``.

    Raises
    ------
    StoreError
        If the file is missing: the run did not complete.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{out_dir} holds no complete run ({MANIFEST} missing); run it again")
    return dict(json.loads(path.read_text()))


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the results (PyTorch, TensorFlow and deepcell only if
    already imported)."""
    names = ["numpy", "scipy", "skimage", "dask", "distributed", "zarr", "pandas"]
    names += [name for name in ("torch", "tensorflow", "deepcell") if name in sys.modules]
    versions = {"python": sys.version.split()[0]}
    for name in names:
        module = sys.modules.get(name) or __import__(name)
        versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions
