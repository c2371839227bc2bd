"""Mesmer's network, the only part that differs between the two runtimes.

The weights choose the runtime (:func:`codexdask.mesmer.weights.find_model_source`):

- a converted ``.safetensors`` file runs on **PyTorch** (:class:`TorchRuntime`): the network of
  :mod:`codexdask.mesmer.network`, loaded once per process onto the worker's GPU (dask-cuda sets
  ``CUDA_VISIBLE_DEVICES``) or the CPU, channels-last, under ``torch.inference_mode`` at the
  chosen precision; only the four maps Mesmer uses leave the device;
- a Keras SavedModel (directory, deepcell's archive or cache) runs on **TensorFlow**
  (:class:`TensorFlowRuntime`): the SavedModel loaded once per process and called directly
  through one ``tf.function``. TensorFlow and deepcell are imported on this path only.

Both take ``(n, 256, 256, 2)`` float32 tiles and return ``(n, 256, 256, 4)`` float32 maps
(whole-cell inner distance, whole-cell interior, nuclear inner distance, nuclear interior).
Everything around the network (resize, preprocessing, tiling, deep watershed) is codexdask's own
code, the same for both.

CPU threads: inside a Dask worker, PyTorch's intra-op threads are set to the worker's ``nthreads``
(1 in the single-threaded workers of the default local cluster), so that workers sharing a
machine do not oversubscribe its cores; outside a worker PyTorch keeps its default (all cores).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from codexdask.config import PRECISIONS
from codexdask.errors import ConfigError, ModelLoadError, SegmenterError
from codexdask.mesmer.weights import MODEL_ARCHIVE, ModelSource, locate_model_dir, weights_key

__all__ = ["PRECISIONS", "NetworkRuntime", "TensorFlowRuntime", "TorchRuntime",
           "clear_runtime_cache", "load_runtime", "model_load_count", "run_tiles",
           "worker_threads"]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_RUNTIMES: dict[tuple[str, str, str, str], NetworkRuntime] = {}
_LOAD_COUNT = 0
_TF_READY = False


class NetworkRuntime(Protocol):
    """Mesmer's network in one runtime: ``(n, 256, 256, 2)`` -> ``(n, 256, 256, 4)`` float32."""

    #: ``"torch"`` or ``"tensorflow"``.
    name: str
    #: Where it runs, for logs (``"cpu"``, ``"cuda:0"``, ``"tensorflow"``).
    device: str

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """The four maps of every tile, in one network call."""
        ...


class TorchRuntime:
    """Converted weights on PyTorch (see the module docstring).

    Parameters
    ----------
    path : path
        The ``.safetensors`` file.
    precision : {"fp32", "tf32", "bf16", "fp16"}
        See :func:`codexdask.mesmer.network.precision_mode`.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default: the process's first visible GPU, else CPU.
    """

    name = "torch"

    def __init__(self, path: Path, precision: str = "fp32", device: str | None = None):
        from codexdask.mesmer import network

        self._network = network
        self.net = network.load_network(path, device)
        self.precision = precision
        self.device = str(next(self.net.parameters()).device)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            set_torch_threads()
        return self._network.predict_maps(self.net, tiles, self.precision)


class TensorFlowRuntime:
    """A Keras SavedModel on TensorFlow, called through one ``tf.function``.

    The model is called directly on the tiles (``model.predict`` costs ~40 ms per call), and the
    four used maps are taken inside the function, as ``format_output_mesmer`` takes them.
    """

    name = "tensorflow"
    device = "tensorflow"

    def __init__(self, directory: Path):
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
        shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
        if shape is None or len(shape) != 4 or shape[-1] != 2 or len(model.outputs) != 4:
            raise ModelLoadError(
                f"{str(directory)!r} is not a Mesmer model: expected one (None, 256, 256, 2) "
                f"input and 4 outputs, got input {model.input_shape} and {len(model.outputs)} "
                "outputs"
            )
        self.model = model
        self.path = directory

        @tf.function(input_signature=[tf.TensorSpec((None, *shape[1:3], 2), tf.float32)])
        def network(tiles: Any) -> tuple[Any, Any, Any, Any]:
            out = model(tiles, training=False)
            return out[0], out[1][..., 1:2], out[2], out[3][..., 1:2]

        self._function = network

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        results = self._function(np.ascontiguousarray(tiles, dtype=np.float32))
        return np.concatenate([r.numpy() for r in results], axis=-1)


