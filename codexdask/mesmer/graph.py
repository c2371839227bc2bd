"""Mesmer's Keras layer graph: what the released model is, and a check of a saved graph against it.

Mesmer's released model (deepcell's ``MultiplexSegmentation``) is a ``PanopticNet`` with a Keras
ResNet50 backbone: 220 Keras layers and 25,804,951 weights. :func:`mesmer_layers` spells that
graph out layer by layer (name, class, inputs, the configuration that decides the computation,
weight shapes); :func:`check_keras_graph` compares a model's own Keras JSON configuration (from an
H5 file's ``model_config`` attribute or a SavedModel's ``to_json()``) against it and names the
first difference. The PyTorch module in :mod:`codexdask.mesmer.network` is built from the same
list, and :func:`torch_state_dict` maps Keras weights onto its parameter names.

This module needs numpy only (no TensorFlow, no PyTorch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codexdask.errors import ModelLoadError

#: Identifies converted weight files; bump ARCHITECTURE_VERSION when the PyTorch module's
#: parameter names or computation change (files of another version are refused).
ARCHITECTURE = "mesmer-panopticnet-resnet50"
ARCHITECTURE_VERSION = "1"
#: The four maps the PyTorch network returns, in channel order (the maps Mesmer post-processes).
MAP_NAMES = ("whole_cell_inner_distance", "whole_cell_interior", "nuclear_inner_distance",
             "nuclear_interior")
#: Input tile of the released model: height, width, channels (nuclear, membrane).
INPUT_SHAPE = (256, 256, 2)
#: ResNet50 stages: (stage number, bottleneck filters, blocks, stride of the first block).
RESNET_STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
#: Channels of the four semantic heads: inner distance (ReLU) and 3-class softmax, per compartment.
HEAD_CLASSES = (1, 3, 1, 3)
#: Channels of the feature pyramid and of each head's layers.
PYRAMID_FEATURES = 256
HEAD_FEATURES = (64, 128)
#: Batch-normalisation epsilons: Keras ResNet50's and the Keras default (semantic heads).
RESNET_EPSILON = 1.001e-5
HEAD_EPSILON = 1e-3
#: Weights of the released model (Keras ``count_params``, moving statistics included).
PARAMETER_COUNT = 25_804_951

#: Keras weight name -> PyTorch parameter suffix, per layer class.
_TORCH_NAMES = {
    "Conv2D": {"kernel": "weight", "bias": "bias"},
    "BatchNormalization": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                           "moving_variance": "running_var"},
}
#: Configuration keys compared per layer class, with the value Keras assumes when a key is absent.
_COMPARED: dict[str, dict[str, Any]] = {
    "InputLayer": {"batch_input_shape": None},
    "Location2D": {"data_format": "channels_last"},
    "Concatenate": {"axis": -1},
    "Conv2D": {"filters": None, "kernel_size": None, "strides": None, "padding": None,
               "activation": "linear", "use_bias": True, "dilation_rate": [1, 1], "groups": 1,
               "data_format": "channels_last"},
    "BatchNormalization": {"epsilon": None, "axis": -1, "center": True, "scale": True},
    "Activation": {"activation": None},
    "ZeroPadding2D": {"padding": None, "data_format": "channels_last"},
    "MaxPooling2D": {"pool_size": None, "strides": None, "padding": None,
                     "data_format": "channels_last"},
    "Add": {},
    "UpSampling2D": {"size": None, "interpolation": "nearest", "data_format": "channels_last"},
    "Softmax": {"axis": -1},
}


@dataclass(frozen=True)
class KerasLayer:
    """One layer of Mesmer's Keras graph.

    Attributes
    ----------
    name, class_name : str
        Keras layer name and class (``"conv1_conv"``, ``"Conv2D"``).
    inbound : tuple of str
        Names of the layers feeding this one, in call order.
    config : dict
        The configuration entries that decide the computation (Keras JSON spelling).
    weights : tuple of (str, tuple of int)
        Keras weight names (``"kernel"``, ``"gamma"`` ...) and shapes (kernels HWIO).
    """

    name: str
    class_name: str
    inbound: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    weights: tuple[tuple[str, tuple[int, ...]], ...] = ()


def mesmer_layers() -> dict[str, KerasLayer]:
    """Mesmer's graph as saved by Keras: layer name -> :class:`KerasLayer`, inputs first."""
    layers: dict[str, KerasLayer] = {}

    def add(name: str, class_name: str, *inbound: str,
            weights: tuple[tuple[str, tuple[int, ...]], ...] = (), **config: Any) -> str:
        layers[name] = KerasLayer(name, class_name, tuple(inbound), config, weights)
        return name

    def conv(name: str, src: str, cin: int, cout: int, size: int = 1, stride: int = 1,
             padding: str = "same") -> str:
        return add(name, "Conv2D", src, filters=cout, kernel_size=[size, size],
                   strides=[stride, stride], padding=padding,
                   weights=(("kernel", (size, size, cin, cout)), ("bias", (cout,))))

    def batchnorm(name: str, src: str, channels: int, epsilon: float) -> str:
        shape = (channels,)
        return add(name, "BatchNormalization", src, epsilon=epsilon,
                   weights=(("gamma", shape), ("beta", shape), ("moving_mean", shape),
                            ("moving_variance", shape)))

    def relu(name: str, src: str) -> str:
        return add(name, "Activation", src, activation="relu")

    height, width, channels = INPUT_SHAPE
    add("input_0", "InputLayer", batch_input_shape=[None, height, width, channels])
    add("location", "Location2D", "input_0")
    add("concatenate_location", "Concatenate", "input_0", "location")
    conv("conv_channels", "concatenate_location", channels + 2, 3)
    # Keras ResNet50 (v1): explicit zero padding, then 'valid' 7x7/2 conv and 3x3/2 max pool.
    add("conv1_pad", "ZeroPadding2D", "conv_channels", padding=[[3, 3], [3, 3]])
    conv("conv1_conv", "conv1_pad", 3, 64, 7, 2, "valid")
    batchnorm("conv1_bn", "conv1_conv", 64, RESNET_EPSILON)
    x = relu("conv1_relu", "conv1_bn")
    add("pool1_pad", "ZeroPadding2D", x, padding=[[1, 1], [1, 1]])
    x = add("pool1_pool", "MaxPooling2D", "pool1_pad", pool_size=[3, 3], strides=[2, 2],
            padding="valid")
    cin = 64
    for stage, filters, blocks, first_stride in RESNET_STAGES:
        for block in range(1, blocks + 1):
            p = f"conv{stage}_block{block}"
            stride = first_stride if block == 1 else 1
            shortcut = x
            if block == 1:  # projection shortcut, strided like the block's first 1x1 conv
                conv(f"{p}_0_conv", x, cin, 4 * filters, 1, stride, "valid")
                shortcut = batchnorm(f"{p}_0_bn", f"{p}_0_conv", 4 * filters, RESNET_EPSILON)
            conv(f"{p}_1_conv", x, cin, filters, 1, stride, "valid")
            batchnorm(f"{p}_1_bn", f"{p}_1_conv", filters, RESNET_EPSILON)
            relu(f"{p}_1_relu", f"{p}_1_bn")
            conv(f"{p}_2_conv", f"{p}_1_relu", filters, filters, 3)
            batchnorm(f"{p}_2_bn", f"{p}_2_conv", filters, RESNET_EPSILON)
            relu(f"{p}_2_relu", f"{p}_2_bn")
            conv(f"{p}_3_conv", f"{p}_2_relu", filters, 4 * filters, 1, 1, "valid")
            batchnorm(f"{p}_3_bn", f"{p}_3_conv", 4 * filters, RESNET_EPSILON)
            add(f"{p}_add", "Add", shortcut, f"{p}_3_bn")
            x = relu(f"{p}_out", f"{p}_add")
            cin = 4 * filters
    # Feature pyramid: lateral 1x1 convs, top-down bilinear x2 upsampling and addition down to P1.
    features = {1: ("conv1_relu", 64)}
    features.update({stage: (f"conv{stage}_block{blocks}_out", 4 * filters)
                     for stage, filters, blocks, _ in RESNET_STAGES})
    top = conv("C5_reduced", *features[5], PYRAMID_FEATURES)
    for level in (4, 3, 2, 1):
        lateral = conv(f"C{level}_reduced", *features[level], PYRAMID_FEATURES)
        up = add(f"P{level + 1}_upsampled", "UpSampling2D", top, size=[2, 2],
                 interpolation="bilinear")
        top = add(f"P{level}_merged", "Add", lateral, up)
    conv("P1", top, PYRAMID_FEATURES, PYRAMID_FEATURES, 3)
    # Four semantic heads on P1: 3x3 conv, bilinear x2 to the input size, 1x1 conv + BN + ReLU,
    # 1x1 conv to the classes with ReLU (1 class) or softmax.
    mid, wide = HEAD_FEATURES
    for k, classes in enumerate(HEAD_CLASSES):
        conv(f"conv_0_semantic_upsample_{k}", "P1", PYRAMID_FEATURES, mid, 3)
        add(f"upsampling_0_semantic_upsample_{k}", "UpSampling2D",
            f"conv_0_semantic_upsample_{k}", size=[2, 2], interpolation="bilinear")
        conv(f"conv_0_semantic_{k}", f"upsampling_0_semantic_upsample_{k}", mid, wide)
        batchnorm(f"batch_normalization_0_semantic_{k}", f"conv_0_semantic_{k}", wide,
                  HEAD_EPSILON)
        relu(f"relu_0_semantic_{k}", f"batch_normalization_0_semantic_{k}")
        conv(f"conv_1_semantic_{k}", f"relu_0_semantic_{k}", wide, classes)
        if classes == 1:
            relu(f"semantic_{k}", f"conv_1_semantic_{k}")
        else:
            add(f"semantic_{k}", "Softmax", f"conv_1_semantic_{k}", axis=-1)
    return layers


