"""Mesmer (deepcell 0.12.10) as a two-stage segmenter with deepcell's exact labels.

``infer`` does what ``deepcell.applications.Mesmer.predict(..., compartment="both")`` does before
post-processing, by calling deepcell's own pieces (``Application._resize_input``,
``mesmer_preprocess``, ``Application._tile_input``, ``format_output_mesmer``,
``Application._untile_output``); only the network loop differs: the model is called directly
(a ``tf.function``) on ``tiles_per_call`` tiles at a time instead of ``model.predict`` per 4 tiles
(``model.predict`` costs ~40 ms per call), and only the 4 output channels Mesmer uses are kept.
``postprocess`` runs ``deepcell_toolbox.deep_watershed`` for the whole-cell and the nuclear maps
with Mesmer's default arguments (what ``mesmer_postprocess(compartment="both")`` does, without
importing TensorFlow on CPU workers) and resizes the labels back like
``Application._resize_output``.

Exactness: with the same number of tiles per network call the labels equal
``Mesmer(model).predict(batch, image_mpp=..., compartment="both", batch_size=T)`` bit for bit.
TensorFlow's float results change in the last bit with the batch size, so another ``T`` can flip
pixels whose probability lies within rounding of a threshold (tests allow 0.01 %). Pin
``tiles_per_call=4`` (deepcell's default) for deepcell's exact labels.

One deviation: deepcell 0.12.10 fails with a shape error on a patch that is shorter than 256 px
on one axis and longer on the other (e.g. 300×200): its ``_tile_input`` then pads both axes. Here
the short axis is reflect-padded to 256 exactly as deepcell pads small images, the padded image is
tiled with deepcell's ``tile_image``, and the padding is cropped after untiling.

Weights (:func:`load_mesmer_model`) come from where
:func:`codexdask.mesmer.weights.find_model_source` says: ``model_path`` (or
``$CODEXDASK_MODEL_PATH``), then deepcell's cache ``~/.deepcell/models``, then a download with
``DEEPCELL_ACCESS_TOKEN``; the model is loaded once per process. TensorFlow and deepcell are
imported only when Mesmer is used.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import hardware
from ..config import fixed_or_none
from ..errors import ConfigError, ModelLoadError, SegmenterError
from ..mesmer.weights import MODEL_ARCHIVE, find_model_source, locate_model_dir, weights_key
from . import planner
from .base import MemoryEstimate, Segmenter, check_batch, register_segmenter

logger = logging.getLogger(__name__)

#: Microns per pixel of Mesmer's training data; other ``image_mpp`` values are resized.
MODEL_MPP = 0.5
#: Side of the model's input tile and the tile stride used by deepcell (``0.75 * 256``).
TILE_SIZE = 256
TILE_STRIDE = 192

#: ``Mesmer.predict``'s post-processing defaults (user values are merged on top).
WHOLE_CELL_DEFAULTS: dict[str, Any] = {
    "maxima_threshold": 0.075, "maxima_smooth": 0, "interior_threshold": 0.2,
    "interior_smooth": 2, "small_objects_threshold": 15, "fill_holes_threshold": 15, "radius": 2,
}
NUCLEAR_DEFAULTS: dict[str, Any] = {**WHOLE_CELL_DEFAULTS, "maxima_threshold": 0.1}

#: Accelerator memory per 256² tile in one network call (fp32 activations). Measured on CPU with
#: the Mesmer architecture (TF 2.8, oneDNN): peak RSS grows 116-133 MB per tile between 1 and 24
#: tiles per call; a liveness analysis of the graph in Keras layer order gives ~168 MB on GPU
#: (``docs/architecture.md``, measured facts). 200 MiB covers both plus cuDNN workspace.
DEVICE_BYTES_PER_TILE = 200 * 2**20
#: Host bytes per tile held by ``infer``: the float32 input tile (0.5 MiB) and the 4 kept output
#: channels (1 MiB).
HOST_BYTES_PER_TILE = 3 * 2**19
#: Host bytes per pixel at model resolution (tile-padded). Measured with tracemalloc on 512² and
#: 1024² patches: ``infer``'s NumPy peak 74-118 B/px (preprocessing copies, tiles, one float64
#: untiling canvas, the 16 B/px float32 maps), ``postprocess`` peak 96 B/px (deep_watershed of both
#: compartments); 200 covers one task holding maps while post-processing, with margin.
HOST_BYTES_PER_MODEL_PIXEL = 200
#: Host bytes per pixel of the original patch: input copy and uint32 labels.
HOST_BYTES_PER_INPUT_PIXEL = 24

_MAP_KEYS = (
    "whole_cell_inner_distance", "whole_cell_interior", "nuclear_inner_distance", "nuclear_interior"
)

_LOCK = threading.Lock()
_MODELS: dict[str, _LoadedModel] = {}
_AUTO_TILES: dict[str, int] = {}
_LOAD_COUNT = 0
_TF_READY = False


class _LoadedModel:
    """A loaded Keras model, its deepcell Application and the direct network function."""

    def __init__(self, model: Any, path: Path):
        import tensorflow as tf
        from deepcell.applications.mesmer import Mesmer, format_output_mesmer

        self.model = model
        self.path = path
        self.app = Mesmer(model)  # given a model, Mesmer never downloads
        tile_shape = tuple(model.input_shape[1:3])

        @tf.function(input_signature=[tf.TensorSpec((None, *tile_shape, 2), tf.float32)])
        def network(tiles: Any) -> tuple[Any, Any, Any, Any]:
            out = format_output_mesmer(model(tiles, training=False))
            return (out["whole-cell"][0], out["whole-cell"][1], out["nuclear"][0],
                    out["nuclear"][1])

        self.network = network


def model_load_count() -> int:
    """How many times this process has loaded a Mesmer model from disk (for tests and logs)."""
    return _LOAD_COUNT


def clear_model_cache() -> None:
    """Forget the models loaded by this process (the next use loads again)."""
    with _LOCK:
        _MODELS.clear()
        _AUTO_TILES.clear()


def load_mesmer_model(model_path: str | os.PathLike[str] | None = None) -> Any:
    """Load the Mesmer Keras model once per process.

    Sources, in order: ``model_path`` (else ``$CODEXDASK_MODEL_PATH``), a Keras SavedModel
    directory; deepcell's cache, ``~/.deepcell/models/MultiplexSegmentation`` or the archive
    ``~/.deepcell/models/MultiplexSegmentation-9.tar.gz`` (md5-checked, then extracted); a
    download through deepcell with ``$DEEPCELL_ACCESS_TOKEN``.

    Returns
    -------
    tensorflow.keras.Model
        Input ``(None, 256, 256, 2)``, four outputs (inner distance and pixelwise heads for
        whole-cell and nuclear).

    Raises
    ------
    ModelLoadError
        If ``model_path`` is missing or not a loadable Mesmer SavedModel, or no source works (the
        message names the three ways to provide weights).
    SegmenterError
        If TensorFlow or deepcell is not installed.
    """
    return _loaded(model_path).model


def _loaded(model_path: str | os.PathLike[str] | None) -> _LoadedModel:
    global _LOAD_COUNT
    key = weights_key(model_path)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        directory = locate_model_dir(model_path)
        tf = _tensorflow()
        try:
            model = tf.keras.models.load_model(str(directory), compile=False)
        except Exception as exc:  # TF raises many types for a bad SavedModel
            raise ModelLoadError(
                f"could not load the Mesmer model from {str(directory)!r} "
                f"({type(exc).__name__}: {str(exc)[:300]}); it must be a Keras SavedModel "
                "directory such as the MultiplexSegmentation folder of deepcell's "
                f"{MODEL_ARCHIVE}"
            ) from exc
        _check_model(model, directory)
        loaded = _LoadedModel(model, directory)
        _MODELS[key] = loaded
        _LOAD_COUNT += 1
        logger.info("loaded Mesmer model from %s", directory)
        return loaded


def _check_model(model: Any, directory: Path) -> None:
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[-1] != 2 or len(model.outputs) != 4:
        raise ModelLoadError(
            f"{str(directory)!r} is not a Mesmer model: expected one (None, 256, 256, 2) input and "
            f"4 outputs, got input {model.input_shape} and {len(model.outputs)} outputs"
        )


def _tensorflow() -> Any:
    """Import TensorFlow and deepcell (whose import registers its custom Keras layers) and turn
    on memory growth for every visible GPU, once per process."""
    global _TF_READY
    # TensorFlow's C++ info and warning lines (missing CUDA libraries on CPU hosts...) are noise
    # here; errors still show. A value set by the user wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import deepcell  # noqa: F401
        import tensorflow as tf
    except ImportError as exc:
        raise SegmenterError(
            "the mesmer backend needs TensorFlow 2.8 and deepcell 0.12.10 (Python 3.10): "
            "pip install 'codexdask[mesmer]', or use --backend watershed"
        ) from exc
    if not _TF_READY:
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # TensorFlow already initialised the device
                logger.warning("could not enable memory growth on %s", gpu.name)
        _TF_READY = True
    return tf


def resized_shape(shape: tuple[int, int], image_mpp: float | None) -> tuple[int, int]:
    """Patch shape at the model's 0.5 µm/px, computed as deepcell does (``int(side * scale)``)."""
    if image_mpp is None or image_mpp == MODEL_MPP:
        return int(shape[0]), int(shape[1])
    scale = image_mpp / MODEL_MPP
    return int(shape[0] * scale), int(shape[1] * scale)


