"""Run ``codexdask segment`` on SLURM: GPU worker jobs from dask-jobqueue, scaled adaptively.

Run this inside the driver job (``driver.sbatch``). The driver job holds the Dask scheduler and
the codexdask driver. dask-jobqueue submits one SLURM job per GPU worker, as described in
``cluster.yaml``. The workers start the Python interpreter that runs this script, so this
environment must sit on storage that the compute nodes share.

The scheduler, the workers and the driver talk over TLS: a Dask scheduler runs whatever code a
client sends it, and on a cluster's network anyone could connect. With certificates named in
Dask's configuration (``distributed.comm.tls.*``) those are used; otherwise throw-away ones are
made for the run (needs the ``cryptography`` package) and the workers' copies are written, readable
by you only, to ``shared-temp-directory`` of ``cluster.yaml``.

Usage::

    python deploy/slurm/run_slurm.py STORE --out DIR [--cluster-config deploy/slurm/cluster.yaml]
        [--minimum 1] [--maximum 4] [--wait-timeout SECONDS] [segment flags: --config YAML,
        --backend mesmer, --model-path DIR, --resume, ...]

Exit status: 0 on success, 2 for an error the user can fix (as ``codexdask``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed.security import Security

from codexdask.cli import add_segment_options, segment_config
from codexdask.config import MODEL_PATH_ENV, load_yaml
from codexdask.errors import ClusterError, CodexDaskError, ConfigError

#: ``cluster.yaml`` beside this script.
DEFAULT_CLUSTER_CONFIG = Path(__file__).resolve().with_name("cluster.yaml")
#: Segment flags that choose a cluster; here the cluster comes from SLURM instead.
CLUSTER_FLAGS = ("scheduler", "gpus", "n_workers", "memory_limit")
#: Arguments of this script that are not SegmentConfig keys.
DRIVER_ARGS = ("cluster_config", "minimum", "maximum", "wait_timeout")
#: Seconds between looks at the worker jobs while waiting for the first worker.
WORKER_POLL_S = 2.0


def jobqueue_settings(path: str | Path) -> dict[str, Any]:
    """The ``jobqueue.slurm`` section of a dask-jobqueue YAML file, as dotted Dask config keys.

    Parameters
    ----------
    path : str or Path
        A YAML file shaped like ``cluster.yaml`` (``jobqueue: slurm: {key: value}``).

    Returns
    -------
    dict
        ``{"jobqueue.slurm.cores": 8, ...}``, ready for ``dask.config.set``;
        ``shared-temp-directory`` is made absolute (``~`` and ``$VAR`` expanded).

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or has no ``jobqueue.slurm`` mapping.
    """
    jobqueue = load_yaml(path).get("jobqueue")
    section = jobqueue.get("slurm") if isinstance(jobqueue, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(
            f"cluster config {str(path)!r} has no 'jobqueue: slurm:' mapping; start from "
            "deploy/slurm/cluster.yaml"
        )
    settings = {f"jobqueue.slurm.{key}": value for key, value in section.items()}
    shared = settings.get("jobqueue.slurm.shared-temp-directory")
    if shared:  # job scripts must name real files: no ~ or $VAR left for a shell to expand
        settings["jobqueue.slurm.shared-temp-directory"] = os.path.abspath(
            os.path.expandvars(os.path.expanduser(shared))
        )
    return settings


def cluster_security(settings: dict[str, Any]) -> Security:
    """TLS settings for the scheduler and the worker jobs.

    Parameters
    ----------
    settings : dict
        :func:`jobqueue_settings`; its ``shared-temp-directory`` (created, mode 700, if missing)
        receives the workers' copies of throw-away certificates.

    Returns
    -------
    distributed.security.Security
        The site's certificates when Dask's configuration names a CA file
        (``distributed.comm.tls.ca-file``), else throw-away ones for this run.

    Raises
    ------
    ConfigError
        If no certificates are configured and ``cryptography`` (which makes them) is missing.
    """
    configured = Security()
    if configured.get_tls_config_for_role("scheduler").get("ca_file"):
        return configured
    try:
        security = Security.temporary()
    except ImportError as exc:
        raise ConfigError(
            "TLS between the driver and the SLURM workers needs certificates: pip install "
            "cryptography for throw-away ones, or name yours in Dask's configuration "
            "(distributed.comm.tls.ca-file, .scheduler.cert/.key, .worker.cert/.key, "
            ".client.cert/.key)"
        ) from exc
    shared = settings.get("jobqueue.slurm.shared-temp-directory")
    if shared:
        Path(shared).mkdir(mode=0o700, parents=True, exist_ok=True)
    return security


def check_worker_job(job_script: str, cluster_config: str | Path) -> None:
    """Ask SLURM whether it would ever run the worker job, before any is submitted.

    ``sbatch --test-only`` validates the job script (partition, account, cores, memory, ``gres``)
    without submitting it. Without this, a worker job SLURM refuses would leave the driver waiting
    for workers that never come.

    Parameters
    ----------
    job_script : str
        The worker job script (``SLURMCluster.job_script()``).
    cluster_config : str or Path
        The file the script was made from, named in the error.

    Raises
    ------
    ClusterError
        If ``sbatch`` is missing or refuses the job, with SLURM's own reason.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="codexdask-worker-") as script:
        script.write(job_script)
        script.flush()
        try:
            checked = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True,
                                     text=True, timeout=60, check=False)
        except FileNotFoundError as exc:
            raise ClusterError("sbatch not found: run this on a node of the SLURM cluster (the "
                               "driver job, or a login node)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ClusterError("sbatch --test-only did not answer within 60 s: is slurmctld "
                               "up? (`sinfo`)") from exc
    if checked.returncode != 0:
        reason = "; ".join(line.removeprefix("sbatch: error: ").strip()
                           for line in checked.stderr.splitlines() if line.strip())
        raise ClusterError(
            f"SLURM would not run the worker job described by {str(cluster_config)!r}: {reason}; "
            "check its queue (partition), account, cores, memory and job-extra-directives "
            "against `sinfo -o '%P %c %m %G'`"
        )


