"""``bench/gpu_check.py``'s engine part: when it skips, and the engine run it times (on CPU)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_check  # noqa: E402


def test_engine_check_skips_without_dask_cuda(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # importing it raises ImportError
    result = gpu_check.engine_check(tmp_path)
    assert result.keys() == {"skipped"} and "dask_cuda is not importable" in result["skipped"]
    assert not (tmp_path / "engine").exists()


def test_engine_check_skips_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", types.ModuleType("dask_cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.engine_check(tmp_path) == {"skipped": "no CUDA GPU visible to PyTorch"}


def test_engine_check_names_a_missing_package(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "zarr" else real(name, *args))
    result = gpu_check.engine_check(tmp_path)
    assert result == {"skipped": "zarr is not installed: the engine part needs codexdask's "
                                 "dependencies"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_engine_on_cpu(tmp_path):
    """The engine part without ``--gpus``: a 320² slide in 256-px tiles on one CPU worker."""
    result = gpu_check.run_engine(tmp_path, gpus=False, size=320, block_size=256, n_workers=1)
    assert result["blocks"]["total"] == 4 and result["blocks"]["computed"] == 4
    assert result["inference_s"] > 0 and result["postprocess_s"] > 0
    assert 0 < result["gpu_busy_fraction"] <= 1
    assert result["cells"] > 0 and result["graph_s"] <= result["wall_s"]
    data = {"environment": {"torch": torch.__version__, "device": "cpu"},
            "a_gpu_vs_cpu": {"skipped": "cpu"}, "b_throughput": {}, "c_engine": result,
            "wall_s": result["wall_s"]}
    assert "GPU busy" in gpu_check.summary(data)