#: Output layers of the graph, in the order the model returns them.
OUTPUT_LAYERS = tuple(f"semantic_{k}" for k in range(len(HEAD_CLASSES)))


def keras_model_config() -> dict[str, Any]:
    """Mesmer's graph as a minimal Keras functional configuration (``model.to_json()`` layout).

    Holds only what :func:`check_keras_graph` reads; used to write H5 test files without Keras.
    """
    layers: list[dict[str, Any]] = []
    for layer in mesmer_layers().values():
        nodes = [[[src, 0, 0, {}] for src in layer.inbound]] if layer.inbound else []
        layers.append({"class_name": layer.class_name, "name": layer.name,
                       "config": {"name": layer.name, **layer.config}, "inbound_nodes": nodes})
    return {"class_name": "Functional",
            "config": {"name": "panopticnet", "layers": layers,
                       "input_layers": [["input_0", 0, 0]],
                       "output_layers": [[name, 0, 0] for name in OUTPUT_LAYERS]}}


def torch_parameter_shapes() -> dict[str, tuple[int, ...]]:
    """PyTorch parameter and buffer names of the network with their shapes (kernels OIHW)."""
    shapes = {}
    for layer in mesmer_layers().values():
        for weight, shape in layer.weights:
            if layer.class_name == "Conv2D" and weight == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1])
            shapes[f"{layer.name}.{_TORCH_NAMES[layer.class_name][weight]}"] = shape
    return shapes


