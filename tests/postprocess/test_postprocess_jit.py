"""codexdask.postprocess._jit: on-disk caching of the kernels, and no failure without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codexdask.postprocess import _jit, warm_up

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_without_a_cache_location_still_compile():
    """numba refuses ``cache=True`` when it finds nowhere to write (here: a function without a
    source file); ``jit`` then compiles in memory instead of failing."""
    namespace: dict = {}
    exec(compile("def double(values):\n    return values * 2\n", "<no file>", "exec"),
         namespace)
    compiled = _jit.jit(namespace["double"])
    np.testing.assert_array_equal(compiled(np.arange(3)), [0, 2, 4])
    assert not compiled._cache.__class__.__name__.endswith("FunctionCache")


def test_warm_up_compiles_what_deep_watershed_needs():
    assert warm_up() >= 0.0
    from codexdask.postprocess import flood, maxima

    for kernel in (flood._fill_cells, flood._flood_cells, maxima._hybrid_reconstruction):
        assert len(kernel.signatures) >= 2, kernel  # float32 and float64 maps


_PROBE = """
import json, sys
from codexdask.postprocess import flood, labels, maxima, smoothing, warm_up
seconds = warm_up()
kernels = [flood._flood_cells, flood._fill_cells, maxima._hybrid_reconstruction,
           labels._label_kernel, labels._fill_holes_in_place, smoothing._filter_axis0,
           smoothing._filter_axis1]  # (callees are linked in)
stats = [(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())) for k in kernels]
print(json.dumps({"seconds": seconds, "stats": stats}))
"""


@pytest.mark.slow
def test_second_process_loads_kernels_from_the_cache(tmp_path):
    """A worker process compiles the kernels once into the cache; the next one only loads."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert all(misses > 0 for _, misses in first["stats"])
    assert all(hits > 0 and misses == 0 for hits, misses in second["stats"])
    assert any(tmp_path.rglob("*.nbi")) and any(tmp_path.rglob("*.nbc"))
