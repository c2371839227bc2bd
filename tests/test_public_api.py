"""The curated public API of ``codexdask/__init__.py``: cheap to import, every name resolves."""

from __future__ import annotations

import subprocess
import sys

import codexdask


def test_every_public_name_resolves_to_its_home():
    for name in codexdask.__all__:
        value = getattr(codexdask, name)
        assert value is not None, name
    assert codexdask.run.__module__ == "codexdask.engine.runner"
    assert codexdask.repair_masks.__module__ == "codexdask.repair.masks"
    assert set(codexdask.__all__) <= set(dir(codexdask))


def test_import_codexdask_loads_no_heavy_library():
    code = ("import sys, codexdask\n"
            "heavy = [m for m in ('dask', 'distributed', 'zarr', 'pandas', 'numpy') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_package_is_typed():
    from importlib.resources import files

    assert files("codexdask").joinpath("py.typed").is_file()
