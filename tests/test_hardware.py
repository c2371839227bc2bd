"""GPU and host memory probes, with a scripted NVML: every outcome is asserted, none is guessed."""

from __future__ import annotations

import logging
import sys

import pytest

from codexdask import hardware

GiB = 2**30
TWO_GPUS = [("H100", "GPU-aaa", 80 * GiB, 79 * GiB), ("A100", "GPU-bbb", 40 * GiB, 30 * GiB)]


def test_gpus_are_listed_with_their_memory(fake_nvml):
    fake_nvml(gpus=TWO_GPUS)
    probe = hardware.probe_gpus()
    assert probe.error is None and probe.note is None and probe.problem is None
    assert probe.gpus == [
        {"index": 0, "name": "H100", "uuid": "GPU-aaa", "total_bytes": 80 * GiB,
         "free_bytes": 79 * GiB},
        {"index": 1, "name": "A100", "uuid": "GPU-bbb", "total_bytes": 40 * GiB,
         "free_bytes": 30 * GiB},
    ]
    assert hardware.device_free_bytes() == 79 * GiB


@pytest.mark.parametrize("visible", ["1", "GPU-bbb", "1,0"])
def test_visible_devices_choose_the_gpu(fake_nvml, monkeypatch, visible):
    fake_nvml(gpus=TWO_GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert len(hardware.probe_gpus().gpus) == 2  # all GPUs, whatever is visible
    assert hardware.probe_gpus(visible_only=True).gpus[0]["name"] == "A100"
    assert hardware.device_free_bytes() == 30 * GiB


def test_no_driver_is_a_note_not_an_error(fake_nvml):
    fake_nvml(init_error="NVMLError_LibraryNotFound")
    probe = hardware.probe_gpus()
    assert probe.gpus == [] and probe.error is None
    assert probe.note == "no NVIDIA driver found (NVMLError_LibraryNotFound)"
    assert hardware.device_free_bytes() is None


def test_missing_nvidia_ml_py_is_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    probe = hardware.probe_gpus()
    assert probe.gpus == [] and probe.error is None and "nvidia-ml-py" in probe.note


@pytest.mark.parametrize(("where", "name"), [("init_error", "NVMLError_NoPermission"),
                                             ("query_error", "NVMLError_Unknown")])
def test_a_failing_nvml_is_an_error_not_silence(fake_nvml, caplog, where, name):
    fake_nvml(gpus=TWO_GPUS, **{where: name})
    probe = hardware.probe_gpus()
    assert probe.gpus == [] and probe.note is None
    assert name in probe.error and probe.problem == probe.error
    with caplog.at_level(logging.WARNING, logger="codexdask.hardware"):
        assert hardware.device_free_bytes() is None
    assert name in caplog.text


def test_host_memory_is_positive_outside_a_worker():
    assert hardware.worker_memory_limit() is None
    assert hardware.host_free_bytes() > 0


def test_host_memory_is_capped_by_the_dask_worker_limit():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  memory_limit="1GiB", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        limit = client.submit(hardware.worker_memory_limit, pure=False).result()
        inside = client.submit(hardware.host_free_bytes, pure=False).result()
    assert limit == GiB
    assert 0 <= inside < GiB  # the limit minus what the (in-process) worker already holds
