"""Right-sized batches: how many patches go into one inference task, how many tiles into one call.

The planner is pure arithmetic: it turns free memory figures and a segmenter's memory model into a
:class:`BatchPlan`. The figures come from :mod:`codexdask.hardware`, measured by the caller (the
engine measures them on the workers). All figures are bytes.

With ``T`` the tiles per network call, ``n`` the tiles of one patch, ``d`` the
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
other segmenter a task holds ``DEFAULT_PATCHES_PER_TASK`` patches, or one window of a logical
patch (windows are large, and grouping them gains nothing but idle workers at the end)::

    wanted = ceil(T / n)   (tiled)   or   DEFAULT_PATCHES_PER_TASK   or   1 (windows)
    patches_per_task = max(1, min(wanted, host budget // h, MAX_PATCHES_PER_TASK))

A user's ``batch_size`` / ``tiles_per_call`` replaces the computed value. The safety fractions
leave room for the CUDA context, cuDNN workspaces, other tasks of the same worker and the
allocator's fragmentation. Out-of-memory errors that still happen are handled by
:func:`run_with_backoff`, which halves the tile batch down to 1.

The free host memory of a worker is its memory limit minus what the worker process already holds
(about 145 MiB when idle, :data:`codexdask.hardware.WORKER_IDLE_BYTES`); the engine subtracts it
before calling the planner.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from codexdask.config import fixed_or_none
from codexdask.errors import ConfigError, SegmenterError
from codexdask.segmenters.base import Segmenter, TiledSegmenter

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


@dataclasses.dataclass(frozen=True)
class GpuFeed:
    """Threads of one GPU worker, and how busy they can keep its GPU.

    A GPU worker runs one network task at a time (the ``GPU`` resource) on one of its threads;
    the others prepare, finish, stitch and repair on the CPU. With ``g`` GPU seconds and ``c``
    CPU seconds per megapixel, ``k = threads - 1`` CPU threads keep up with the GPU when
    ``k / c >= 1 / g``, so the worker wants ``1 + ceil(c / g)`` threads; with fewer the GPU is
    busy ``k * g / c`` of the time (``g / (g + c)`` with one thread, which does both in turn).
    The pinned thread mostly waits for its GPU, so a local GPU worker gets up to its share of
    the node's cores *plus one* (:func:`codexdask.engine.cluster.gpu_threads`): an 8-GPU node
    of 16 cores runs 3 threads per GPU, 2 of them on the CPU.

    Attributes
    ----------
    threads : int
        Threads per GPU worker: what it wants, at most ``cores_per_gpu``.
    wanted : int
        Threads that would keep the GPU busy.
    gpu_busy_fraction : float
        Expected share of the time the GPU computes, in (0, 1].
    cpu_s_per_mp, gpu_s_per_mp : float
        The costs the plan used (seconds per megapixel of the slide).
    """

    threads: int
    wanted: int
    gpu_busy_fraction: float
    cpu_s_per_mp: float
    gpu_s_per_mp: float

    def as_dict(self) -> dict[str, Any]:
        """The plan as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def plan_gpu_threads(cores_per_gpu: int, cpu_s_per_mp: float, gpu_s_per_mp: float) -> GpuFeed:
    """Threads per GPU worker from the segmenter's costs (see :class:`GpuFeed`).

    Examples
    --------
    >>> feed = plan_gpu_threads(8, cpu_s_per_mp=0.6, gpu_s_per_mp=0.04)
    >>> feed.wanted, feed.threads, round(feed.gpu_busy_fraction, 2)
    (16, 8, 0.47)
    """
    if cores_per_gpu < 1 or cpu_s_per_mp <= 0 or gpu_s_per_mp <= 0:
        raise ConfigError(
            f"plan_gpu_threads needs cores_per_gpu >= 1 and positive costs, got {cores_per_gpu}, "
            f"{cpu_s_per_mp}, {gpu_s_per_mp}"
        )
    wanted = 1 + math.ceil(cpu_s_per_mp / gpu_s_per_mp)
    threads = min(wanted, cores_per_gpu)
    if threads == 1:
        busy = gpu_s_per_mp / (gpu_s_per_mp + cpu_s_per_mp)
    else:
        busy = min(1.0, (threads - 1) * gpu_s_per_mp / cpu_s_per_mp)
    return GpuFeed(threads, wanted, busy, cpu_s_per_mp, gpu_s_per_mp)