def tiles_per_side(side: int) -> int:
    """256² tiles deepcell's ``tile_image`` uses along one axis of ``side`` pixels (>= 256)."""
    return max(int(np.ceil((side - TILE_SIZE) / TILE_STRIDE + 1)), 1)


class MesmerSegmenter(Segmenter):
    """Mesmer through deepcell 0.12.10, split into GPU inference and CPU post-processing.

    Parameters
    ----------
    model_path : str or path, optional
        Keras SavedModel directory of the weights; see :func:`load_mesmer_model`.
    tiles_per_call : "auto" or int
        256² tiles per network call. ``"auto"`` sizes it from free accelerator memory (or host
        memory on CPU) once per process. Pin to 4 to get deepcell's default labels bit for bit.
    preprocess_kwargs : dict, optional
        ``mesmer_preprocess`` keywords (``threshold``, ``percentile``, ``normalize``,
        ``kernel_size``).
    postprocess_kwargs_whole_cell, postprocess_kwargs_nuclear : dict, optional
        ``deep_watershed`` keywords merged over Mesmer's defaults.
    pad_mode : {"constant", "reflect"}
        Padding of ``tile_image``, as in ``Mesmer.predict``.
    """

    name = "mesmer"
    wants_gpu = True
    device_bytes_per_tile = DEVICE_BYTES_PER_TILE

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tiles_per_call: int | str = "auto",
        preprocess_kwargs: Mapping[str, Any] | None = None,
        postprocess_kwargs_whole_cell: Mapping[str, Any] | None = None,
        postprocess_kwargs_nuclear: Mapping[str, Any] | None = None,
        pad_mode: str = "constant",
    ):
        self.model_path = None if model_path is None else os.fspath(model_path)
        fixed = fixed_or_none("tiles_per_call", tiles_per_call)
        self.tiles_per_call: int | str = "auto" if fixed is None else fixed
        self.preprocess_kwargs = dict(preprocess_kwargs or {})
        self.whole_cell_kwargs = {**WHOLE_CELL_DEFAULTS, **(postprocess_kwargs_whole_cell or {})}
        self.nuclear_kwargs = {**NUCLEAR_DEFAULTS, **(postprocess_kwargs_nuclear or {})}
        if pad_mode not in ("constant", "reflect"):
            raise ConfigError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.pad_mode = pad_mode

    def __repr__(self) -> str:
        return (f"MesmerSegmenter(model_path={self.model_path!r}, "
                f"tiles_per_call={self.tiles_per_call!r})")

    def check(self) -> None:
        """Refuse a missing or non-SavedModel ``model_path``, or no weights at all, in the driver.

        Only looks at the files (no TensorFlow import, no download); a SavedModel that exists
        but cannot be loaded is still found by the first inference task.
        """
        source = find_model_source(self.model_path)
        if not source.ok:
            raise source.error()

    def infer(self, batch: np.ndarray, image_mpp: float) -> dict[str, Any]:
        """Resize, preprocess, tile, run the network, untile: Mesmer's maps.

        Parameters
        ----------
        batch : numpy.ndarray
            ``(B, H, W, 2)`` patches, channel 0 nucleus, 1 whole-cell, any numeric dtype.
        image_mpp : float
            Microns per pixel of ``batch``.

        Returns
        -------
        dict
            ``whole_cell_inner_distance``, ``whole_cell_interior``, ``nuclear_inner_distance``,
            ``nuclear_interior``: ``(B, h, w, 1)`` float32 at the model's 0.5 µm/px;
            ``original_shape`` (tuple, ``batch.shape``); ``image_mpp`` (float); ``n_tiles``
            (int); ``tiles_per_call`` (int, the tile batch finally used).
        """
        batch = check_batch(batch)
        if batch.shape[0] == 0:
            height, width = resized_shape((batch.shape[1], batch.shape[2]), image_mpp)
            empty = np.zeros((0, height, width, 1), np.float32)
            return {**dict.fromkeys(_MAP_KEYS, empty), "original_shape": tuple(batch.shape),
                    "image_mpp": float(image_mpp), "n_tiles": 0, "tiles_per_call": 0}
        key = weights_key(self.model_path)
        loaded = _loaded(self.model_path)
        app = loaded.app
        image = app._resize_input(batch, image_mpp)
        image = app._preprocess(image, **self.preprocess_kwargs)
        tiles, tiles_info, crop = _tile(app, image, self.pad_mode)
        first = self._tiles_to_try(key)
        outputs, used = planner.run_with_backoff(
            lambda n: _run_network(loaded.network, tiles, n), first, what="the Mesmer network"
        )
        if used < first and self.tiles_per_call == "auto":
            _AUTO_TILES[key] = used
        images = app._untile_output(outputs, tiles_info)
        if crop is not None:
            (x0, x1), (y0, y1) = crop
            images = [im[:, x0:x1, y0:y1] for im in images]
        maps: dict[str, Any] = {
            name: np.ascontiguousarray(im) for name, im in zip(_MAP_KEYS, images, strict=True)
        }
        maps.update(original_shape=tuple(batch.shape), image_mpp=float(image_mpp),
                    n_tiles=int(tiles.shape[0]), tiles_per_call=int(used))
        return maps

    def postprocess(self, maps: Mapping[str, Any]) -> np.ndarray:
        """Deep watershed of both compartments, then resize back to the patch size.

        Parameters
        ----------
        maps : dict
            :meth:`infer`'s output.

        Returns
        -------
        numpy.ndarray
            ``(B, H, W, 2)`` uint32, channel 0 whole-cell, channel 1 nucleus, labels 1..K.
        """
        from deepcell_toolbox.deep_watershed import deep_watershed
        from deepcell_toolbox.utils import resize

        shape = tuple(maps["original_shape"])
        if shape[0] == 0:
            return np.zeros(shape[:3] + (2,), np.uint32)
        cell = deep_watershed(
            [maps["whole_cell_inner_distance"], maps["whole_cell_interior"]],
            **self.whole_cell_kwargs,
        )
        nucleus = deep_watershed(
            [maps["nuclear_inner_distance"], maps["nuclear_interior"]], **self.nuclear_kwargs
        )
        labels = np.concatenate([cell, nucleus], axis=-1)
        if labels.shape[1:3] != shape[1:3]:
            labels = resize(labels, shape[1:3], data_format="channels_last", labeled_image=True)
        return labels.astype(np.uint32)

    def tiles_per_patch(self, shape: tuple[int, int], image_mpp: float) -> int:
        """256² tiles one ``shape`` patch becomes after resizing to 0.5 µm/px."""
        height, width = resized_shape(shape, image_mpp)
        return tiles_per_side(max(height, TILE_SIZE)) * tiles_per_side(max(width, TILE_SIZE))

    def memory_per_patch(self, shape: tuple[int, int], image_mpp: float) -> MemoryEstimate:
        """Bytes one patch needs; see the ``*_BYTES_*`` constants of this module.

        ``device_bytes`` = tiles x :data:`DEVICE_BYTES_PER_TILE` (all its tiles in one call);
        ``host_bytes`` = tiles x :data:`HOST_BYTES_PER_TILE` + model-resolution pixels x
        :data:`HOST_BYTES_PER_MODEL_PIXEL` + original pixels x :data:`HOST_BYTES_PER_INPUT_PIXEL`.
        """
        tiles = self.tiles_per_patch(shape, image_mpp)
        height, width = resized_shape(shape, image_mpp)
        padded = max(height, TILE_SIZE) * max(width, TILE_SIZE)
        host = (tiles * HOST_BYTES_PER_TILE + padded * HOST_BYTES_PER_MODEL_PIXEL
                + int(shape[0]) * int(shape[1]) * HOST_BYTES_PER_INPUT_PIXEL)
        return MemoryEstimate(device_bytes=tiles * DEVICE_BYTES_PER_TILE, host_bytes=int(host))

    def _tiles_to_try(self, key: str) -> int:
        if self.tiles_per_call != "auto":
            return int(self.tiles_per_call)
        if key not in _AUTO_TILES:
            tiles, why = planner.auto_tiles_per_call(
                DEVICE_BYTES_PER_TILE, device_free_bytes=hardware.device_free_bytes(),
                host_free_bytes=hardware.host_free_bytes(),
            )
            logger.info("Mesmer tiles_per_call=%d (%s)", tiles, why)
            _AUTO_TILES[key] = tiles
        return _AUTO_TILES[key]