def wait_for_first_worker(client: Any, cluster: Any, timeout: float | None,
                          log_directory: str | None, start_timeout: float) -> None:
    """Wait until a worker joins the scheduler; fail early when the worker jobs cannot start one.

    dask-jobqueue does not notice a worker job that never connects (a bad worker argument, an
    environment missing on the compute node): without these checks the driver would wait for
    ever. Pending jobs may wait as long as the queue makes them; running ones may not.

    Parameters
    ----------
    client : distributed.Client
        A client of ``cluster``.
    cluster : dask_jobqueue.SLURMCluster
        Its ``workers`` hold the submitted jobs (``job_id``).
    timeout : float or None
        Seconds to wait at most (None: as long as worker jobs are queued or starting).
    log_directory : str or None
        The worker jobs' log folder (``log-directory`` of the cluster config).
    start_timeout : float
        Seconds a worker job may run before its worker joins.

    Raises
    ------
    ClusterError
        When every worker job submitted so far has left the queue, or one has run for
        ``start_timeout`` seconds, with no worker joined (with the last line of a job's error
        log); or after ``timeout`` seconds.
    """
    started = time.monotonic()
    running_since: dict[str, float] = {}
    while not client.scheduler_info(n_workers=-1)["workers"]:
        now = time.monotonic()
        submitted = {str(job.job_id) for job in cluster.workers.values()
                     if getattr(job, "job_id", None)}
        states = queued_jobs()
        if submitted and states is not None:
            for job in submitted:
                if states.get(job) == "RUNNING":
                    running_since.setdefault(job, now)  # first seen running
            stuck = sorted(job for job, since in running_since.items()
                           if states.get(job) == "RUNNING" and now - since > start_timeout)
            if not submitted & states.keys() or stuck:
                what = (f"worker job {stuck[0]} has run for {start_timeout:.0f} s" if stuck else
                        f"worker job(s) {', '.join(sorted(submitted))} ended")
                raise ClusterError(
                    f"{what} before any worker joined the scheduler"
                    f"{last_error_line(log_directory, submitted)}; see their logs in "
                    f"{log_directory or 'the job directory'} and the cluster config's worker "
                    "settings"
                )
        if timeout is not None and now - started > timeout:
            raise ClusterError(
                f"no worker job started within {timeout} s; check `squeue --me` and the logs in "
                "the cluster config's log-directory"
            )
        time.sleep(WORKER_POLL_S)


