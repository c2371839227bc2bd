"""Mesmer in three stages: codexdask's own pipeline around one network call.

``prepare`` (CPU) does what ``deepcell.applications.Mesmer.predict(..., compartment="both")``
does before the network, with codexdask's own pieces (:mod:`codexdask.mesmer`): resize to
0.5 µm/px, percentile clip, rescale and CLAHE, deepcell's tile grid, the tiles as one contiguous
float32 array; ``network`` (the GPU-pinned task) only runs the network on them; ``finish`` (CPU)
untiles with deepcell's spline blend, runs deep watershed for both compartments with
``Mesmer.predict``'s defaults (:mod:`codexdask.postprocess`) and resizes the labels back.
``infer`` (prepare, network, untile) and ``postprocess`` (the rest) are the same work cut in
two. Only the network differs between the runtimes, which the weights choose
(:mod:`.mesmer_runtime`): a converted ``.safetensors`` file runs on PyTorch, a Keras SavedModel
on TensorFlow.

Every image goes through the window functions: a whole image (``infer``, ``patches`` mode) is one
window; a logical patch larger than a compute block (``full_image`` ...) is cut into windows whose
image-wide statistics come from the whole patch (:meth:`MesmerSegmenter.statistics`,
:mod:`.mesmer_stats`), whose network tiles lie on the patch's global tile grid and whose CLAHE
regions on its global region grid, so a window's maps are the whole patch's maps there.

Exactness: on TensorFlow with the same number of tiles per network call, the labels equal
``Mesmer(model).predict(batch, image_mpp=..., compartment="both", batch_size=T)`` bit for bit.
TensorFlow's float results change in the last bit with the batch size, so another ``T`` can flip
pixels whose probability lies within rounding of a threshold; pin ``tiles_per_call=4``
(deepcell's default) for deepcell's exact labels. On PyTorch (fp32) the maps differ from
TensorFlow's by ~1e-6, which moves a pixel whose probability sits on a threshold: over the Mesmer
matrix against deepcell's labels, 0-4 pixels differ per batch (worst 3 of 360,000) with equal
object counts (``tests/segmenters/test_mesmer_faithfulness.py``).

One deviation: deepcell 0.12.10 fails with a shape error on an image shorter than 256 px on one
axis and longer on the other (e.g. 300x200). Here the short axis of the preprocessed image is
reflect-padded to 256 as deepcell pads small images, tiled, and cropped after untiling
(:func:`codexdask.mesmer.windows.network_padding`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from codexdask import hardware
from codexdask.boxes import Box
from codexdask.config import fixed_or_none, model_path_or_environment
from codexdask.errors import ConfigError, StateError
from codexdask.mesmer.preprocess import (
    DEFAULT_KERNEL_SIZE,
    PreprocessGeometry,
    mesmer_preprocess,
    preprocess_geometry,
)
from codexdask.mesmer.resize import (
    MODEL_MPP,
    resize_image,
    resize_labels_required_box,
    resized_shape,
)
from codexdask.mesmer.tiling import MODEL_TILE
from codexdask.mesmer.weights import ModelSource, find_model_source, weights_key, weights_sha256
from codexdask.mesmer.windows import (
    network_grid,
    plan_window,
    window_inputs,
    window_tiles,
)
from codexdask.segmenters import planner
from codexdask.segmenters.base import MemoryEstimate, Segmenter, Weights, WindowInput, check_batch
from codexdask.segmenters.mesmer_maps import (
    MAP_NAMES,
    NUCLEAR_DEFAULTS,
    WHOLE_CELL_DEFAULTS,
    MesmerMaps,
    MesmerTileMaps,
    MesmerTiles,
    WindowJob,
    WindowMaps,
    postprocess_window,
    stack_tiles,
    untile,
    watershed_kwargs,
)
from codexdask.segmenters.mesmer_runtime import (
    PRECISIONS,
    TensorFlowRuntime,
    TorchRuntime,
    load_runtime,
    model_load_count,
    run_tiles,
)
from codexdask.segmenters.mesmer_stats import MesmerImageStatistics
from codexdask.statistics.exact import DEFAULT_PERCENTILE

__all__ = ["MAP_NAMES", "MesmerMaps", "MesmerSegmenter", "WindowMaps", "load_mesmer_model",
           "model_load_count", "resized_shape"]

logger = logging.getLogger(__name__)

#: ``mesmer_preprocess`` keywords accepted in ``preprocess_kwargs``.
PREPROCESS_KEYS = ("threshold", "percentile", "normalize", "kernel_size")
#: Accelerator memory per 256² tile in one network call, by runtime and precision. PyTorch,
#: measured on an H200 (``bench/gpu_check.py``, torch 2.11, 16-128 tiles per call): peak
#: allocated memory above the weights and the input, cuDNN's workspace included, 114 MiB per tile
#: in fp32, 82 in tf32 and 49 in bf16/fp16 (on CPU the activations alone peak at ~82 / ~41 MiB);
#: the budgets keep a margin above that (the weights, 98 MiB, are in the planner's fixed device
#: reserve). TensorFlow 2.8: peak RSS grows 116-133 MB per tile between 1 and 24 tiles per call
#: on CPU, a liveness analysis of the Keras graph gives ~168 MB on GPU; 200 MiB covers both.
DEVICE_BYTES_PER_TILE = {"torch": {"fp32": 128 * 2**20, "tf32": 100 * 2**20,
                                   "bf16": 64 * 2**20, "fp16": 64 * 2**20},
                         "tensorflow": {"fp32": 200 * 2**20}}
#: Host bytes per tile held by ``infer``: the float32 input tile (0.5 MiB) and the 4 maps (1 MiB).
HOST_BYTES_PER_TILE = 3 * 2**19
#: Host bytes per pixel at model resolution (tile-padded): preprocessing copies, the float64
#: untiling canvas, the 16 B/px float32 maps, and deep watershed of both compartments. Peak RSS
#: above the process's baseline, measured on 1-5 Mpx windows: ``infer_windows`` 103-128 B/px
#: (tile inputs and outputs included), ``postprocess_windows`` 46-49 B/px; 200 covers a task
#: inferring while the maps of another wait for post-processing.
HOST_BYTES_PER_MODEL_PIXEL = 200
#: Host bytes per pixel of the original patch: input copy and uint32 labels.
HOST_BYTES_PER_INPUT_PIXEL = 24
#: Side of a compute block of a logical patch, in microns (2048 pixels at Mesmer's 0.5 µm/px).
BLOCK_UM = 1024.0
#: Halo of a compute block, in microns (96 pixels at 0.5 µm/px); see :meth:`MesmerSegmenter.halo`.
HALO_UM = 48.0


class MesmerSegmenter(Segmenter):
    """Mesmer, split into preparation (CPU), the network (GPU workers) and deep watershed (CPU).

    Parameters
    ----------
    model_path : str or path, optional
        The weights: a converted ``.safetensors`` file (PyTorch) or a Keras SavedModel directory
        or deepcell's archive (TensorFlow); default ``$CODEXDASK_MODEL_PATH``, then deepcell's
        cache. They are located once (:meth:`source`, in the driver) and the answer travels
        with the segmenter to the workers.
    tiles_per_call : "auto" or int
        256² tiles per network call. ``"auto"`` sizes it from free accelerator memory (or host
        memory on CPU) once per process. On TensorFlow pin it to 4 to get deepcell's default
        labels bit for bit.
    precision : {"fp32", "tf32", "bf16", "fp16"}
        Network precision on PyTorch (TensorFlow: fp32 only). fp32, the default, is lossless;
        the others trade label agreement for speed (README, "Precision").
    preprocess_kwargs : dict, optional
        ``mesmer_preprocess`` keywords (``threshold``, ``percentile``, ``normalize``,
        ``kernel_size``).
    postprocess_kwargs_whole_cell, postprocess_kwargs_nuclear : dict, optional
        ``deep_watershed`` keywords merged over Mesmer's defaults.
    pad_mode : {"constant", "reflect"}
        Padding of the tile grid, as in ``Mesmer.predict``.
    device : str, optional
        PyTorch device (``"cpu"``, ``"cuda"``, ``"cuda:N"``); default the process's first
        visible GPU, else the CPU.
    """

    name = "mesmer"
    wants_gpu = True
    #: CPU seconds per MP of slide outside the network: prepare 0.26, finish (untiling, deep
    #: watershed, resize back) 0.80, stitching 0.09 and repair 0.06, measured by
    #: ``bench/gpu_feed.py`` (2048² tissue-like slide, seamless, on this project's 2-core
    #: development machine; the prepare cost matches the 0.26 s/MP measured on an H200's host).
    cpu_seconds_per_megapixel = 1.2
    #: The network alone, measured on an H200 in fp32 (windows' halos, tile overlap and the
    #: host <-> device copies included): 0.13 s per MP. A GPU worker then wants
    #: 1 + ceil(1.2 / 0.13) = 11 threads (README, scaling guide).
    gpu_seconds_per_megapixel = 0.13

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tiles_per_call: int | str = "auto",
        precision: str = "fp32",
        preprocess_kwargs: Mapping[str, Any] | None = None,
        postprocess_kwargs_whole_cell: Mapping[str, Any] | None = None,
        postprocess_kwargs_nuclear: Mapping[str, Any] | None = None,
        pad_mode: str = "constant",
        device: str | None = None,
    ):
        self.model_path = model_path_or_environment(model_path)
        fixed = fixed_or_none("tiles_per_call", tiles_per_call)
        self.tiles_per_call: int | str = "auto" if fixed is None else fixed
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {precision!r}")
        self.precision = precision
        self.preprocess_kwargs = dict(preprocess_kwargs or {})
        unknown = sorted(set(self.preprocess_kwargs) - set(PREPROCESS_KEYS))
        if unknown:
            raise ConfigError(f"unknown preprocess_kwargs {unknown}; Mesmer's preprocessing "
                              f"takes {', '.join(PREPROCESS_KEYS)}")
        self.whole_cell_kwargs = watershed_kwargs(WHOLE_CELL_DEFAULTS,
                                                  postprocess_kwargs_whole_cell)
        self.nuclear_kwargs = watershed_kwargs(NUCLEAR_DEFAULTS, postprocess_kwargs_nuclear)
        if pad_mode not in ("constant", "reflect"):
            raise ConfigError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.device = device
        self._source: ModelSource | None = None

    def __repr__(self) -> str:
        return (f"MesmerSegmenter(model_path={self.model_path!r}, "
                f"tiles_per_call={self.tiles_per_call!r}, precision={self.precision!r})")

    # -- weights and memory ---------------------------------------------------------------------

    @property
    def runtime(self) -> str:
        """``"torch"`` or ``"tensorflow"``: what the weights select (``"torch"`` while none are
        found, the main environment's runtime)."""
        return self.source().runtime or "torch"

    def source(self) -> ModelSource:
        """Where the weights are (:func:`~codexdask.mesmer.weights.find_model_source`), looked up
        once per segmenter: files only, nothing loaded or downloaded."""
        if self._source is None:
            self._source = find_model_source(self.model_path)
        return self._source

    def weights(self) -> Weights:
        """The weights this segmenter runs, with their SHA-256 (for ``run_manifest.json``)."""
        source = self.source()
        if not source.ok:
            raise source.error()
        return Weights(path=source.path, sha256=weights_sha256(source.path),
                       source=str(source.source), runtime=self.runtime, precision=self.precision)

    @property
    def device_bytes_per_tile(self) -> int:
        """Accelerator bytes one tile needs in a network call (:data:`DEVICE_BYTES_PER_TILE`)."""
        per_precision = DEVICE_BYTES_PER_TILE[self.runtime]
        return per_precision.get(self.precision, per_precision["fp32"])

    def check(self) -> None:
        """Refuse missing weights, a runtime that is not installed, or a precision the runtime
        lacks, in the driver (files only: nothing is loaded or downloaded)."""
        source = self.source()
        if not source.ok:
            raise source.error()
        if not source.runtime_ok:
            raise ConfigError(f"Mesmer weights: {source.detail}")
        if source.runtime == "tensorflow" and self.precision != "fp32":
            raise ConfigError(f"precision {self.precision!r} needs converted weights on PyTorch "
                              "(codexdask convert-model); a Keras SavedModel runs in fp32")

    def tiles_per_patch(self, shape: tuple[int, int], image_mpp: float) -> int:
        """256² network tiles one ``shape`` patch becomes after resizing to 0.5 µm/px."""
        return network_grid(resized_shape(shape, image_mpp), self.pad_mode).n_tiles

    def memory_per_patch(self, shape: tuple[int, int], image_mpp: float) -> MemoryEstimate:
        """Bytes one patch needs; see the ``*_BYTES_*`` constants of this module.

        ``device_bytes`` = tiles x :attr:`device_bytes_per_tile` (all its tiles in one call);
        ``host_bytes`` = tiles x :data:`HOST_BYTES_PER_TILE` + model-resolution pixels x
        :data:`HOST_BYTES_PER_MODEL_PIXEL` + original pixels x :data:`HOST_BYTES_PER_INPUT_PIXEL`.
        """
        tiles = self.tiles_per_patch(shape, image_mpp)
        height, width = resized_shape(shape, image_mpp)
        padded = max(height, MODEL_TILE) * max(width, MODEL_TILE)
        host = (tiles * HOST_BYTES_PER_TILE + padded * HOST_BYTES_PER_MODEL_PIXEL
                + int(shape[0]) * int(shape[1]) * HOST_BYTES_PER_INPUT_PIXEL)
        return MemoryEstimate(device_bytes=tiles * self.device_bytes_per_tile,
                              host_bytes=int(host))

    # -- whole images (a batch of patches) ------------------------------------------------------

    def prepare(self, batch: np.ndarray, image_mpp: float) -> MesmerTiles:
        """The CPU stage before the network: resize, preprocess, cut into network tiles.

        Parameters
        ----------
        batch : numpy.ndarray
            ``(B, H, W, 2)`` patches, channel 0 nucleus, 1 whole-cell, any numeric dtype.
        image_mpp : float
            Microns per pixel of ``batch``.

        Returns
        -------
        MesmerTiles
            The distinct ``(n, 256, 256, 2)`` float32 tiles of every image, one window each.
        """
        batch = check_batch(batch)
        _check_mpp(image_mpp)
        shape = (int(batch.shape[1]), int(batch.shape[2]))
        model_shape = resized_shape(shape, image_mpp)
        grid = network_grid(model_shape, self.pad_mode)
        # A whole image is one window: one plan of the whole network image, the image resized
        # and preprocessed in one piece (mesmer_preprocess computes the CLAHE levels once).
        whole = Box.whole(model_shape)
        window = plan_window(whole, grid, self._geometry(model_shape))
        groups = []
        for image in batch:
            if image_mpp != MODEL_MPP:
                image = resize_image(image, model_shape)
            values = mesmer_preprocess(image, **self.preprocess_kwargs)
            groups.append([WindowJob(window, window_tiles(values, whole, window, grid),
                                     Box.whole(shape))])
        return stack_tiles(groups, grid, shape, tuple(batch.shape))

    def network(self, prepared: MesmerTiles) -> tuple[MesmerTileMaps, float]:
        """The GPU-pinned stage: the network on ``prepared.tiles``, ``tiles_per_call`` per call;
        the ``(n, 256, 256, 4)`` float32 maps with their windows, and the seconds in the
        network calls (device copies included)."""
        start = time.perf_counter()
        if len(prepared.tiles):
            outputs, used = self._predict(prepared.tiles)
        else:
            outputs, used = np.empty(prepared.tiles.shape[:3] + (4,), np.float32), 0
        seconds = time.perf_counter() - start
        return MesmerTileMaps(outputs, prepared.windows, prepared.grid, prepared.raw_shape,
                              prepared.original_shape, used, self.runtime), seconds

    def finish(self, out: MesmerTileMaps) -> np.ndarray:
        """The CPU stage after the network: untile, then :meth:`postprocess`."""
        return self.postprocess(self._batch_maps(out))

    def infer(self, batch: np.ndarray, image_mpp: float) -> MesmerMaps:
        """Mesmer's maps of every image (:meth:`prepare`, :meth:`network`, untiled): one
        :class:`WindowMaps` per image, its whole ``(h, w, 4)`` float32 maps at 0.5 µm/px."""
        return self._batch_maps(self.network(self.prepare(batch, image_mpp))[0])

    def postprocess(self, maps: MesmerMaps) -> np.ndarray:
        """Deep watershed of both compartments, then resize back to the patch size.

        Returns
        -------
        numpy.ndarray
            ``(B, H, W, 2)`` uint32, channel 0 whole-cell, channel 1 nucleus, labels 1..K.
        """
        shape = tuple(maps.original_shape)
        if not maps.windows:
            return np.zeros(shape[:3] + (2,), np.uint32)
        return np.stack(self.postprocess_windows(maps.windows))

    # -- windows of a logical patch -------------------------------------------------------------

    def statistics(self, image_mpp: float) -> MesmerImageStatistics:
        """Mesmer's per-image statistics, to be gathered over a whole logical patch: the raw
        value range (when resizing), the clip statistics of the resized image, the CLAHE range."""
        _check_mpp(image_mpp)
        return self._statistics(image_mpp)

    def block_size(self, image_mpp: float) -> int:
        """Compute-block side: :data:`BLOCK_UM` µm (2048 px at 0.5 µm/px), in raw pixels.

        A window recomputes the network tiles and CLAHE regions its neighbours also need. With
        the default halo on a 12000² slide at 0.5 µm/px, windows run 1.42x the one-piece
        network tiles and post-process 1.17x its pixels (cores of 1024: 2.0x and 1.38x; 4096:
        1.17x and 1.07x), and a 2240² window peaks at ~0.65 GB of host memory in ``infer``.
        """
        return max(MODEL_TILE, math.ceil(BLOCK_UM / image_mpp))

    def halo(self, image_mpp: float) -> int:
        """Halo: :data:`HALO_UM` µm (96 px at 0.5 µm/px), in raw pixels.

        The block owning an object holds its bounding-box centre, so the object reaches at most
        half its extent past the core; deep watershed's reach beyond it (the interior
        smoothing's 8-px radius, the h-maxima and the flood, bounded by the neighbouring cells
        in Mesmer's maps) is a small margin more. On Mesmer-like maps with cells up to 93 px
        across, windows with a 64-px halo gave the one-piece labels exactly (32 px lost 8 % of
        the cells); 96 px holds cells up to ~150 px (75 µm) across. The largest of the 272 cells
        Mesmer found on the MIBI sample image spans 94 px.
        """
        return max(1, math.ceil(HALO_UM / image_mpp))

    def read_box(self, window: Box, patch_shape: tuple[int, int], image_mpp: float) -> Box:
        """Raw pixels the window needs: its network tiles, their CLAHE regions and the resize's
        reach (:func:`codexdask.mesmer.windows.plan_window`)."""
        shape = (int(patch_shape[0]), int(patch_shape[1]))
        model_shape = resized_shape(shape, image_mpp)
        model_box = _model_box(window, shape, model_shape)
        return plan_window(model_box, network_grid(model_shape, self.pad_mode),
                           self._geometry(model_shape),
                           shape if image_mpp != MODEL_MPP else None).raw_box

    def prepare_windows(self, windows: Sequence[WindowInput], image_mpp: float,
                        statistics: Any) -> MesmerTiles:
        """The CPU stage before the network for windows of one logical patch, with the patch's
        ``statistics``: each window's raw pixels resized, normalised and cut into the network
        tiles of the patch's grid; a tile two windows share is kept once."""
        if not isinstance(statistics, MesmerImageStatistics) or not statistics.done:
            raise StateError("Mesmer's windows need the patch's statistics: gather "
                             "segmenter.statistics(image_mpp) over the patch first")
        if not windows:
            return stack_tiles([], None, (0, 0), None)
        shape = windows[0].patch_shape
        plan = statistics.plan(shape)
        grid = network_grid(plan.image_shape, self.pad_mode)
        resizes = image_mpp != MODEL_MPP
        jobs = []
        for item in windows:
            model_box = _model_box(item.window, shape, plan.image_shape)
            window = plan_window(model_box, grid, plan, shape if resizes else None)
            raw = item.raw[window.raw_box.slices(item.read_box)]
            jobs.append(WindowJob(window, window_inputs(raw, window, plan, grid,
                                                        statistics.value_range), item.window))
        return stack_tiles([jobs], grid, shape, None)

    def finish_windows(self, out: MesmerTileMaps) -> list[np.ndarray]:
        """The CPU stage after the network for windows: untile, then
        :meth:`postprocess_windows`."""
        return self.postprocess_windows(untile(out))

    def infer_windows(self, windows: Sequence[WindowInput], image_mpp: float,
                      statistics: Any) -> list[WindowMaps]:
        """Maps of windows of one logical patch, with the patch's ``statistics``
        (:meth:`prepare_windows`, :meth:`network`, then untiled)."""
        return untile(self.network(self.prepare_windows(windows, image_mpp, statistics))[0])

    def postprocess_windows(self, maps: Sequence[WindowMaps]) -> list[np.ndarray]:
        """Deep watershed of each window's maps, labels resized back to the window.

        Returns ``(h, w, 2)`` uint32 labels (whole-cell, nucleus) per window, in raw pixels.
        """
        return [postprocess_window(item, self.whole_cell_kwargs, self.nuclear_kwargs)
                for item in maps]

    # -- shared ---------------------------------------------------------------------------------

    def _statistics(self, image_mpp: float) -> MesmerImageStatistics:
        kwargs = self.preprocess_kwargs
        percentile = (kwargs.get("percentile", DEFAULT_PERCENTILE)
                      if kwargs.get("threshold", True) else None)
        return MesmerImageStatistics(image_mpp=float(image_mpp), percentile=percentile,
                                     kernel_size=kwargs.get("kernel_size", DEFAULT_KERNEL_SIZE),
                                     normalize=bool(kwargs.get("normalize", True)))

    def _geometry(self, model_shape: tuple[int, int]) -> PreprocessGeometry:
        kwargs = self.preprocess_kwargs
        return preprocess_geometry(model_shape, kwargs.get("kernel_size", DEFAULT_KERNEL_SIZE),
                                   bool(kwargs.get("normalize", True)))

    def _batch_maps(self, out: MesmerTileMaps) -> MesmerMaps:
        return MesmerMaps(tuple(untile(out)), tuple(out.original_shape or ()), len(out.maps),
                          out.tiles_per_call, out.runtime)

    def _predict(self, tiles: np.ndarray) -> tuple[np.ndarray, int]:
        """``(n, 256, 256, 4)`` float32 maps of ``(n, 256, 256, 2)`` tiles, and the tiles per
        call used (halved after out-of-memory errors)."""
        runtime = load_runtime(self.source(), self.precision, self.device)
        key = (weights_key(self.source()), self.precision)
        first = self._tiles_to_try(key)
        outputs, used = planner.run_with_backoff(
            lambda n: run_tiles(runtime, tiles, n), first, what="the Mesmer network")
        if used < first and self.tiles_per_call == "auto":
            _AUTO_TILES[key] = used
        return outputs, used

    def _tiles_to_try(self, key: tuple[str, str]) -> int:
        if self.tiles_per_call != "auto":
            return int(self.tiles_per_call)
        if key not in _AUTO_TILES:
            tiles, why = planner.auto_tiles_per_call(
                self.device_bytes_per_tile, device_free_bytes=hardware.device_free_bytes(),
                host_free_bytes=hardware.host_free_bytes(),
            )
            logger.info("Mesmer tiles_per_call=%d (%s)", tiles, why)
            _AUTO_TILES[key] = tiles
        return _AUTO_TILES[key]


#: ``tiles_per_call="auto"`` resolved once per process and weights.
_AUTO_TILES: dict[tuple[str, str], int] = {}


def load_mesmer_model(model_path: str | os.PathLike[str] | None = None) -> Any:
    """The loaded network of the weights at ``model_path``, once per process: a Keras model for
    TensorFlow weights (``Mesmer(model)`` accepts it), a ``MesmerNet`` for converted ones."""
    runtime = load_runtime(find_model_source(model_path_or_environment(model_path)))
    if isinstance(runtime, TensorFlowRuntime):
        return runtime.model
    return cast(TorchRuntime, runtime).net


def clear_model_cache() -> None:
    """Forget the weights and automatic tile batches of this process."""
    from codexdask.segmenters.mesmer_runtime import clear_runtime_cache

    clear_runtime_cache()
    _AUTO_TILES.clear()


def _model_box(window: Box, shape: tuple[int, int], model_shape: tuple[int, int]) -> Box:
    """The model-resolution pixels whose labels the window's raw pixels take."""
    if model_shape == shape:
        return window
    return resize_labels_required_box(window, model_shape, shape, channels=2)


def _check_mpp(image_mpp: float) -> None:
    if not (isinstance(image_mpp, (int, float)) and math.isfinite(image_mpp) and image_mpp > 0):
        raise ConfigError(f"image_mpp must be a positive pixel size in µm, got {image_mpp!r}")