def plan_batches(
    segmenter: Segmenter,
    patch_shape: tuple[int, int],
    image_mpp: float,
    *,
    host_free_bytes: int,
    device_free_bytes: int | None = None,
    batch_size: int | str = "auto",
    tiles_per_call: int | str = "auto",
    windows: bool = False,
) -> BatchPlan:
    """Choose patches per task and tiles per network call (see the module docstring).

    Parameters
    ----------
    segmenter : Segmenter
        Its ``memory_per_patch`` gives the per-patch figures; a
        :class:`~codexdask.segmenters.base.TiledSegmenter` (Mesmer) also gets a tile batch.
    patch_shape : (int, int)
        Patch height and width in pixels.
    image_mpp : float
        Microns per pixel of the patches.
    host_free_bytes : int
        Host memory one worker can give to segmentation (its limit minus what it holds).
    device_free_bytes : int, optional
        Free accelerator memory of the GPU inference runs on. ``None`` or ``0`` plans for
        inference on CPU.
    batch_size, tiles_per_call : "auto" or int
        Fixed values replace the planner's choice.
    windows : bool
        ``patch_shape`` is a compute window of a logical patch: a segmenter without network
        tiles then wants one window per task.

    Returns
    -------
    BatchPlan

    Raises
    ------
    ConfigError
        If ``batch_size`` or ``tiles_per_call`` is neither ``"auto"`` nor a positive integer.
    """
    fixed_patches = fixed_or_none("batch_size", batch_size)
    fixed_tiles = fixed_or_none("tiles_per_call", tiles_per_call)
    shape = (int(patch_shape[0]), int(patch_shape[1]))
    estimate = segmenter.memory_per_patch(shape, image_mpp)
    host_per_patch = max(1, int(estimate.host_bytes))
    if not device_free_bytes:  # 0 or nothing measured: plan for inference on CPU
        device_free_bytes = None
    host_budget = int(host_free_bytes * HOST_FRACTION)
    notes = []

    tiles: int | None = None
    tiles_per_patch: int | None = None
    if isinstance(segmenter, TiledSegmenter):
        tiles_per_patch = int(segmenter.tiles_per_patch(shape, image_mpp))
        per_tile = int(segmenter.device_bytes_per_tile)
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
        elif windows:
            wanted, want_note = 1, "one window of a logical patch"
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
            notes.append("warning: one window needs more than the host budget; use a smaller "
                         "block_size" if windows else
                         "warning: one patch needs more than the host budget; use smaller patches")
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
    device_free_bytes: int | None,
    host_free_bytes: int,
) -> tuple[int, str]:
    """Tiles per network call that fit in memory.

    Uses ``device_free_bytes`` when given (GPU), otherwise a share of ``host_free_bytes`` (CPU).

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
    usable = int(host_free_bytes * HOST_FRACTION * CPU_NETWORK_SHARE)
    tiles = _clamp(usable // per_tile, 1, MAX_TILES_PER_CALL_CPU)
    why = (
        f"no GPU: {_gib(host_free_bytes)} available host memory x {HOST_FRACTION} x "
        f"{CPU_NETWORK_SHARE} / {_mib(per_tile)} per tile, cap {MAX_TILES_PER_CALL_CPU}"
    )
    return tiles, why


#: Messages of out-of-memory errors raised as plain runtime errors (TensorFlow, PyTorch, cuDNN).
_OOM_MESSAGES = ("OOM when allocating", "CUDA out of memory", "CUDNN_STATUS_ALLOC_FAILED",
                 "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (without importing TensorFlow or PyTorch).

    True for :class:`MemoryError`; TensorFlow's ``ResourceExhaustedError`` and PyTorch's
    ``torch.OutOfMemoryError`` / ``torch.cuda.OutOfMemoryError`` (recognised by class name
    anywhere in the MRO); and errors whose message says ``OOM when allocating``, ``CUDA out of
    memory`` or a cuDNN / cuBLAS allocation failure.
    """
    if isinstance(exc, MemoryError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ResourceExhaustedError", "OutOfMemoryError"}:
        return True
    message = str(exc)
    return any(text in message for text in _OOM_MESSAGES)


def release_device_memory() -> None:
    """Return the memory a failed call left in PyTorch's CUDA cache to the GPU (if PyTorch is
    loaded and sees a GPU), so the retry with fewer tiles can use it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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
            release_device_memory()
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


def _clamp(value: int, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"
