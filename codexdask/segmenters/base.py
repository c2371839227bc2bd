"""The segmenter contract (the registry is :mod:`codexdask.segmenters.registry`).

A segmenter turns a batch of 2-channel patches into cell and nucleus labels. The simplest one
implements two stages:

``infer(batch, image_mpp) -> maps``
    The part that may need an accelerator. ``maps`` is any picklable object.
``postprocess(maps) -> labels``
    The CPU part. ``labels`` is ``(B, H, W, 2)`` uint32, channel 0 whole-cell, channel 1
    nucleus, each labelled 1..K per image.

The engine runs every batch as three tasks, so that the task pinned to a GPU (``resources=
{"GPU": 1}``) holds only what needs the GPU:

``prepare(batch, image_mpp) -> prepared``
    CPU threads, ahead of the GPU (for Mesmer: resize, normalisation, CLAHE, network tiles).
``network(prepared) -> (out, seconds)``
    The pinned task (for Mesmer: the network on the tiles), and the seconds of it spent in
    the network proper.
``finish(out) -> labels``
    CPU threads (for Mesmer: untiling, deep watershed, resizing back).

By default ``prepare`` only defers ``infer``, ``network`` runs it and ``finish`` is
``postprocess``: a two-stage segmenter's ``infer`` is its pinned task. A segmenter with a
network overrides the three (and ``prepare_windows`` / ``finish_windows`` for logical patches)
and keeps ``infer`` = network(prepare) and ``postprocess`` = finish, the same work.

Segmenters are picklable and light: heavy state (a model) is loaded lazily, once per process.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from codexdask.boxes import Box
from codexdask.errors import InputError, SegmenterError
from codexdask.statistics.passes import ImageStatistics

#: Default halo of a segmenter, in microns (64 pixels at 0.5 µm/px).
DEFAULT_HALO_UM = 32.0
#: Default side of a compute block, in pixels.
DEFAULT_BLOCK_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Memory one patch needs while it is segmented.

    Attributes
    ----------
    device_bytes : int
        Accelerator memory for the inference stage (0 for CPU-only segmenters).
    host_bytes : int
        Host memory for inference plus post-processing.
    """

    device_bytes: int
    host_bytes: int


@dataclasses.dataclass(frozen=True)
class Weights:
    """The weights a run used: what ``run_manifest.json`` records of a model-based segmenter.

    Attributes
    ----------
    path : str or None
        The file, SavedModel directory or archive (``None`` while a download is pending).
    sha256 : str or None
        SHA-256 of the file (of a directory: of its files' relative paths and bytes, in sorted
        order); ``None`` without a path.
    source : str
        Where they were found: ``"model_path"``, ``"deepcell-cache"``, ...
    runtime : str
        ``"torch"`` or ``"tensorflow"``.
    precision : str
        The network precision the run asks for.
    """

    path: str | None
    sha256: str | None
    source: str
    runtime: str
    precision: str


class Segmenter(abc.ABC):
    """Base class of every segmenter; see the module docstring for the contract."""

    #: Registry name.
    name: str = "segmenter"
    #: Whether ``infer`` benefits from a GPU worker (its tasks get ``resources={"GPU": 1}``).
    wants_gpu: bool = False
    #: CPU seconds per megapixel of the slide after inference (post-processing, stitching,
    #: repair) and GPU seconds per megapixel of inference: GPU workers get their threads from
    #: them (:func:`~codexdask.segmenters.planner.plan_gpu_threads`). ``None``: not known.
    cpu_seconds_per_megapixel: float | None = None
    gpu_seconds_per_megapixel: float | None = None

    @abc.abstractmethod
    def infer(self, batch: np.ndarray, image_mpp: float) -> Any:
        """Run the accelerator stage on ``batch`` ``(B, H, W, 2)`` (nucleus, whole-cell)."""

    @abc.abstractmethod
    def postprocess(self, maps: Any) -> np.ndarray:
        """Turn ``infer``'s output into ``(B, H, W, 2)`` uint32 labels (whole-cell, nucleus)."""

    def predict(self, batch: np.ndarray, image_mpp: float) -> np.ndarray:
        """Segment ``batch`` ``(B, H, W, 2)``; ``postprocess(infer(batch, image_mpp))``."""
        return self.postprocess(self.infer(check_batch(batch), image_mpp))

    def prepare(self, batch: np.ndarray, image_mpp: float) -> Any:
        """The CPU stage before the pinned one; by default none (``infer`` runs pinned)."""
        return functools.partial(self.infer, batch, image_mpp)

    def network(self, prepared: Any) -> tuple[Any, float]:
        """The GPU-pinned stage on ``prepare``'s (or ``prepare_windows``'s) output.

        Returns its output and the seconds of it spent in the network proper (by default the
        deferred ``infer`` is run, all of it counted as network).
        """
        start = time.perf_counter()
        out = prepared()
        return out, time.perf_counter() - start

    def finish(self, out: Any) -> np.ndarray:
        """The CPU stage after the pinned one: ``(B, H, W, 2)`` uint32 labels (default
        ``postprocess``)."""
        return self.postprocess(out)

    def check(self) -> None:
        """Validate the configuration in the driver before any task runs (cheap, no model load).

        Raises a :class:`~codexdask.errors.CodexDaskError` with a fixing hint; the default
        accepts everything.
        """
        return None

    def memory_per_patch(self, shape: tuple[int, int], image_mpp: float) -> MemoryEstimate:
        """Bytes of accelerator and host memory one ``shape`` patch needs (a safe over-estimate)."""
        height, width = shape
        return MemoryEstimate(device_bytes=0, host_bytes=64 * height * width)

    def weights(self) -> Weights | None:
        """The weights this segmenter runs, located once (``None``: it has none, the default)."""
        return None

    # -- windows of a logical patch (``docs/semantics.md``, seamless logical patches) ----------

    def statistics(self, image_mpp: float) -> ImageStatistics | None:
        """Image-wide statistics this segmenter computes per image, gathered over a whole
        logical patch before its windows are segmented; ``None`` (the default) declares the
        segmenter block-local: a window is segmented as an image of its own."""
        return None

    def block_size(self, image_mpp: float) -> int:
        """Default side of the compute blocks of a logical patch, in pixels."""
        return DEFAULT_BLOCK_SIZE

    def halo(self, image_mpp: float) -> int:
        """Default halo in pixels: room for whole objects and the reach of local operations.

        The default, :data:`DEFAULT_HALO_UM` microns, holds cells up to about 30 µm across.
        """
        return max(1, math.ceil(DEFAULT_HALO_UM / image_mpp))

    def read_box(self, window: Box, patch_shape: tuple[int, int], image_mpp: float) -> Box:
        """The raw pixels needed to segment ``window`` of a patch (default: the window)."""
        return window

    def infer_windows(
        self, windows: Sequence[WindowInput], image_mpp: float, statistics: Any
    ) -> list[Any]:
        """The accelerator stage for windows of one logical patch.

        The default segments each window as an image of its own (block-local segmenters).
        """
        return [self.infer(w.raw[w.window.slices(w.read_box)][np.newaxis], image_mpp)
                for w in windows]

    def postprocess_windows(self, maps: Sequence[Any]) -> list[np.ndarray]:
        """The CPU stage: ``(h, w, 2)`` uint32 labels (whole-cell, nucleus) of every window."""
        return [np.asarray(self.postprocess(m))[0] for m in maps]

    def prepare_windows(self, windows: Sequence[WindowInput], image_mpp: float,
                        statistics: Any) -> Any:
        """:meth:`prepare` for windows of one logical patch (default: defers
        ``infer_windows``); its output goes to :meth:`network`."""
        return functools.partial(self.infer_windows, windows, image_mpp, statistics)

    def finish_windows(self, out: Any) -> list[np.ndarray]:
        """:meth:`finish` for windows: ``(h, w, 2)`` uint32 labels of every window (default
        ``postprocess_windows``)."""
        return self.postprocess_windows(out)


