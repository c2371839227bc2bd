"""The notebooks in ``notebooks/`` run top to bottom and are stored without outputs.

Each notebook asserts its own results (result store, pickles, CSV and mosaics agree; scores
against the synthetic ground truth) and prints one ``OK ...`` summary line last; here they are
executed with nbclient in a kernel running this interpreter, in an empty working directory.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 (after the skips)
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
CLUSTER = NOTEBOOKS / "02_cluster.ipynb"
KERNEL_NAME = "codexdask-test-python"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel spec running ``sys.executable``: the venv's ipykernel, whatever else is set up.

    The notebooks name the usual ``python3`` kernel; a user-level ``python3`` spec could point
    at another interpreter, so the tests use a spec of their own.
    """
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "codexdask tests",
        "language": "python",
    }))
    return root


def execute(path: Path, kernel_dir: Path, cwd: Path, *, inject: str | None = None) -> Any:
    """Run the notebook at ``path`` in ``cwd``; ``inject`` is added after the parameters cell
    (what papermill does). Raises nbclient's CellExecutionError if a cell fails."""
    nb = nbformat.read(path, as_version=4)
    if inject is not None:
        position = next(i for i, cell in enumerate(nb.cells)
                        if "parameters" in cell.metadata.get("tags", []))
        cell = nbformat.v4.new_code_cell(inject)
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(position + 1, cell)
    manager = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
    )
    client = nbclient.NotebookClient(
        nb, km=manager, timeout=600, kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def text_output(nb: Any) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "text/plain" in output.get("data", {}):
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def check_executed(nb: Any, cwd: Path) -> str:
    """Common checks of an executed notebook; returns the text of its last cell."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    # Outputs went to a temporary directory, removed by the last cell; nothing in the cwd.
    work = re.search(r"working directory: (\S+)", text_output(nb))
    assert work is not None
    assert not Path(work.group(1)).exists()
    assert list(cwd.iterdir()) == []
    return "".join(o.text for o in code[-1].outputs if o.output_type == "stream")


def test_quickstart_runs(kernel_dir: Path, tmp_path: Path) -> None:
    nb = execute(QUICKSTART, kernel_dir, tmp_path)
    last = check_executed(nb, tmp_path)
    found = re.search(r"OK quickstart: (\d+) informative patches of (\d+), (\d+) cells, "
                      r"(\d+) matched, cell F1 ([\d.]+), (\d+) cells quantified", last)
    assert found is not None, last
    n_informative, n_patches, n_cells, n_matched = (int(found.group(k)) for k in range(1, 5))
    assert 0 < n_informative < n_patches        # the slide has empty and noisy patches
    assert 0 < n_matched <= n_cells
    # each matched cell once: fewer than the patches' matched cells, which count overlaps twice
    assert 0 < int(found.group(6)) < n_matched
    assert "Dask dashboard: http" in text_output(nb)
    images = [o for cell in nb.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # slide, QC grid, overlays, histograms, timing, a marker per cell


def test_cluster_runs_on_a_local_cluster(kernel_dir: Path, tmp_path: Path) -> None:
    nb = execute(CLUSTER, kernel_dir, tmp_path)
    last = check_executed(nb, tmp_path)
    found = re.search(r"OK cluster: (\d+) informative patches, workers: (\d+), (\d+) matched "
                      r"cells", last)
    assert found is not None, last
    assert int(found.group(1)) > 0 and int(found.group(3)) > 0
    assert int(found.group(2)) == 2             # N_LOCAL_WORKERS
    assert "slide.ome.zarr" in text_output(nb)


def test_cluster_connects_to_an_existing_scheduler(kernel_dir: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster:
        nb = execute(CLUSTER, kernel_dir, tmp_path,
                     inject=f"SCHEDULER_ADDRESS = {cluster.scheduler_address!r}")
        last = check_executed(nb, tmp_path)
        assert f"scheduler: {cluster.scheduler_address}" in text_output(nb)
        # The notebook closed its client but left the cluster it did not start running.
        assert cluster.status.name == "running"
    assert re.search(r"OK cluster: \d+ informative patches, workers: 1,", last), last


@pytest.mark.parametrize("path", [QUICKSTART, CLUSTER], ids=lambda p: p.name)
def test_notebook_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == []
        assert cell.execution_count is None


def test_every_notebook_is_tested() -> None:
    assert sorted(NOTEBOOKS.glob("*.ipynb")) == [QUICKSTART, CLUSTER]


def test_cluster_notebook_has_a_parameters_cell() -> None:
    nb = nbformat.read(CLUSTER, as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert re.search(r"^SCHEDULER_ADDRESS = None\b", tagged[0].source, re.MULTILINE)