def torch_state_dict(keras_weights: Mapping[str, Mapping[str, np.ndarray]]
                     ) -> dict[str, np.ndarray]:
    """Map Keras weights onto the PyTorch network's parameter names.

    Parameters
    ----------
    keras_weights : mapping
        Layer name -> {Keras weight name (``"kernel"``, ``"moving_mean"`` ...) -> array}; kernels
        in Keras layout (height, width, in, out).

    Returns
    -------
    dict of str to numpy.ndarray
        ``"<layer>.<weight|bias|running_mean|running_var>"`` -> contiguous float32 array; conv
        kernels transposed to PyTorch's (out, in, height, width).

    Raises
    ------
    ModelLoadError
        A layer or weight is missing, unexpected, or has another shape than Mesmer's.
    """
    expected = mesmer_layers()
    for name, weights in keras_weights.items():
        if weights and (name not in expected or not expected[name].weights):
            raise ModelLoadError(f"the weights hold a layer {name!r} that Mesmer does not have")
    state = {}
    for layer in expected.values():
        found = keras_weights.get(layer.name, {})
        extra = sorted(set(found) - {w for w, _ in layer.weights})
        if extra:
            raise ModelLoadError(f"layer {layer.name!r} has unexpected weights {extra}")
        for weight, shape in layer.weights:
            if weight not in found:
                raise ModelLoadError(f"layer {layer.name!r} lacks its weight {weight!r}")
            value = np.asarray(found[weight])
            if value.shape != shape:
                raise ModelLoadError(f"weight {layer.name}/{weight} has shape {value.shape}, "
                                     f"Mesmer's is {shape}")
            if layer.class_name == "Conv2D" and weight == "kernel":
                value = value.transpose(3, 2, 0, 1)
            name = f"{layer.name}.{_TORCH_NAMES[layer.class_name][weight]}"
            state[name] = np.ascontiguousarray(value, dtype=np.float32)
    return state


