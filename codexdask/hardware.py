"""What the machine offers: NVIDIA GPUs and their memory (NVML), host memory (psutil), and the
memory limit of the Dask worker a function runs in.

Shared by the engine (which feeds the figures to the pure :mod:`~codexdask.segmenters.planner`),
the cluster module, the Mesmer adapter and ``codexdask doctor``. TensorFlow is never imported.

Failures are reported, not swallowed. :func:`probe_gpus` separates two cases:

- *no GPU here*: nvidia-ml-py is not installed, or NVML finds no driver (``note`` says which).
  That is the normal state of a CPU machine.
- *a GPU that cannot be queried*: NVML is there but initialising it or a device query fails
  (``error`` holds the NVML error). The engine records it as a warning in the run manifest, and
  ``--gpus`` refuses to start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import psutil

__all__ = [
    "WORKER_IDLE_BYTES",
    "GpuProbe",
    "device_free_bytes",
    "host_free_bytes",
    "probe_gpus",
    "worker_memory_limit",
]

logger = logging.getLogger(__name__)

#: NVML errors that mean "there is no NVIDIA GPU / driver here", not "a GPU failed".
_ABSENT = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")

#: Resident memory of an idle Dask worker process (Python, numpy, dask, distributed, zarr and
#: codexdask imported): 142-145 MiB measured by ``bench/memory.py`` on this project's machines.
#: Used where a worker does not report its own memory.
WORKER_IDLE_BYTES = 145 * 2**20


@dataclasses.dataclass(frozen=True)
class GpuProbe:
    """What NVML said about the NVIDIA GPUs of this machine.

    Attributes
    ----------
    gpus : list of dict
        One dict per GPU: ``index``, ``name``, ``uuid``, ``total_bytes``, ``free_bytes``.
    error : str or None
        Set when NVML is present but failed (initialisation or a device query): a GPU may be
        there that nothing can use. ``gpus`` is then empty.
    note : str or None
        Why no GPU is listed when none can be: nvidia-ml-py is not installed, or no driver.
    """

    gpus: list[dict[str, Any]]
    error: str | None = None
    note: str | None = None

    @property
    def problem(self) -> str | None:
        """``error``, else ``note``: why ``gpus`` is empty (None when GPUs were listed)."""
        return self.error or (None if self.gpus else self.note or "NVML lists no GPU")


def probe_gpus(visible_only: bool = False) -> GpuProbe:
    """List the NVIDIA GPUs and their memory through NVML.

    Parameters
    ----------
    visible_only : bool
        Only the devices of ``CUDA_VISIBLE_DEVICES`` (in that order) when it is set, which is how
        dask-cuda and SLURM give each worker its GPU.

    Returns
    -------
    GpuProbe
    """
    try:
        import pynvml
    except ImportError:
        return GpuProbe([], note="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if type(exc).__name__ in _ABSENT:
            return GpuProbe([], note=f"no NVIDIA driver found ({type(exc).__name__})")
        return GpuProbe([], error=f"NVML could not start ({type(exc).__name__}: {exc})")
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if visible_only:
            handles = _visible_handles(pynvml, handles)
        return GpuProbe([_describe(pynvml, handle) for handle in handles])
    except pynvml.NVMLError as exc:
        return GpuProbe([], error=f"NVML query failed ({type(exc).__name__}: {exc})")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:  # the figures are read; a failed shutdown changes nothing
            logger.debug("nvmlShutdown failed: %s", exc)


def device_free_bytes() -> int | None:
    """Free memory of the first visible NVIDIA GPU, or ``None`` without one.

    A GPU that NVML cannot query also gives ``None``, after a logged warning naming the error.
    """
    probe = probe_gpus(visible_only=True)
    if probe.error:
        logger.warning("cannot measure the GPU's free memory: %s", probe.error)
    return int(probe.gpus[0]["free_bytes"]) if probe.gpus else None


def host_free_bytes() -> int:
    """Host memory available to this process, in bytes.

    ``psutil``'s available memory; inside a Dask worker, capped by what its memory limit leaves
    after its current resident memory.
    """
    available = int(psutil.virtual_memory().available)
    limit = worker_memory_limit()
    if limit:
        used = int(psutil.Process().memory_info().rss)
        available = min(available, max(0, limit - used))
    return available


def worker_memory_limit() -> int | None:
    """The memory limit of the Dask worker running this function, or ``None`` outside one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a worker
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return int(limit) if limit else None


def _describe(pynvml: Any, handle: Any) -> dict[str, Any]:
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    name = pynvml.nvmlDeviceGetName(handle)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    return {
        "index": int(pynvml.nvmlDeviceGetIndex(handle)),
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
        "total_bytes": int(memory.total),
        "free_bytes": int(memory.free),
    }


def _visible_handles(pynvml: Any, handles: list[Any]) -> list[Any]:
    """The handles named by ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs), in its order.

    A MIG or unknown identifier cannot be sized by NVML here and is skipped (with a log line).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return handles
    chosen = []
    for item in (part.strip() for part in visible.split(",")):
        if item.isdigit():
            if int(item) < len(handles):
                chosen.append(handles[int(item)])
        elif item:
            try:
                chosen.append(pynvml.nvmlDeviceGetHandleByUUID(item))
            except pynvml.NVMLError as exc:
                logger.warning("CUDA_VISIBLE_DEVICES entry %r: %s; not sized", item, exc)
    return chosen
