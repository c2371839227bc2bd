"""The TensorFlow side of weight conversion: dump a Keras Mesmer model to one ``.npz`` file.

Runs in an environment with TensorFlow 2 (deepcell's: Python 3.10, TensorFlow 2.8), usually as a
subprocess of :func:`codexdask.mesmer.convert.convert_model`::

    python path/to/codexdask/mesmer/tf_export.py SRC OUT.npz --probe PROBE.npy [--taps NAME,...]

(or ``python -m codexdask.mesmer.tf_export`` where codexdask is installed). It imports nothing
from codexdask, so the TensorFlow environment needs numpy and TensorFlow only.

``SRC`` is a Keras SavedModel directory or an H5 file. ``OUT.npz`` (the exchange format, written
to a temporary name and renamed) holds:

- ``graph``: the model's Keras JSON configuration (``model.to_json()``), a 0-d unicode array;
- ``weight/<layer>/<name>``: every weight in Keras layout (``kernel`` HWIO, ``bias``, ``gamma``,
  ``beta``, ``moving_mean``, ``moving_variance``), float32 (left out with ``--outputs-only``);
- ``output/<semantic_k>``: the model's outputs for the probe tiles, float32 ``(N, H, W, C)`` —
  for a SavedModel from its own ``serving_default`` signature (the saved graph, Location2D
  included, exactly as deepcell saved it), for an H5 file from the rebuilt Keras model;
- ``tap/<layer>``: outputs of the requested intermediate layers (rebuilt Keras model);
- ``info``: JSON with the TensorFlow version and where the outputs came from.

Needs numpy and TensorFlow only (never PyTorch); importable on Python 3.10.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def location_layer() -> Any:
    """deepcell's ``Location2D`` class when deepcell is installed, else an equivalent layer.

    Only needed to rebuild the Keras model from its configuration (H5 files, weights and graph);
    a SavedModel's own signature computes the location channels from the saved graph.
    """
    try:
        from deepcell.layers import Location2D
    except ImportError:
        return _own_location_layer()
    return Location2D


def _own_location_layer() -> Any:
    """A Keras layer computing deepcell's ``Location2D`` (registered under the same name)."""
    import tensorflow as tf

    class Location2D(tf.keras.layers.Layer):
        """Two channels: row / (H - 1) and column / (W - 1), tiled over the batch (NHWC)."""

        def __init__(self, data_format: str | None = None, **kwargs: Any):
            kwargs.pop("in_shape", None)
            super().__init__(**kwargs)
            self.data_format = data_format or "channels_last"

        def call(self, inputs: Any) -> Any:
            shape = tf.shape(inputs)
            rows = tf.range(shape[1], dtype=inputs.dtype)
            cols = tf.range(shape[2], dtype=inputs.dtype)
            grid = tf.stack(tf.meshgrid(rows / tf.reduce_max(rows), cols / tf.reduce_max(cols),
                                        indexing="ij"), axis=-1)
            return tf.tile(grid[None], [shape[0], 1, 1, 1])

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "data_format": self.data_format}

    return Location2D


def export(src: str | os.PathLike[str], out: str | os.PathLike[str],
           probe: np.ndarray | None = None, taps: Sequence[str] = (), weights: bool = True
           ) -> None:
    """Write the exchange ``.npz`` for the Keras model at ``src`` (see the module docstring).

    Parameters
    ----------
    src : path-like
        Keras SavedModel directory or H5 file.
    out : path-like
        The ``.npz`` to write (atomically).
    probe : numpy.ndarray, optional
        ``(N, H, W, 2)`` float32 tiles to run through the model.
    taps : sequence of str
        Layer names whose outputs on ``probe`` are saved too.
    weights : bool
        Whether to save the weights (an H5 source's weights are read with h5py instead).
    """
    import tensorflow as tf

    src = Path(src)
    location = location_layer()
    model = tf.keras.models.load_model(str(src), compile=False,
                                       custom_objects={"Location2D": location})
    arrays: dict[str, np.ndarray] = {"graph": np.array(model.to_json())}
    for layer in model.layers if weights else ():
        for weight in layer.weights:
            name = weight.name.split(":")[0].split("/")[-1]
            arrays[f"weight/{layer.name}/{name}"] = np.asarray(weight.numpy(), np.float32)
    info: dict[str, Any] = {"tensorflow_version": tf.__version__,
                            "location2d": f"{location.__module__}.{location.__name__}"}
    if probe is not None:
        probe = np.ascontiguousarray(probe, np.float32)
        if src.is_dir():
            outputs = _signature_outputs(tf, src, probe)
            info["outputs_from"] = "the SavedModel's serving_default signature"
        else:
            values = model(probe, training=False)
            outputs = {name: np.asarray(v) for name, v in zip(model.output_names, values)}
            info["outputs_from"] = "the Keras model rebuilt from the H5 file"
        arrays.update({f"output/{name}": np.asarray(v, np.float32) for name, v in outputs.items()})
        if taps:
            tapped = tf.keras.Model(model.inputs, [model.get_layer(t).output for t in taps])
            values = tapped(probe, training=False)
            values = values if isinstance(values, (list, tuple)) else [values]
            arrays.update({f"tap/{t}": np.asarray(v, np.float32) for t, v in zip(taps, values)})
    arrays["info"] = np.array(json.dumps(info))
    out = Path(out)
    partial = out.with_name(out.name + ".partial.npz")
    save: Any = np.savez  # numpy's stubs reject **arrays next to its allow_pickle keyword
    save(partial, **arrays)
    os.replace(partial, out)


def _signature_outputs(tf: Any, directory: Path, probe: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of a SavedModel's ``serving_default`` signature for ``probe``, keyed by name."""
    loaded = tf.saved_model.load(str(directory))
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(probe), 8):  # a few tiles per call bounds memory
        batch = signature(**{input_name: tf.constant(probe[start:start + 8])})
        for name, value in batch.items():
            outputs.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m codexdask.mesmer.tf_export SRC OUT.npz [--probe P] [--taps ...]``."""
    parser = argparse.ArgumentParser(prog="python -m codexdask.mesmer.tf_export",
                                     description="Dump a Keras Mesmer model for conversion.")
    parser.add_argument("src", help="Keras SavedModel directory or H5 file")
    parser.add_argument("out", help="exchange .npz to write")
    parser.add_argument("--probe", help=".npy with (N, H, W, 2) float32 probe tiles")
    parser.add_argument("--taps", default="", help="comma-separated layer names to dump")
    parser.add_argument("--outputs-only", action="store_true", help="do not dump the weights")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    probe = np.load(args.probe) if args.probe else None
    taps = [t for t in args.taps.split(",") if t]
    export(args.src, args.out, probe, taps, weights=not args.outputs_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
