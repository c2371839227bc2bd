"""Where the work runs: the embedded local cluster, an existing scheduler, or one worker per GPU.

Only this module knows about workers. :func:`connect` yields a ``distributed.Client`` and closes
what it started; :func:`gpu_workers` tells the engine whether inference tasks can be pinned to
``GPU`` resources, :func:`gpu_feed` how busy its threads can keep a GPU;
:func:`worker_memory_budgets` tells the planner how much memory a worker can
still give.

An existing scheduler is reached with Dask's own security configuration: for a ``tls://``
address, the certificate files named by ``distributed.comm.tls.ca-file``,
``distributed.comm.tls.client.cert`` and ``distributed.comm.tls.client.key`` (in a Dask YAML
file, or the environment variables ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
``DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT``, ``DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY``).
See ``deploy/README.md``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import dask
import psutil
from distributed import Client, LocalCluster
from distributed.comm.addressing import parse_host_port
from distributed.exceptions import WorkerStartTimeoutError
from distributed.security import Security

from codexdask.config import SegmentConfig
from codexdask.errors import ClusterError
from codexdask.hardware import WORKER_IDLE_BYTES, GpuProbe, probe_gpus
from codexdask.segmenters.base import Segmenter
from codexdask.segmenters.planner import GpuFeed, plan_gpu_threads

#: Seconds to wait for an existing scheduler before giving up.
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for a first worker on a cluster that has none yet.
WORKER_WAIT_S = 120


@contextlib.contextmanager
def connect(config: SegmentConfig, client: Client | None = None,
            segmenter: Segmenter | None = None) -> Iterator[Client]:
    """Yield a client for the run described by ``config``.

    Parameters
    ----------
    config : SegmentConfig
        ``scheduler`` (address of an existing cluster), ``gpus`` (start one worker per GPU),
        else a local cluster of ``n_workers`` processes with ``memory_limit`` each.
    client : distributed.Client, optional
        An existing client (e.g. from a notebook); used as is and left open.
    segmenter : Segmenter, optional
        With ``gpus``, its costs size each GPU worker's threads (:func:`gpu_threads`).

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached or no GPU can be found for ``--gpus``.
    """
    if client is not None:
        yield client
        return
    if config.scheduler:
        with _connect_existing(config.scheduler) as existing:
            yield existing
        return
    cluster = local_gpu_cluster(config, segmenter) if config.gpus else local_cluster(config)
    with cluster, Client(cluster) as local_client:
        yield local_client


#: Dask's nannies set ``MALLOC_TRIM_THRESHOLD_`` in their workers, which also switches off glibc's
#: dynamic mmap threshold: every large numpy array is then mmap'ed and page-faulted afresh. The
#: segmentation kernels allocate many image-sized arrays and ran about 1.4x slower that way
#: (measured on the watershed segmenter), so local workers keep glibc's defaults
#: (``docs/architecture.md``, measured facts).
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(config: SegmentConfig) -> LocalCluster:
    """The embedded default: one single-threaded worker process per core.

    Memory is shared evenly unless ``config.memory_limit`` says otherwise.
    """
    n_workers = config.n_workers or max(1, os.cpu_count() or 1)
    with dask.config.set(WORKER_ENVIRON):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=config.memory_limit or "auto",
            dashboard_address=":0",
        )


def local_gpu_cluster(config: SegmentConfig, segmenter: Segmenter | None = None) -> Any:
    """One worker process per visible GPU, each advertising ``GPU=1``.

    Each worker has one GPU and several threads (:func:`gpu_threads`): the ``GPU`` resource lets
    one inference task at a time hold the GPU while the other threads post-process and repair on
    the CPU.
    """
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ClusterError(
            "--gpus needs dask-cuda; install codexdask with the 'gpu' extra (pip install "
            "'codexdask[gpu]')"
        ) from exc
    probe = probe_gpus(visible_only=True)
    if probe.error:
        raise ClusterError(
            f"--gpus: {probe.error}; check the GPUs with `nvidia-smi`, or drop --gpus to run on "
            "CPU workers"
        )
    n_gpus = len(probe.gpus)
    if n_gpus == 0:
        raise ClusterError(
            f"no NVIDIA GPU / driver found ({probe.note}); drop --gpus to run on CPU workers"
        )
    threads = gpu_threads(n_gpus, segmenter)
    try:
        with dask.config.set(WORKER_ENVIRON):
            return LocalCUDACluster(
                threads_per_worker=threads,
                resources={"GPU": 1},
                memory_limit=config.memory_limit or "auto",
                dashboard_address=":0",
            )
    except Exception as exc:  # NVML and CUDA errors have no common base class
        raise ClusterError(
            f"could not start one worker per GPU ({type(exc).__name__}: {exc}); "
            "check `nvidia-smi`, or drop --gpus"
        ) from exc


def gpu_threads(n_gpus: int, segmenter: Segmenter | None = None) -> int:
    """Threads per local GPU worker: the node's cores shared among its GPUs, plus the thread of
    the pinned network task (it mostly waits for its GPU), no more than the segmenter's costs
    call for (:func:`~codexdask.segmenters.planner.plan_gpu_threads`); without known costs,
    the share of the cores."""
    share = max(1, (os.cpu_count() or 1) // n_gpus)
    feed = gpu_feed(share + 1, segmenter)
    return share if feed is None else feed.threads


def gpu_feed(threads: int, segmenter: Segmenter | None) -> GpuFeed | None:
    """How busy a GPU worker of ``threads`` threads keeps its GPU (``None``: costs unknown)."""
    if segmenter is None:
        return None
    cpu, gpu = segmenter.cpu_seconds_per_megapixel, segmenter.gpu_seconds_per_megapixel
    if cpu is None or gpu is None:
        return None
    return plan_gpu_threads(threads, cpu, gpu)


def gpu_worker_threads(client: Client) -> int:
    """Threads of the smallest GPU worker (1 if there is none)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    threads = [int(info.get("nthreads", 1)) for info in workers
               if info.get("resources", {}).get("GPU", 0) > 0]
    return min(threads, default=1)