@dataclasses.dataclass(frozen=True)
class WindowInput:
    """One window of a logical patch, as a segmenter receives it.

    Attributes
    ----------
    raw : numpy.ndarray
        ``(h, w, 2)`` raw pixels (nucleus, whole-cell) of ``read_box``.
    read_box : Box
        What :meth:`Segmenter.read_box` asked for, in patch coordinates.
    window : Box
        The window whose labels are wanted (inside ``read_box``).
    patch_shape : (int, int)
        Height and width of the logical patch.
    """

    raw: np.ndarray
    read_box: Box
    window: Box
    patch_shape: tuple[int, int]


@runtime_checkable
class TiledSegmenter(Protocol):
    """A segmenter whose network runs on fixed-size tiles (Mesmer): its memory model per tile.

    The planner gives a segmenter that has these two members a tile batch (tiles per network
    call) sized to the free accelerator memory, and fills each inference task with enough
    patches for one call.
    """

    #: Accelerator memory one tile needs in a network call, bytes.
    device_bytes_per_tile: int

    def tiles_per_patch(self, shape: tuple[int, int], image_mpp: float) -> int:
        """Network tiles one ``shape`` patch at ``image_mpp`` becomes."""
        ...


class CallableSegmenter(Segmenter):
    """Wraps a user function ``fn(batch, image_mpp) -> (B, H, W, 2) labels`` as a segmenter.

    The whole function runs in ``postprocess`` (on CPU workers); ``infer`` only passes the batch on.
    """

    def __init__(self, fn: Callable[[np.ndarray, float], np.ndarray], name: str = "callable"):
        self.fn = fn
        self.name = name

    def infer(self, batch: np.ndarray, image_mpp: float) -> tuple[np.ndarray, float]:
        return batch, image_mpp

    def postprocess(self, maps: tuple[np.ndarray, float]) -> np.ndarray:
        batch, image_mpp = maps
        labels = np.asarray(self.fn(batch, image_mpp))
        if labels.shape != batch.shape[:3] + (2,):
            raise SegmenterError(
                f"segmenter {self.name!r} returned shape {labels.shape}; expected "
                f"{batch.shape[:3] + (2,)} (B, H, W, [whole-cell, nucleus])"
            )
        return labels.astype(np.uint32, copy=False)


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Check that ``batch`` is a numeric ``(B, H, W, 2)`` array with finite values.

    Raises
    ------
    InputError
        On a wrong rank, channel count, dtype, or NaN/inf pixels.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 2:
        raise InputError(
            "a segmentation batch must be (B, H, W, 2) [nucleus, whole-cell]; "
            f"got shape {batch.shape}"
        )
    if not (np.issubdtype(batch.dtype, np.integer) or np.issubdtype(batch.dtype, np.floating)):
        raise InputError(f"patch pixels must be numeric; got dtype {batch.dtype}")
    if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch).all():
        raise InputError("patch pixels contain NaN or inf; clean or fill them before segmenting")
    return batch
