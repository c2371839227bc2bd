"""The SLURM recipe on a real SLURM cluster: ``sbatch deploy/slurm/driver.sbatch``, as users run it.

``make test-slurm`` starts a one-node cluster (``deploy/slurm/local-cluster.sh``: munged,
slurmctld, slurmd) and runs these tests. Each run is the recipe unchanged: the driver job runs
``run_slurm.py``, dask-jobqueue submits the worker jobs with ``sbatch``, the workers run Mesmer
on PyTorch with converted (random) weights, and everything talks TLS with throw-away
certificates. Only ``cluster.yaml``'s site keys are edited for this node (partition, 1 core and
3 GiB per worker job, no ``--gres`` without GPUs), as a site would.

Every finished run is compared with the embedded local cluster on the same store: all mask
arrays, ``done``, the stats and ``patches_metadata.csv`` (timing columns excepted) and both
pickles byte for byte.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from pathlib import Path

import dask
import pytest
import yaml
from distributed.security import Security
from helpers.outputs import assert_same_outputs
from helpers.slurm import (
    REQUIRE_ENV,
    done_count,
    driver_log,
    job_info,
    node_cluster_config,
    progress_fraction,
    queued_jobs,
    scancel,
    submit_driver,
    unavailable_reason,
    wait_for,
    wait_for_job_end,
    worker_jobs,
)
from helpers.tls import client_tls_settings

from codexdask.config import PatchConfig, SegmentConfig, load_yaml
from codexdask.engine import cluster
from codexdask.engine.runner import run
from codexdask.errors import ClusterError
from codexdask.layout import MANIFEST
from codexdask.outputs import load_manifest
from codexdask.store.patch_store import write_patch_store
from codexdask.synthetic import synthetic_slide

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

#: Seconds a whole recipe run may take here (2 shared cores: driver + 2 Mesmer worker jobs).
RUN_TIMEOUT = 420
#: The Mesmer settings of every run (batches of one patch: progress in small steps).
SEGMENT = {"backend": "mesmer", "tiles_per_call": 4, "batch_size": 1, "save_mosaics": False,
           "n_overlays": 0}


@pytest.fixture(scope="module")
def slurm():
    """Skip (or fail, with ``CODEXDASK_REQUIRE_SLURM=1``) when no SLURM cluster answers."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory, slurm) -> dict[str, Path]:
    """Shared storage of the 'site': weights, two patch stores, segment configs, cluster.yaml."""
    from codexdask.mesmer import network  # PyTorch: the main environment only
    from codexdask.mesmer.convert import save_network

    folder = tmp_path_factory.mktemp("slurm-site")
    weights = folder / "mesmer.safetensors"
    save_network(network.random_network(seed=0), weights, source_name="random seed 0")
    slide = synthetic_slide(1024, 1024, seed=3, empty_fraction=0.1)
    stores = {}
    # Mesmer on 2 shared cores: 25 patches of 256², and a 512 x 768 slide in 6 blocks of 256².
    for mode, image, geometry in (
        ("patches", slide.image, {"patch_size": (256, 256), "overlap": 0.1}),
        ("full_image", slide.image[:, :512, :768], {}),
    ):
        stores[mode] = write_patch_store(
            image, folder / f"{mode}.zarr",
            PatchConfig(wholecell=slide.membrane_channels, split_mode=mode, **geometry),
            channel_names=slide.channel_names,
        )
    configs = {}
    for mode, extra in (("patches", {}), ("full_image", {"block_size": 256})):
        configs[mode] = folder / f"segment-{mode}.yaml"
        configs[mode].write_text(yaml.safe_dump({**SEGMENT, **extra,
                                                 "model_path": str(weights)}))
    return {"folder": folder, "cluster": node_cluster_config(folder), **{
        f"store_{mode}": store for mode, store in stores.items()}, **{
        f"config_{mode}": config for mode, config in configs.items()}}


@pytest.fixture(scope="module")
def local_reference(site, tmp_path_factory) -> dict[str, Path]:
    """The same stores and settings on the embedded local cluster (2 single-threaded workers)."""
    from distributed import Client, LocalCluster

    folder = tmp_path_factory.mktemp("local-reference")
    outs = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local, \
            Client(local) as client:
        for mode in ("patches", "full_image"):
            config = SegmentConfig(**load_yaml(site[f"config_{mode}"]))
            outs[mode] = folder / mode
            run(site[f"store_{mode}"], outs[mode], config, client=client)
    return outs


def _n_informative(out: Path) -> int:
    return int(load_manifest(out)["n_informative"])


