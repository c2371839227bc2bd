"""Right-sized batches: how many patches go into one inference task, how many tiles into one call.

The planner turns free memory and a segmenter's memory model into a :class:`BatchPlan`. All
figures are bytes. With ``T`` the tiles per network call, ``n`` the tiles of one patch, ``d`` the
accelerator bytes per tile and ``h`` the host bytes per patch (from
:meth:`~codexdask.segmenters.base.Segmenter.memory_per_patch`):

On a GPU (free accelerator memory ``D`` known)::

    T = clamp((D * DEVICE_FRACTION - DEVICE_RESERVE_BYTES) // d, 1, MAX_TILES_PER_CALL_GPU)
    host budget = free host memory * HOST_FRACTION

On a CPU (no GPU visible) the network's activations live in host memory too::

    budget = free host memory * HOST_FRACTION
    T = clamp(budget * CPU_NETWORK_SHARE // d, 1, MAX_TILES_PER_CALL_CPU)
    host budget = budget - T * d

Then, for a tiled segmenter (Mesmer) one task should fill at least one network call, and for any
other segmenter a task holds ``DEFAULT_PATCHES_PER_TASK`` patches::

    wanted = ceil(T / n)   (tiled)   or   DEFAULT_PATCHES_PER_TASK
    patches_per_task = max(1, min(wanted, host budget // h, MAX_PATCHES_PER_TASK))

A user's ``batch_size`` / ``tiles_per_call`` replaces the computed value. The safety fractions
leave room for the CUDA context, cuDNN workspaces, other tasks of the same worker and the
allocator's fragmentation. Out-of-memory errors that still happen are handled by
:func:`run_with_backoff`, which halves the tile batch down to 1.

Memory is measured without importing TensorFlow: the first visible NVIDIA GPU through NVML
(``nvidia-ml-py``), host memory through ``psutil`` (capped by the Dask worker's memory limit when
called inside a worker).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import auto_or_positive_int
from ..errors import ConfigError, SegmenterError
from .base import Segmenter

logger = logging.getLogger(__name__)

#: Fraction of the free accelerator memory the network may use.
DEVICE_FRACTION = 0.8
#: Accelerator memory kept back for the CUDA context, the weights and cuDNN workspaces.
DEVICE_RESERVE_BYTES = 1536 * 2**20
#: Fraction of the available host memory one inference task may use.
HOST_FRACTION = 0.5
#: On CPU, the share of the host budget given to network activations.
CPU_NETWORK_SHARE = 0.5
#: Largest tile batch on a GPU (about 50 GB of fp32 activations for Mesmer).
MAX_TILES_PER_CALL_GPU = 256
#: Largest tile batch on a CPU (larger batches are no faster there; measured 0.55 s/tile at 8
#: tiles and 0.47 s/tile at 24 on 2 cores).
MAX_TILES_PER_CALL_CPU = 32
#: Patches per task for segmenters without tiles.
DEFAULT_PATCHES_PER_TASK = 8
#: Upper bound on patches per task, so tasks stay small enough to balance and retry.
MAX_PATCHES_PER_TASK = 64

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How one segmenter should batch patches of one shape.

    Attributes
    ----------
    patches_per_task : int
        Patches handed to one ``infer`` call (one Dask task).
    tiles_per_call : int or None
        256² tiles per network call (``None`` for segmenters without tiles).
    device_bytes_per_patch : int
        Accelerator memory one patch needs if all its tiles go through the network at once.
    host_bytes_per_patch : int
        Host memory one patch needs through inference and post-processing.
    reason : str
        The arithmetic behind the choice, for logs and ``--dry-run`` output.
    """

    patches_per_task: int
    tiles_per_call: int | None
    device_bytes_per_patch: int
    host_bytes_per_patch: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The plan as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def plan_batches(
    segmenter: Segmenter,
    patch_shape: tuple[int, int],
    image_mpp: float,
    *,
    device_free_bytes: int | None = None,
    host_free_bytes: int | None = None,
    batch_size: int | str = "auto",
    tiles_per_call: int | str = "auto",
) -> BatchPlan:
    """Choose patches per task and tiles per network call (see the module docstring).

    Parameters
    ----------
    segmenter : Segmenter
        Its ``memory_per_patch`` gives the per-patch figures; a segmenter with a
        ``tiles_per_patch(shape, image_mpp)`` method and a ``device_bytes_per_tile`` attribute
        (Mesmer) also gets a tile batch.
    patch_shape : (int, int)
        Patch height and width in pixels.
    image_mpp : float
        Microns per pixel of the patches.
    device_free_bytes : int, optional
        Free accelerator memory; measured with NVML for a segmenter that wants a GPU when
        omitted. ``0``, or no GPU visible, plans for inference on CPU.
    host_free_bytes : int, optional
        Available host memory; measured with psutil when omitted.
    batch_size, tiles_per_call : "auto" or int
        Fixed values replace the planner's choice.

    Returns
    -------
    BatchPlan

    Raises
    ------
    ConfigError
        If ``batch_size`` or ``tiles_per_call`` is neither ``"auto"`` nor a positive integer.
    """
    fixed_patches = _auto_or_int("batch_size", batch_size)
    fixed_tiles = _auto_or_int("tiles_per_call", tiles_per_call)
    shape = (int(patch_shape[0]), int(patch_shape[1]))
    estimate = segmenter.memory_per_patch(shape, image_mpp)
    host_per_patch = max(1, int(estimate.host_bytes))
    if device_free_bytes is None and segmenter.wants_gpu:
        device_free_bytes = measure_device_free_bytes()
    if not device_free_bytes:  # 0 (or nothing measured): plan for inference on CPU
        device_free_bytes = None
    if host_free_bytes is None:
        host_free_bytes = measure_host_free_bytes()
    host_budget = int(host_free_bytes * HOST_FRACTION)
    notes = []

    tiles: int | None = None
    tiles_per_patch = _tiles_per_patch(segmenter, shape, image_mpp)
    if tiles_per_patch is not None:
        per_tile = int(segmenter.device_bytes_per_tile)  # type: ignore[attr-defined]
        if fixed_tiles is not None:
            tiles = fixed_tiles
            notes.append(f"tiles_per_call={tiles} (set by the user)")
        else:
            tiles, why = auto_tiles_per_call(
                per_tile, device_free_bytes=device_free_bytes, host_free_bytes=host_free_bytes
            )
            notes.append(f"tiles_per_call={tiles}: {why}")
        if device_free_bytes is None:  # CPU inference: activations come out of host memory
            host_budget = max(0, host_budget - tiles * per_tile)

    if fixed_patches is not None:
        patches = fixed_patches
        notes.append(f"patches_per_task={patches} (set by the user)")
    else:
        if tiles is not None and tiles_per_patch:
            wanted = math.ceil(tiles / tiles_per_patch)
            want_note = f"ceil({tiles} tiles per call / {tiles_per_patch} tiles per patch)"
        else:
            wanted = DEFAULT_PATCHES_PER_TASK
            want_note = "default"
        fit = host_budget // host_per_patch
        patches = max(1, min(wanted, fit, MAX_PATCHES_PER_TASK))
        notes.append(
            f"patches_per_task={patches} = min({wanted} wanted [{want_note}], {fit} fit in "
            f"{_gib(host_budget)} host budget at {_mib(host_per_patch)}/patch, "
            f"cap {MAX_PATCHES_PER_TASK})"
        )
        if fit < 1:
            notes.append("warning: one patch needs more than the host budget; use smaller patches")
    return BatchPlan(
        patches_per_task=int(patches),
        tiles_per_call=tiles,
        device_bytes_per_patch=int(estimate.device_bytes),
        host_bytes_per_patch=host_per_patch,
        reason="; ".join(notes),
    )


