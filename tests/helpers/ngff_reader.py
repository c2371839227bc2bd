"""Read an OME-Zarr with ome-zarr-py, in the reader environment (Python >= 3.12, ome-zarr >= 0.21).

Run as a script, ``python tests/helpers/ngff_reader.py IMAGE.ome.zarr OUT.npz`` writes every
level of every node ome-zarr-py's ``Reader`` finds (the image, then its labels) as
``<node>/<level>`` arrays, and ``OUT.json``: the NGFF version ome-zarr-py detected, then per node
its name, specs (``Multiscales``, ``OMERO``, ``Label``...) and channel labels. In the main
environment, :func:`read_with_ome_zarr` runs it with ``$CODEXDASK_READER_PYTHON``
(:func:`reader_python`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

READER_PYTHON_ENV = "CODEXDASK_READER_PYTHON"
REQUIRE_ENV = "CODEXDASK_REQUIRE_READER"


def reader_python() -> str:
    """The reader environment's python; skips the test without one (fails where
    ``$CODEXDASK_REQUIRE_READER=1``, as in ``make pytest``)."""
    import pytest

    python = os.environ.get(READER_PYTHON_ENV)
    if python and Path(python).exists():
        return python
    message = f"set {READER_PYTHON_ENV} to a Python 3.12 with ome-zarr >= 0.21 (make pytest does)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def read_with_ome_zarr(path: Path, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Run this script on ``path`` in the reader environment: (description, arrays)."""
    subprocess.run([reader_python(), __file__, str(path), str(out)], check=True,
                   capture_output=True, text=True, timeout=300)
    description = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as saved:
        return description, {key: saved[key] for key in saved.files}


def main() -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, out = sys.argv[1], Path(sys.argv[2])
    location = parse_url(path)
    nodes, arrays = [], {}
    for node in Reader(location)():
        name = node.metadata.get("name") or Path(str(node.zarr.path)).name
        nodes.append({"name": name, "specs": [type(spec).__name__ for spec in node.specs],
                      "channels": node.metadata.get("channel_names")})
        for level, data in enumerate(node.data):
            arrays[f"{name}/{level}"] = np.asarray(data)
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps({"version": location.version,
                                                    "nodes": nodes}))


if __name__ == "__main__":
    main()