#: Driver jobs these tests submitted, cancelled at the end if a failed test left them running.
SUBMITTED: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def _cancel_leftover_drivers():
    yield
    for job_id in SUBMITTED:
        if str(job_id) in {job["id"] for job in queued_jobs()}:
            scancel(job_id)  # its worker jobs end by themselves (death-timeout)


def _start(site, mode: str, out: Path, **options) -> int:
    job_id = submit_driver(site[f"store_{mode}"], out, site["folder"],
                           segment_config=site[f"config_{mode}"],
                           cluster_config=options.pop("cluster_config", site["cluster"]),
                           **options)
    SUBMITTED.append(job_id)
    return job_id


def _scheduler_address(site, job_id: int) -> str:
    line = wait_for(lambda: [ln for ln in driver_log(site["folder"], job_id).splitlines()
                             if ln.startswith("scheduler ")], 120, "the driver's scheduler line")
    return line[0].split()[1].rstrip(",")


def _assert_completed(site, job_id: int, timeout: float = RUN_TIMEOUT) -> str:
    info = wait_for_job_end(job_id, timeout)
    log = driver_log(site["folder"], job_id)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    return log


# --------------------------------------------------------------------------------------------
# The recipe, watched while it runs: worker jobs in squeue, TLS refusals against its scheduler


@pytest.fixture(scope="module")
def recipe_run(site, local_reference, tmp_path_factory):
    """One driver job on the patches store, observed while in flight, then waited for."""
    out = tmp_path_factory.mktemp("recipe") / "out"
    job_id = _start(site, "patches", out)
    address = _scheduler_address(site, job_id)
    workers_seen = wait_for(lambda: worker_jobs(after=job_id), 120, "a worker job to run")
    probes = _tls_probes(address, tmp_path_factory.mktemp("other-ca"))
    in_flight_after_probes = str(job_id) in {job["id"] for job in queued_jobs()}
    workers_seen |= worker_jobs(after=job_id)
    log = _assert_completed(site, job_id)
    return {"job": job_id, "out": out, "log": log, "address": address, "probes": probes,
            "workers": workers_seen, "in_flight_after_probes": in_flight_after_probes}


def _tls_probes(address: str, other_ca: Path) -> dict[str, str]:
    """Connect to the SLURM-started scheduler the ways an outsider could; what each one got."""
    host_port = address.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    probes = {}
    # A raw TLS client without a certificate: the handshake starts, the scheduler ends it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"\0" * 8)
            probes["no_certificate"] = f"read {tls.recv(1)!r}"
    except (ssl.SSLError, OSError) as exc:
        probes["no_certificate"] = f"refused: {exc}"
    # codexdask with no certificates, with another CA's, and over tcp://.
    for name, scheduler, settings in (
        ("codexdask_no_credentials", address, {}),
        ("codexdask_other_ca", address, client_tls_settings(Security.temporary(), other_ca)),
        ("codexdask_tcp", f"tcp://{host_port}", {}),
    ):
        try:
            with dask.config.set({**settings, "distributed.comm.timeouts.connect": "5s"}), \
                    cluster.connect(SegmentConfig(scheduler=scheduler)):
                probes[name] = "connected"
        except ClusterError as exc:
            probes[name] = f"refused: {exc}"
    return probes


def test_recipe_finishes_with_the_local_clusters_outputs(recipe_run, local_reference):
    assert "computed now" in recipe_run["log"]
    assert_same_outputs(recipe_run["out"], local_reference["patches"],
                        _n_informative(local_reference["patches"]))


def test_workers_ran_as_slurm_jobs_over_tls(recipe_run, site):
    assert recipe_run["workers"], "no worker job was seen running in squeue"
    for job_id in recipe_run["workers"]:
        info = job_info(job_id)
        assert info["JobName"] == "codexdask-gpu" and info["Partition"] == "debug"
        logs = "".join(path.read_text() for path in
                       sorted((site["folder"] / "dask-logs").glob(f"codexdask-gpu-{job_id}.*")))
        assert re.search(rf"Registered to:\s+{re.escape(recipe_run['address'])}", logs), logs
        assert "mesmer weights ok: model_path" in logs  # the prologue's doctor found them
    # The driver closed its cluster: no worker job outlives it.
    wait_for(lambda: not worker_jobs(after=recipe_run["job"], states=("PENDING", "RUNNING")), 60,
             "the worker jobs to end with the driver")