def auto_tiles_per_call(
    bytes_per_tile: int,
    *,
    device_free_bytes: int | None = None,
    host_free_bytes: int | None = None,
) -> tuple[int, str]:
    """Tiles per network call that fit in memory.

    Uses ``device_free_bytes`` when given (GPU), otherwise a share of the host budget (CPU).
    ``host_free_bytes`` is measured when needed and omitted.

    Returns
    -------
    tiles : int
        In ``[1, MAX_TILES_PER_CALL_GPU]`` on GPU, ``[1, MAX_TILES_PER_CALL_CPU]`` on CPU.
    reason : str
        The arithmetic, for logs.
    """
    per_tile = max(1, int(bytes_per_tile))
    if device_free_bytes is not None:
        usable = int(device_free_bytes * DEVICE_FRACTION) - DEVICE_RESERVE_BYTES
        tiles = _clamp(usable // per_tile, 1, MAX_TILES_PER_CALL_GPU)
        why = (
            f"({_gib(device_free_bytes)} free device memory x {DEVICE_FRACTION} - "
            f"{_gib(DEVICE_RESERVE_BYTES)} reserve) / {_mib(per_tile)} per tile, "
            f"cap {MAX_TILES_PER_CALL_GPU}"
        )
        return tiles, why
    if host_free_bytes is None:
        host_free_bytes = measure_host_free_bytes()
    usable = int(host_free_bytes * HOST_FRACTION * CPU_NETWORK_SHARE)
    tiles = _clamp(usable // per_tile, 1, MAX_TILES_PER_CALL_CPU)
    why = (
        f"no GPU: {_gib(host_free_bytes)} available host memory x {HOST_FRACTION} x "
        f"{CPU_NETWORK_SHARE} / {_mib(per_tile)} per tile, cap {MAX_TILES_PER_CALL_CPU}"
    )
    return tiles, why


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (without importing TensorFlow).

    True for :class:`MemoryError`, TensorFlow's ``ResourceExhaustedError`` (recognised by class
    name anywhere in its MRO) and errors whose message says ``OOM when allocating``.
    """
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "ResourceExhaustedError" for cls in type(exc).__mro__):
        return True
    return "OOM when allocating" in str(exc)


def run_with_backoff(
    fn: Callable[[int], R], tiles_per_call: int, *, what: str = "the network"
) -> tuple[R, int]:
    """Call ``fn(tiles)``, halving ``tiles`` after each out-of-memory error, down to 1.

    Parameters
    ----------
    fn : callable
        ``fn(tiles_per_call) -> result``; must be safe to call again after a failure.
    tiles_per_call : int
        First tile batch to try (>= 1).
    what : str
        Name used in log and error messages.

    Returns
    -------
    result
        ``fn``'s return value.
    tiles : int
        The tile batch that finally worked.

    Raises
    ------
    SegmenterError
        If ``fn`` runs out of memory even with one tile per call.
    """
    tiles = int(tiles_per_call)
    if tiles < 1:
        raise ConfigError(f"tiles_per_call must be >= 1, got {tiles_per_call!r}")
    while True:
        try:
            return fn(tiles), tiles
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            gc.collect()  # drop the failed call's buffers before retrying
            if tiles == 1:
                raise SegmenterError(
                    f"{what} ran out of memory even with 1 tile per call "
                    f"({type(exc).__name__}: {str(exc)[:200]}); free accelerator memory (one "
                    "worker per GPU, no other jobs on it), use smaller patches, or run on CPU"
                ) from exc
            smaller = max(1, tiles // 2)
            logger.warning("%s ran out of memory with %d tiles per call; retrying with %d",
                           what, tiles, smaller)
            tiles = smaller


def measure_device_free_bytes() -> int | None:
    """Free memory of the first visible NVIDIA GPU via NVML, or ``None`` without GPU/NVML.

    "First visible" follows ``CUDA_VISIBLE_DEVICES`` (an index or a ``GPU-`` UUID), which is how
    dask-cuda pins one GPU per worker.
    """
    gpus, _ = gpu_memory_info(visible_only=True)
    return int(gpus[0]["free_bytes"]) if gpus else None


def gpu_memory_info(visible_only: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """NVIDIA GPUs and their memory through NVML, without TensorFlow.

    Parameters
    ----------
    visible_only : bool
        Only the devices listed in ``CUDA_VISIBLE_DEVICES`` (in that order) when it is set.

    Returns
    -------
    gpus : list of dict
        Keys ``index``, ``name``, ``uuid``, ``total_bytes``, ``free_bytes``.
    error : str or None
        Why no GPU could be listed (no nvidia-ml-py, no driver), else ``None``.
    """
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return [], f"no NVIDIA driver found ({type(exc).__name__})"
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if visible_only:
            handles = _visible_handles(pynvml, handles)
        gpus = []
        for handle in handles:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append({
                "index": int(pynvml.nvmlDeviceGetIndex(handle)),
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                "total_bytes": int(memory.total),
                "free_bytes": int(memory.free),
            })
        return gpus, None
    except Exception as exc:
        return [], f"NVML query failed ({type(exc).__name__}: {exc})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # shutting down NVML never matters to the caller
            pass


def measure_host_free_bytes() -> int:
    """Available host memory, capped by this Dask worker's memory limit when in a worker."""
    import psutil

    available = int(psutil.virtual_memory().available)
    limit = _worker_memory_limit()
    if limit:
        used = int(psutil.Process().memory_info().rss)
        available = min(available, max(0, limit - used))
    return available


def _worker_memory_limit() -> int | None:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a worker
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return int(limit) if limit else None


def _visible_handles(pynvml: Any, handles: list[Any]) -> list[Any]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return handles
    chosen = []
    for item in (part.strip() for part in visible.split(",")):
        if not item:
            continue
        if item.isdigit():
            if int(item) < len(handles):
                chosen.append(handles[int(item)])
        else:
            try:
                chosen.append(pynvml.nvmlDeviceGetHandleByUUID(item))
            except Exception:  # a MIG or unknown id: NVML cannot size it, skip
                continue
    return chosen


def _tiles_per_patch(segmenter: Segmenter, shape: tuple[int, int], image_mpp: float) -> int | None:
    method = getattr(segmenter, "tiles_per_patch", None)
    if method is None or not hasattr(segmenter, "device_bytes_per_tile"):
        return None
    return int(method(shape, image_mpp))


def _auto_or_int(key: str, value: int | str) -> int | None:
    checked = auto_or_positive_int(key, value)
    return None if checked == "auto" else int(checked)


def _clamp(value: int, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"