def load_runtime(source: ModelSource, precision: str = "fp32",
                 device: str | None = None) -> NetworkRuntime:
    """The runtime the weights of ``source`` select, loaded once per process.

    ``source`` is :func:`~codexdask.mesmer.weights.find_model_source`'s answer, located once
    in the driver and shipped with the segmenter.

    Raises
    ------
    ModelLoadError
        No weights, or weights that cannot be loaded.
    SegmenterError
        The runtime the weights need is not installed.
    ConfigError
        A precision other than fp32 with TensorFlow weights, or an unknown precision.
    """
    global _LOAD_COUNT
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if not source.ok:
        raise source.error()
    runtime = str(source.runtime)
    key = (runtime, weights_key(source), precision, str(device))
    with _LOCK:
        if key in _RUNTIMES:
            return _RUNTIMES[key]
        if not source.runtime_ok:
            raise SegmenterError(f"Mesmer weights: {source.detail}")
        loaded: NetworkRuntime
        if runtime == "torch":
            loaded = TorchRuntime(Path(str(source.path)), precision, device)
        else:
            if precision != "fp32":
                raise ConfigError(f"precision {precision!r} needs converted weights on PyTorch; "
                                  "a Keras SavedModel runs on TensorFlow in fp32 only")
            loaded = TensorFlowRuntime(locate_model_dir(source))
        _RUNTIMES[key] = loaded
        _LOAD_COUNT += 1
        logger.info("loaded Mesmer weights from %s on %s (%s)", source.path, loaded.name,
                    loaded.device)
        return loaded


def run_tiles(runtime: NetworkRuntime, tiles: np.ndarray, tiles_per_call: int) -> np.ndarray:
    """The maps of every tile, ``tiles_per_call`` tiles per network call.

    Calls take consecutive slices of ``tiles`` (the last one may be shorter), as deepcell's
    ``Application._batch_predict`` does. Returns ``(n, 256, 256, 4)`` float32.
    """
    count = tiles.shape[0]
    out = np.empty(tiles.shape[:3] + (4,), np.float32)
    for start in range(0, count, tiles_per_call):
        out[start:start + tiles_per_call] = runtime(tiles[start:start + tiles_per_call])
    return out


def worker_threads() -> int | None:
    """The ``nthreads`` of the Dask worker running this code, or None outside a worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return None
    return max(1, int(worker.state.nthreads))


def set_torch_threads() -> None:
    """Set PyTorch's intra-op threads to this Dask worker's share of cores (no-op elsewhere)."""
    import torch

    threads = worker_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def model_load_count() -> int:
    """How many times this process has loaded Mesmer weights (for tests and logs)."""
    return _LOAD_COUNT


def clear_runtime_cache() -> None:
    """Forget the runtimes loaded by this process (the next use loads again)."""
    with _LOCK:
        _RUNTIMES.clear()
    try:
        from codexdask.mesmer import network
    except ImportError:  # no PyTorch here
        return
    network.clear_cache()


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
            "a Keras SavedModel needs TensorFlow 2.8 and deepcell 0.12.10 (Python 3.10); in the "
            "main environment convert the weights with `codexdask convert-model` and point "
            "model_path at the .safetensors file, or use --backend watershed"
        ) from exc
    if not _TF_READY:
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # TensorFlow already initialised the device
                logger.warning("could not enable memory growth on %s", gpu.name)
        _TF_READY = True
    return tf