def test_the_scheduler_refuses_clients_without_its_certificates(recipe_run):
    probes = recipe_run["probes"]
    assert recipe_run["in_flight_after_probes"], "the run ended before every probe was made"
    assert probes["no_certificate"].startswith("refused"), probes
    assert "uses TLS" in probes["codexdask_no_credentials"], probes
    assert "certificates are the cluster's" in probes["codexdask_other_ca"], probes
    assert "only speaks TLS: connect to 'tls://" in probes["codexdask_tcp"], probes


# --------------------------------------------------------------------------------------------
# Faults under the scheduler


def _in_flight(site, job_id: int, out: Path) -> bool:
    """The driver job is running, has finished some tasks and has not written its manifest."""
    running = any(job["id"] == str(job_id) and job["state"] == "RUNNING" for job in queued_jobs())
    return (running and progress_fraction(driver_log(site["folder"], job_id)) > 0
            and not (out / MANIFEST).exists())


@pytest.mark.parametrize("mode", ["full_image", "patches"])
def test_a_cancelled_worker_job_leaves_the_outputs_unchanged(mode, site, local_reference,
                                                             tmp_path):
    out = tmp_path / "out"
    job_id = _start(site, mode, out)
    workers = wait_for(lambda: len(worker_jobs(after=job_id)) == 2 and worker_jobs(after=job_id),
                       180, "both worker jobs to run")
    wait_for(lambda: progress_fraction(driver_log(site["folder"], job_id)) > 0, 240,
             "the run's first finished tasks")
    assert _in_flight(site, job_id, out), "the run finished before a worker could be cancelled"
    victim = max(workers)
    scancel(victim)
    _assert_completed(site, job_id)
    assert job_info(victim)["JobState"] == "CANCELLED"
    assert_same_outputs(out, local_reference[mode], _n_informative(local_reference[mode]))


def test_a_cancelled_driver_job_resumes_with_only_the_missing_work(site, local_reference,
                                                                   tmp_path):
    out = tmp_path / "out"
    n_informative = _n_informative(local_reference["patches"])
    job_id = _start(site, "patches", out)
    wait_for(lambda: done_count(out) >= 3, 300, "3 patches done")
    scancel(job_id)
    assert wait_for_job_end(job_id, 60)["JobState"] == "CANCELLED"
    # Its worker jobs lose their scheduler and end by themselves (death-timeout: 20 s here).
    wait_for(lambda: not worker_jobs(after=job_id, states=("PENDING", "RUNNING")), 120,
             "the orphaned worker jobs to end")
    done_before = done_count(out)
    assert 3 <= done_before < n_informative
    assert not (out / MANIFEST).exists()  # nothing looks complete

    resumed = _start(site, "patches", out, extra_args="--resume")
    log = _assert_completed(site, resumed)
    assert f"{n_informative - done_before} computed now" in log
    assert load_manifest(out)["n_computed"] == n_informative - done_before
    assert_same_outputs(out, local_reference["patches"], n_informative)


@pytest.mark.parametrize("overrides, message", [
    ({"queue": "no-such-partition"}, "invalid partition specified: no-such-partition"),
    ({"memory": "4000GiB"}, "Requested node configuration is not available"),
    # The environment is missing on the compute node: every worker job exits at once.
    ({"python": "/nonexistent/bin/python"}, "ended before any worker joined the scheduler"),
    # A worker argument `dask worker` accepts but cannot use: the worker fails to start, and its
    # job either exits or (a race in distributed's nanny) hangs; both end the driver.
    ({"worker-extra-args": ["--resources", "GPU=1", "--lifetime", "3h50m"]},
     "before any worker joined the scheduler (job "),
    # A worker that hangs at start-up (the job script runs `sleep 3600; true -m ...`): its job
    # runs on, so the driver gives up after twice the death-timeout (2 x 20 s here).
    ({"python": "sleep 3600; true"}, "has run for 40 s before any worker joined the scheduler"),
], ids=["bad-partition", "memory-over-the-node", "no-environment", "worker-fails-to-start",
        "worker-hangs"])
def test_a_worker_job_that_cannot_start_is_a_clear_error(overrides, message, site, tmp_path):
    config = node_cluster_config(site["folder"], **overrides)
    started = time.monotonic()
    job_id = _start(site, "patches", tmp_path / "out", cluster_config=config, minimum=1,
                    maximum=1)
    info = wait_for_job_end(job_id, 180)
    log = driver_log(site["folder"], job_id)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log[-2000:]
    assert "run_slurm.py: error:" in log and message in log, log[-2000:]
    assert time.monotonic() - started < 180
    assert not (tmp_path / "out").exists()