def gpu_workers(client: Client) -> list[str]:
    """Addresses of the workers that advertise a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, info in workers.items() if info.get("resources", {}).get("GPU", 0) > 0]


def probe_gpu_worker(client: Client) -> tuple[str, GpuProbe] | None:
    """The first GPU worker's address and what NVML says there about its GPU (``None``: no GPU
    worker). The probe runs on that worker: its ``CUDA_VISIBLE_DEVICES`` names its GPU."""
    gpus = gpu_workers(client)
    if not gpus:
        return None
    return gpus[0], client.submit(probe_gpus, True, workers=gpus[:1], pure=False).result()


def worker_memory_limits(client: Client) -> list[int]:
    """Memory limit in bytes of each worker (available host RAM where a worker has none).

    Waits up to ``WORKER_WAIT_S`` for a first worker (clusters that scale up on demand).
    """
    if not client.scheduler_info(n_workers=-1)["workers"]:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, WorkerStartTimeoutError) as exc:
            raise ClusterError(
                f"no worker joined the scheduler within {WORKER_WAIT_S} s; start workers "
                "(e.g. `dask worker tcp://HOST:8786`) or check that they can reach the scheduler"
            ) from exc
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    available = psutil.virtual_memory().available
    return [int(info.get("memory_limit") or available) for info in workers]


def worker_memory_budgets(client: Client) -> list[int]:
    """Memory each worker can still give to tasks: its limit minus what its process holds.

    A worker's held memory is the process memory the scheduler last heard of, and at least
    :data:`~codexdask.hardware.WORKER_IDLE_BYTES` (an idle worker's, measured), so a plan never
    counts on memory the worker's own interpreter and libraries use.
    """
    limits = worker_memory_limits(client)
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    held = [max(int(info.get("metrics", {}).get("memory") or 0), WORKER_IDLE_BYTES)
            for info in workers]
    return [max(0, limit - used) for limit, used in zip(limits, held, strict=True)]


def total_threads(client: Client) -> int:
    """Worker threads of the whole cluster."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return max(1, sum(int(info.get("nthreads", 1)) for info in workers))


#: What to set so that a client can reach a ``tls://`` scheduler.
TLS_HINT = (
    "give codexdask the cluster's certificates through Dask's configuration: "
    "distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
    "distributed.comm.tls.client.key (or the environment variables "
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT, "
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY)"
)


def has_tls_credentials() -> bool:
    """Whether Dask's configuration gives a client what it needs to reach a ``tls://`` address.

    True when a CA file is configured (``distributed.comm.tls.ca-file``) or a security loader
    (``distributed.client.security-loader``) provides credentials per address.
    """
    return Security().get_tls_config_for_role("client").get("ca_file") is not None or bool(
        dask.config.get("distributed.client.security-loader", None)
    )


def speaks_tls(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the server at ``address`` (``tcp://HOST:PORT`` or ``HOST:PORT``) answers in TLS.

    Only asked after a plain connection failed: a TLS scheduler completes a TLS handshake (or
    answers it with a TLS alert), while a plain Dask server does not understand it.
    """
    try:
        host, port = parse_host_port(address.split("://", 1)[-1])
    except ValueError:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only which protocol answers matters, not whose
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLError as exc:  # an alert from the server is TLS too; garbage is not
        return "ALERT" in str(exc.reason or "")
    except OSError:
        return False


@contextlib.contextmanager
def _connect_existing(address: str) -> Iterator[Client]:
    tls = address.startswith("tls://")
    if tls and not has_tls_credentials():
        raise ClusterError(f"the scheduler at {address!r} uses TLS: {TLS_HINT}")
    try:
        existing = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        if not tls and speaks_tls(address):
            tls_address = "tls://" + address.split("://", 1)[-1]
            raise ClusterError(
                f"the scheduler at {address!r} only speaks TLS: connect to {tls_address!r} and "
                f"{TLS_HINT}"
            ) from exc
        hint = (f"check that its certificates are the cluster's: {TLS_HINT}" if tls else
                "start one with `dask scheduler` or check the address (tcp://HOST:8786)")
        raise ClusterError(
            f"could not reach a Dask scheduler at {address!r} within {CONNECT_TIMEOUT_S} s "
            f"({exc}); {hint}"
        ) from exc
    with existing:
        yield existing
