"""A Keras 2 H5 file of Mesmer written with h5py alone (no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np

from codexdask.mesmer import graph


def write_keras_h5(path, state: dict[str, np.ndarray], config: dict | None = None) -> None:
    """A Keras 2 H5 model file (``model_config`` + ``model_weights``) from PyTorch tensors."""
    import h5py

    suffix = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var"}
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config or graph.keras_model_config())
        weights = h5.create_group("model_weights")
        for layer in graph.mesmer_layers().values():
            group = weights.create_group(layer.name)
            stored = []
            for weight, _ in layer.weights:
                value = np.asarray(state[f"{layer.name}.{suffix[weight]}"], np.float32)
                if weight == "kernel":
                    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
                name = f"{layer.name}/{weight}:0"
                group.create_dataset(name, data=value)
                stored.append(name.encode())
            group.attrs["weight_names"] = stored
