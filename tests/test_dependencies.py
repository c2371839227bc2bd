"""codexdask installs next to the scverse / OME-Zarr stack where a lab analyses its cells.

pip resolves codexdask's main extras together with anndata, spatialdata >= 0.8 and ome-zarr >= 0.21
on Python 3.12 (the reader environment's python; a dry run into an empty environment, nothing
is installed). An upper pin that shuts codexdask out of that stack (``zarr<3`` did) fails here.
Needs PyPI; takes one to five minutes, most of it pip's resolver.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers.ngff_reader import reader_python

ROOT = Path(__file__).resolve().parents[1]
STACK = ("anndata", "spatialdata>=0.8", "ome-zarr>=0.21")


@pytest.mark.timeout(1200)
def test_main_extras_resolve_with_spatialdata_and_ome_zarr_on_python_312(tmp_path):
    python = reader_python()
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "(3, 12)", version
    report = tmp_path / "report.json"
    done = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), f"{ROOT}[mesmer,gpu]", *STACK],
        capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert {"codexdask", "zarr", "anndata", "spatialdata", "ome-zarr", "torch",
            "dask-cuda"} <= set(resolved), resolved
    assert int(resolved["zarr"].split(".")[0]) >= 3
    assert tuple(int(v) for v in resolved["spatialdata"].split(".")[:2]) >= (0, 8)
    assert tuple(int(v) for v in resolved["ome-zarr"].split(".")[:2]) >= (0, 21)