def queued_jobs() -> dict[str, str] | None:
    """``{job id: state}`` of the jobs SLURM holds now; None if squeue did not answer."""
    try:
        listed = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True,
                                timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.split(maxsplit=1) for line in listed.stdout.splitlines() if line.strip())


def last_error_line(log_directory: str | None, job_ids: set[str]) -> str:
    """`` (job ID: LINE)`` from the first worker job's ``.err`` log that has one, else ''.

    LINE is the last line naming an error (an exception's), else the log's last line.
    """
    for job_id in sorted(job_ids):
        for path in sorted(Path(log_directory or ".").glob(f"*-{job_id}.err")):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                     if line.strip()]
            errors = [line for line in lines if "Error" in line]
            if lines:
                return f" (job {job_id}: {(errors or lines)[-1]})"
    return ""


def worker_start_timeout(settings: dict[str, Any]) -> float:
    """Seconds a running worker job may take to join: twice its ``death-timeout`` (default 60 s),
    the time a worker itself keeps trying to reach the scheduler."""
    death_timeout = settings.get("jobqueue.slurm.death-timeout") or 60
    return 2 * float(parse_timedelta(death_timeout, default="seconds") or 60)


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the store, ``--out``, cluster sizing and every ``codexdask segment`` flag."""
    parser = argparse.ArgumentParser(
        prog="run_slurm.py", description="codexdask segment on SLURM GPU worker jobs"
    )
    parser.add_argument("store", help="patch store (absolute path on shared storage)")
    parser.add_argument("--out", required=True, help="output directory on shared storage")
    parser.add_argument("--cluster-config", default=str(DEFAULT_CLUSTER_CONFIG),
                        help="dask-jobqueue YAML (default: cluster.yaml beside this script)")
    parser.add_argument("--minimum", type=int, default=1, help="fewest GPU worker jobs (>= 1)")
    parser.add_argument("--maximum", type=int, default=4, help="most GPU worker jobs")
    parser.add_argument("--wait-timeout", type=float, default=None,
                        help="seconds to wait for the first worker job (default: no limit)")
    add_segment_options(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (the cluster flags of ``codexdask segment`` are refused)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in CLUSTER_FLAGS:
        if getattr(args, flag) is not None:
            parser.error(f"--{flag.replace('_', '-')} does not apply: SLURM jobs are the workers "
                         "(size them in --cluster-config)")
    if not 1 <= args.minimum <= args.maximum:
        parser.error("need 1 <= --minimum <= --maximum")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Start the SLURM cluster, run the segmentation, print a summary; returns the exit status."""
    args = parse_args(argv)
    try:
        segment_args = argparse.Namespace(
            **{k: v for k, v in vars(args).items() if k not in DRIVER_ARGS}
        )
        config = segment_config(segment_args)
        settings = jobqueue_settings(args.cluster_config)
        from dask_jobqueue import SLURMCluster
        from distributed import Client

        from codexdask import run

        security = cluster_security(settings)
        if config.model_path:  # worker jobs inherit it: `codexdask doctor` checks these weights
            os.environ[MODEL_PATH_ENV] = str(Path(config.model_path).resolve())
        with dask.config.set(settings), SLURMCluster(security=security) as cluster:
            check_worker_job(cluster.job_script(), args.cluster_config)
            cluster.adapt(minimum=args.minimum, maximum=args.maximum)
            with Client(cluster) as client:
                print(f"scheduler {cluster.scheduler_address}, dashboard {client.dashboard_link}",
                      file=sys.stderr)
                wait_for_first_worker(client, cluster, args.wait_timeout,
                                      settings.get("jobqueue.slurm.log-directory"),
                                      worker_start_timeout(settings))
                # Workers resolve relative paths from their own directory: pass absolute ones.
                result = run(Path(args.store).resolve(), Path(args.out).resolve(), config,
                             client=client, progress=True)
        print(result.summary())
        return 0
    except CodexDaskError as exc:
        print(f"run_slurm.py: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