def check_keras_graph(model_config: Mapping[str, Any]) -> None:
    """Refuse a Keras model configuration that is not Mesmer's graph.

    Parameters
    ----------
    model_config : mapping
        A Keras functional model's JSON configuration as a dict:
        ``{"class_name": "Functional" | "Model", "config": {"layers": [...], ...}}``.

    Raises
    ------
    ModelLoadError
        Naming the first layer (in the saved graph's order) whose class, inputs or computing
        configuration differs, or the first missing layer.
    """
    for problem in _graph_differences(model_config):
        raise ModelLoadError(f"not Mesmer's network graph: {problem}; convert deepcell's "
                             "MultiplexSegmentation model (PanopticNet, ResNet50 backbone)")


def _graph_differences(model_config: Mapping[str, Any]) -> Iterator[str]:
    """Describe each difference between ``model_config`` and Mesmer's graph, first one first."""
    config = model_config.get("config") if isinstance(model_config, Mapping) else None
    if not isinstance(config, Mapping) or not isinstance(config.get("layers"), list):
        yield "the configuration has no functional layer list"
        return
    expected = mesmer_layers()
    seen = set()
    for entry in config["layers"]:
        name = entry.get("name") or entry.get("config", {}).get("name")
        seen.add(name)
        if name not in expected:
            yield f"unexpected layer {name!r} ({entry.get('class_name')})"
            continue
        want = expected[name]
        if entry.get("class_name") != want.class_name:
            yield f"layer {name!r} is a {entry.get('class_name')}, expected {want.class_name}"
        inbound = _inbound_names(entry.get("inbound_nodes", []))
        if want.class_name == "Add":  # addition is commutative: compare as a set
            same_inputs = sorted(inbound) == sorted(want.inbound)
        else:
            same_inputs = inbound == want.inbound
        if not same_inputs:
            yield f"layer {name!r} reads {list(inbound)}, expected {list(want.inbound)}"
        for key, default in _COMPARED[want.class_name].items():
            got = _normalise(key, entry.get("config", {}).get(key, default))
            wanted = _normalise(key, want.config.get(key, default))
            if got != wanted:
                yield f"layer {name!r} has {key}={got!r}, expected {wanted!r}"
    missing = [name for name in expected if name not in seen]
    if missing:
        yield f"layer {missing[0]!r} is missing ({len(missing)} layers missing)"
    outputs = [item[0] for item in config.get("output_layers", [])]
    if outputs != list(OUTPUT_LAYERS):
        yield f"the outputs are {outputs}, expected {list(OUTPUT_LAYERS)}"


def _inbound_names(nodes: Any) -> tuple[str, ...]:
    """Layer names of a Keras ``inbound_nodes`` entry (one call: ``[[name, 0, 0, {}], ...]``)."""
    if not nodes:
        return ()
    if len(nodes) != 1:
        return ("<layer called more than once>",)
    node = nodes[0]
    if isinstance(node, Mapping):  # newer Keras spelling: {"args": [...], "kwargs": {}}
        return ("<unsupported node format>",)
    return tuple(str(item[0]) for item in node)


def _normalise(key: str, value: Any) -> Any:
    """Spellings Keras uses for the same setting, made equal (lists vs tuples, axis 3 vs -1)."""
    if isinstance(value, (list, tuple)):
        value = [_normalise(key, item) for item in value]
        if key == "axis" and len(value) == 1:
            value = value[0]
    if key == "axis" and value == 3:
        value = -1  # channels-last rank-4 tensors: axis 3 is the last axis
    if key == "data_format" and value is None:
        value = "channels_last"
    if isinstance(value, float):
        value = float(np.float32(value))
    return value


def probe_tiles() -> np.ndarray:
    """The fixed self-check input: ``(2, 256, 256, 2)`` float32 in [0, 1].

    Tile 0 is uniform noise; tile 1 is tissue-like: Gaussian nuclei on channel 0 and rings
    around them on channel 1, plus a little noise. Same values on every machine and numpy version.
    """
    rng = np.random.default_rng(20261130)
    height, width, _ = INPUT_SHAPE
    noise = rng.random((height, width, 2), dtype=np.float32)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    centres = rng.random((60, 2), dtype=np.float32) * np.float32(height)
    dist = np.min([np.hypot(rows - r, cols - c) for r, c in centres], axis=0)
    nuclei = np.exp(-(dist / 4) ** 2)
    rings = np.exp(-((dist - 9) / 2) ** 2)
    tissue = np.stack([nuclei, rings], axis=-1) * 0.9 + 0.1 * noise[::-1]
    return np.stack([noise, tissue]).astype(np.float32)
