"""Cluster selection: what can be checked without a GPU (the GPU path itself runs on a GPU box)."""

import time

import pytest
from distributed import Client, LocalCluster

from codexdask import cluster
from codexdask.config import SegmentConfig
from codexdask.errors import ClusterError
from codexdask.hardware import GpuProbe


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
