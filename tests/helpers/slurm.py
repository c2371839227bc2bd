"""Driving a real SLURM cluster from the tests: submit the recipe's driver job, watch its jobs.

Everything goes through SLURM's own commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``),
as a user would type them; ``SLURM_CONF`` names the cluster (``deploy/slurm/local-cluster.sh``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
import zarr

from codexdask.layout import DONE_ARRAY, RESULT_STORE

REPO = Path(__file__).resolve().parents[2]
DRIVER_SBATCH = REPO / "deploy" / "slurm" / "driver.sbatch"
RECIPE_CLUSTER_CONFIG = REPO / "deploy" / "slurm" / "cluster.yaml"
LOCAL_CLUSTER = REPO / "deploy" / "slurm" / "local-cluster.sh"
#: The worker jobs' name in the recipe's cluster.yaml.
WORKER_JOB_NAME = "codexdask-gpu"
#: Set to 1 (CI) to fail, not skip, when no SLURM cluster answers.
REQUIRE_ENV = "CODEXDASK_REQUIRE_SLURM"


@functools.cache
def slurm_conf() -> str:
    """``$SLURM_CONF``, else the file ``local-cluster.sh`` writes (asked once)."""
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    line = subprocess.run([str(LOCAL_CLUSTER), "env"], capture_output=True, text=True,
                          check=True).stdout
    return line.strip().split("=", 1)[1]


def unavailable_reason() -> str | None:
    """Why no SLURM cluster can run jobs here, or None when one answers with a usable node."""
    if shutil.which("sbatch") is None:
        return ("SLURM is not installed: run `make slurm-install` (or "
                "`deploy/slurm/local-cluster.sh install`) as root, then `make test-slurm`")
    try:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                                timeout=30, env=slurm_env()).stdout.split()
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s: slurmctld is not running"
    if not any(state in ("idle", "mix", "alloc") for state in states):
        return (f"no SLURM node is up (sinfo: {states or 'nothing'}); start one with "
                "`deploy/slurm/local-cluster.sh start` as root, or run `make test-slurm`")
    return None


def slurm_env(**extra: str) -> dict[str, str]:
    """This process's environment with ``SLURM_CONF`` and ``extra``."""
    return {**os.environ, "SLURM_CONF": slurm_conf(), **extra}


def node_cluster_config(folder: Path, **overrides: Any) -> Path:
    """The recipe's ``cluster.yaml`` sized for this one node, as a site would edit it.

    Only the site-specific keys change (partition, cores, memory, walltime, no ``--gres`` on a
    node without GPUs, folders); the worker command and its arguments stay the recipe's.
    """
    config = yaml.safe_load(RECIPE_CLUSTER_CONFIG.read_text())
    config["jobqueue"]["slurm"].update({
        "queue": "debug", "cores": 1, "memory": "3GiB", "walltime": "00:30:00",
        "death-timeout": 20, "job-extra-directives": [],
        "log-directory": str(folder / "dask-logs"),
        "shared-temp-directory": str(folder / "tls"),
        "scheduler-options": {"dashboard_address": ":0"},
        **overrides,
    })
    path = folder / f"cluster-{len(list(folder.glob('cluster-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def submit_driver(store: Path, out: Path, folder: Path, *, segment_config: Path,
                  cluster_config: Path, minimum: int = 2, maximum: int = 2,
                  extra_args: str = "") -> int:
    """``sbatch deploy/slurm/driver.sbatch`` with the recipe's variables; returns the job id.

    The driver job asks for 1 core and 3 GiB (overriding the script's 4 cores / 32 GiB, which
    this node may not have), runs from the repository, logs to ``folder/driver-JOBID.out``.
    """
    variables = {"STORE": str(store), "OUT": str(out), "VENV": sys.prefix,
                 "SEGMENT_CONFIG": str(segment_config), "CLUSTER_CONFIG": str(cluster_config),
                 "MIN_GPUS": str(minimum), "MAX_GPUS": str(maximum), "EXTRA_ARGS": extra_args}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=3G", f"--chdir={REPO}",
         f"--output={folder}/driver-%j.out", "--export=ALL", str(DRIVER_SBATCH)],
        capture_output=True, text=True, check=True, env=slurm_env(**variables),
    )
    return int(submitted.stdout.strip().split(";")[0])


def driver_log(folder: Path, job_id: int) -> str:
    """The driver job's output so far ('' before it starts)."""
    path = folder / f"driver-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def queued_jobs() -> list[dict[str, str]]:
    """Jobs SLURM is holding now: ``{"id", "name", "state"}`` each."""
    lines = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True,
                           check=True, env=slurm_env()).stdout.splitlines()
    return [dict(zip(("id", "name", "state"), line.split("|"), strict=True)) for line in lines]


def worker_jobs(after: int, states: tuple[str, ...] = ("RUNNING",)) -> set[int]:
    """Ids of the worker jobs submitted after job ``after`` (its driver) that SLURM holds in
    one of ``states`` now."""
    return {int(job["id"]) for job in queued_jobs()
            if job["name"] == WORKER_JOB_NAME and job["state"] in states
            and int(job["id"]) > after}


def job_info(job_id: int) -> dict[str, str]:
    """``scontrol show job`` as a dict (``JobState``, ``ExitCode``, ``JobName``, ...)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True,
                          text=True, check=True, env=slurm_env()).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def scancel(job_id: int) -> None:
    """Cancel a job, as a user would."""
    subprocess.run(["scancel", str(job_id)], check=True, env=slurm_env())


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_job_end(job_id: int, timeout: float) -> dict[str, str]:
    """Wait until the job has left the queue; returns its final ``scontrol`` record."""
    wait_for(lambda: str(job_id) not in {job["id"] for job in queued_jobs()}, timeout,
             f"job {job_id} to end")
    return job_info(job_id)


def done_count(out: Path) -> int:
    """Patches of ``out``'s result store marked done (0 before the store exists)."""
    try:
        return int(zarr.open_group(str(out / RESULT_STORE), mode="r")[DONE_ARRAY][:].sum())
    except (KeyError, FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError):
        return 0


def progress_fraction(log: str) -> float:
    """The driver's last progress line as a fraction (0 before any): ``segmentation: N% done``
    (patch tasks) or ``blocks: N of M done`` (a ``full_image`` slide's blocks)."""
    found = re.findall(r"segmentation: (\d+)% done|blocks: (\d+) of (\d+) done", log)
    if not found:
        return 0.0
    percent, done, total = found[-1]
    return int(percent) / 100 if percent else int(done) / int(total)
