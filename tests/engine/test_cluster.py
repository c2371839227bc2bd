"""Cluster selection: what can be checked without a GPU (the GPU path itself runs on a GPU box)."""

import time

import dask
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security
from helpers.tls import client_tls_settings

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine import cluster
from codexdask.errors import ClusterError
from codexdask.hardware import WORKER_IDLE_BYTES, GpuProbe
from codexdask.segmenters.watershed import WatershedSegmenter


def test_existing_client_is_used_and_left_open():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            with cluster.connect(SegmentConfig(), client) as got:
                assert got is client
            assert client.status == "running"


def test_local_cluster_sizes_from_config():
    local = cluster.local_cluster(SegmentConfig(n_workers=2, memory_limit="300MiB"))
    try:
        with Client(local) as client:
            client.wait_for_workers(2)
            limits = cluster.worker_memory_limits(client)
            assert len(limits) == 2
            assert all(limit == 300 * 2**20 for limit in limits)
            assert cluster.gpu_workers(client) == []
    finally:
        local.close()


def test_gpu_workers_are_found_by_resource():
    with LocalCluster(n_workers=1, processes=False, resources={"GPU": 1},
                      dashboard_address=":0") as local, Client(local) as client:
        assert len(cluster.gpu_workers(client)) == 1


def test_gpu_worker_threads_and_feed_from_the_segmenter_costs():
    class Costly(WatershedSegmenter):
        cpu_seconds_per_megapixel, gpu_seconds_per_megapixel = 0.6, 0.04

    with LocalCluster(n_workers=2, processes=False, threads_per_worker=3,
                      resources={"GPU": 1}, dashboard_address=":0") as local, \
            Client(local) as client:
        assert cluster.gpu_worker_threads(client) == 3
        feed = cluster.gpu_feed(cluster.gpu_worker_threads(client), Costly())
    assert (feed.threads, feed.wanted) == (3, 16)
    assert feed.gpu_busy_fraction == pytest.approx(2 * 0.04 / 0.6)
    assert cluster.gpu_feed(3, WatershedSegmenter()) is None  # costs unknown


def test_local_gpu_workers_take_only_the_threads_they_need(monkeypatch):
    class Costly(WatershedSegmenter):
        cpu_seconds_per_megapixel, gpu_seconds_per_megapixel = 0.3, 0.1

    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 64)
    assert cluster.gpu_threads(8, Costly()) == 4  # 1 inference + ceil(0.3 / 0.1) CPU threads
    assert cluster.gpu_threads(8, WatershedSegmenter()) == 8  # unknown costs: the core share
    # fewer cores than wanted: the core share (2) plus the pinned thread
    assert cluster.gpu_threads(32, Costly()) == 3


def test_unreachable_scheduler_fails_fast_with_hint(monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(ClusterError, match="could not reach a Dask scheduler"):
        with cluster.connect(SegmentConfig(scheduler="tcp://127.0.0.1:1")):
            pass
    assert time.monotonic() - start < 30


def test_gpus_without_a_gpu_say_drop_gpus(monkeypatch):
    monkeypatch.setattr(cluster, "probe_gpus", lambda visible_only: GpuProbe([], note="no driver"))
    with pytest.raises(ClusterError, match="drop --gpus"):
        cluster.local_gpu_cluster(SegmentConfig(gpus=True))


def test_scheduler_without_workers_is_a_cluster_error(monkeypatch):
    monkeypatch.setattr(cluster, "WORKER_WAIT_S", 1)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as local, \
            Client(local) as client:
        with pytest.raises(ClusterError, match="no worker joined"):
            cluster.worker_memory_limits(client)


def test_gpus_with_a_failing_nvml_name_the_error(fake_nvml):
    pytest.importorskip("dask_cuda")
    fake_nvml(gpus=[("H100", "GPU-aaa", 80 * 2**30, 79 * 2**30)],
              init_error="NVMLError_NoPermission")
    with pytest.raises(ClusterError, match="NVMLError_NoPermission.*nvidia-smi"):
        cluster.local_gpu_cluster(SegmentConfig(gpus=True))


def test_worker_budgets_leave_out_what_each_worker_holds():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, memory_limit="1GiB",
                      dashboard_address=":0") as local, Client(local) as client:
        client.wait_for_workers(2)
        budgets = cluster.worker_memory_budgets(client)
    assert len(budgets) == 2
    assert all(0 <= budget <= 2**30 - WORKER_IDLE_BYTES for budget in budgets)


# --------------------------------------------------------------------------------------------
# TLS: a scheduler on a network port runs any code it is sent, so remote clusters use TLS.


@pytest.fixture(scope="module")
def tls_cluster():
    """An in-process cluster that speaks only TLS, with throw-away certificates."""
    pytest.importorskip("cryptography")
    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tls",
                      security=security, dashboard_address=":0") as local:
        yield local.scheduler_address, security


def test_segment_on_a_tls_scheduler_with_its_certificates(tls_cluster, tmp_path):
    from codexdask.cli import main
    from codexdask.outputs import load_manifest
    from codexdask.store.patch_store import write_patch_store
    from codexdask.synthetic import synthetic_slide

    address, security = tls_cluster
    slide = synthetic_slide(96, 192, seed=2, empty_fraction=0.0)
    store = write_patch_store(
        slide.image, tmp_path / "slide.zarr",
        PatchConfig(wholecell=slide.membrane_channels, patch_size=(96, 96), overlap=0.0),
        channel_names=slide.channel_names,
    )
    with dask.config.set(client_tls_settings(security, tmp_path / "certs")):
        assert main(["segment", str(store), "--out", str(tmp_path / "out"), "--scheduler",
                     address, "--no-mosaics", "--n-overlays", "0"]) == 0
    manifest = load_manifest(tmp_path / "out")
    assert manifest["n_computed"] == 2 and manifest["config"]["scheduler"] == address


def test_a_tls_scheduler_refuses_a_client_without_certificates(tls_cluster):
    address, _ = tls_cluster
    with pytest.raises(ClusterError, match="uses TLS.*distributed.comm.tls.ca-file"):
        with cluster.connect(SegmentConfig(scheduler=address)):
            pass


def test_a_tls_scheduler_refuses_other_certificates(tls_cluster, tmp_path, monkeypatch):
    address, _ = tls_cluster
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 5)
    with dask.config.set(client_tls_settings(Security.temporary(), tmp_path)):
        with pytest.raises(ClusterError, match="certificates are the cluster's"):
            with cluster.connect(SegmentConfig(scheduler=address)):
                pass


def test_a_tcp_address_of_a_tls_scheduler_says_to_use_tls(tls_cluster, monkeypatch):
    address, _ = tls_cluster
    tcp_address = address.replace("tls://", "tcp://")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ClusterError, match=f"only speaks TLS: connect to '{address}'"):
        with cluster.connect(SegmentConfig(scheduler=tcp_address)):
            pass


def test_tls_probe_tells_a_plain_scheduler_from_a_tls_one(tls_cluster):
    address, _ = tls_cluster
    assert cluster.speaks_tls(address.replace("tls://", "tcp://"), timeout=5)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as plain:
        assert not cluster.speaks_tls(plain.scheduler_address, timeout=5)
    assert not cluster.speaks_tls("tcp://127.0.0.1:1", timeout=1)  # nothing listens there
