"""``codexdask doctor`` report, and the rule that nothing imports TensorFlow unless Mesmer runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from codexdask.doctor import doctor_report, format_doctor

KEYS = {"python", "platform", "packages", "host_memory_available_bytes", "gpus", "gpu_error",
        "cuda_visible_devices", "tensorflow_gpus", "tensorflow_error", "torch_gpus", "torch_error",
        "mesmer_weights"}
WEIGHT_KEYS = {"source", "path", "ok", "detail", "runtime", "runtime_ok", "metadata"}


def test_report_keys_and_text(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("CODEXDASK_MODEL_PATH", raising=False)
    report = doctor_report(tensorflow=False, torch=False)
    assert set(report) == KEYS
    assert report["python"] == sys.version.split()[0]
    assert report["packages"]["numpy"] and report["packages"]["dask"]
    assert set(report["packages"]) >= {"numpy", "dask", "distributed", "zarr", "tensorflow",
                                       "deepcell"}
    assert report["host_memory_available_bytes"] > 0
    assert report["tensorflow_gpus"] is None and report["torch_gpus"] is None  # not checked
    weights = report["mesmer_weights"]
    assert weights["ok"] is False and "DEEPCELL_ACCESS_TOKEN" in weights["detail"]
    text = format_doctor(report)
    assert "numpy" in text and "mesmer weights MISSING" in text and "gpus" in text


def test_report_follows_the_model_path_environment_variable(tmp_path, monkeypatch):
    missing = tmp_path / "from-env.safetensors"
    monkeypatch.setenv("CODEXDASK_MODEL_PATH", str(missing))
    weights = doctor_report(tensorflow=False, torch=False)["mesmer_weights"]
    assert (weights["source"], weights["path"], weights["ok"]) == ("model_path", str(missing),
                                                                   False)


def test_report_points_at_a_configured_model_path(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    weights = doctor_report(str(tmp_path), tensorflow=False, torch=False)["mesmer_weights"]
    assert set(weights) == WEIGHT_KEYS
    assert (weights["source"], weights["path"], weights["ok"]) == ("model_path", str(tmp_path),
                                                                   True)
    assert weights["runtime"] == "tensorflow" and weights["metadata"] is None
    assert weights["detail"].startswith(f"model_path {tmp_path} (Keras SavedModel)")
    missing = doctor_report(str(tmp_path / "nope"), tensorflow=False)["mesmer_weights"]
    assert missing["ok"] is False and "does not exist" in missing["detail"]


def test_report_shows_a_converted_files_runtime_self_check_and_checksum(tmp_path):
    torch = pytest.importorskip("torch")
    from codexdask.mesmer import network
    from codexdask.mesmer.convert import save_network

    file = tmp_path / "mesmer.safetensors"
    metadata = save_network(network.MesmerNet(), file, source_name="untrained")
    report = doctor_report(str(file), tensorflow=False)
    weights = report["mesmer_weights"]
    assert (weights["ok"], weights["runtime"], weights["runtime_ok"]) == (True, "torch", True)
    assert weights["metadata"]["source_sha256"] == metadata["source_sha256"]
    assert weights["metadata"]["self_check"]["ran"] is False
    assert report["torch_gpus"] == [torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count())]
    text = format_doctor(report)
    assert "mesmer runtime torch (installed)" in text
    assert f"sha256 {metadata['source_sha256']}" in text
    assert "self-check    not run (written from a PyTorch network" in text
    assert "torch gpus" in text


@pytest.mark.mesmer
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="no TensorFlow")
def test_report_lists_tensorflow_gpus():
    report = doctor_report(tensorflow=True)
    assert report["tensorflow_error"] is None
    assert isinstance(report["tensorflow_gpus"], list)
    assert "tf gpus" in format_doctor(report)


def test_nothing_imports_tensorflow_until_mesmer_runs():
    code = (
        "import sys\n"
        "from codexdask.segmenters import get_segmenter, available_segmenters\n"
        "from codexdask.segmenters.planner import plan_batches\n"
        "from codexdask.doctor import doctor_report\n"
        "seg = get_segmenter('mesmer', tiles_per_call=4)\n"
        "plan_batches(seg, (512, 512), 0.5, host_free_bytes=2**34)\n"
        "doctor_report(tensorflow=False)\n"
        "assert 'mesmer' in available_segmenters()\n"
        "bad = [m for m in ('tensorflow', 'deepcell', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_doctor_json_prints_the_report_as_json(capsys, tmp_path, monkeypatch):
    from codexdask.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == KEYS
    assert report["python"] == sys.version.split()[0]
    assert set(report["mesmer_weights"]) == WEIGHT_KEYS