def _tile(app: Any, image: np.ndarray, pad_mode: str) -> tuple[np.ndarray, dict[str, Any], Any]:
    """deepcell's ``_tile_input``, plus the reflect padding deepcell lacks for mixed shapes.

    Returns the tiles ``(N, 256, 256, 2)``, deepcell's tiling info, and ``None`` or the
    ``((x0, x1), (y0, y1))`` crop that removes the extra padding after untiling.
    """
    tile_x, tile_y = app.model_image_shape[:2]
    height, width = image.shape[1:3]
    if (height < tile_x or width < tile_y) and (height > tile_x or width > tile_y):
        pads = [_deepcell_pad(max(tile_x - height, 0)), _deepcell_pad(max(tile_y - width, 0))]
        image = np.pad(image, [(0, 0), pads[0], pads[1], (0, 0)], "reflect")
        tiles, info = app._tile_input(image, pad_mode=pad_mode)
        crop = tuple((low, low + side) for (low, _), side in zip(pads, (height, width)))
        return tiles, info, crop
    tiles, info = app._tile_input(image, pad_mode=pad_mode)
    return tiles, info, None


def _deepcell_pad(diff: int) -> tuple[int, int]:
    # How Application._tile_input splits the reflect padding of an image smaller than a tile.
    return (diff // 2, diff // 2 + 1) if diff % 2 else (diff // 2, diff // 2)


def _run_network(network: Any, tiles: np.ndarray, tiles_per_call: int) -> list[np.ndarray]:
    """The 4 used output maps of every tile, ``tiles_per_call`` tiles per network call.

    Mirrors ``Application._batch_predict``: the same slices of tiles per call, outputs stored in
    arrays of the tiles' dtype. Returns four ``(N, 256, 256, 1)`` arrays.
    """
    count = tiles.shape[0]
    outputs: list[np.ndarray] = []
    for start in range(0, count, tiles_per_call):
        chunk = np.asarray(tiles[start:start + tiles_per_call], dtype=np.float32)
        results = [r.numpy() for r in network(chunk)]
        if not outputs:
            outputs = [np.zeros((count,) + r.shape[1:], dtype=tiles.dtype) for r in results]
        for out, result in zip(outputs, results, strict=True):
            out[start:start + tiles_per_call] = result
    return outputs


register_segmenter("mesmer", MesmerSegmenter)
