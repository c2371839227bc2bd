"""Mesmer's Keras graph description and the check that refuses other graphs (numpy only)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from codexdask.errors import ModelLoadError
from codexdask.mesmer import graph


def _layer(config: dict, name: str) -> dict:
    return next(entry for entry in config["config"]["layers"] if entry["name"] == name)


def test_graph_has_mesmers_layer_and_weight_counts():
    layers = graph.mesmer_layers()
    assert len(layers) == 220
    total = sum(int(np.prod(shape)) for layer in layers.values() for _, shape in layer.weights)
    assert total == graph.PARAMETER_COUNT == 25_804_951
    assert sum(int(np.prod(s)) for s in graph.torch_parameter_shapes().values()) == total
    # every inbound layer exists and comes earlier (a topological order)
    order = {name: i for i, name in enumerate(layers)}
    for layer in layers.values():
        assert all(order[src] < order[layer.name] for src in layer.inbound)


def test_resnet_details_follow_keras_resnet50_v1():
    layers = graph.mesmer_layers()
    assert layers["conv3_block1_1_conv"].config["strides"] == [2, 2]  # stride on the first 1x1
    assert layers["conv3_block1_2_conv"].config["strides"] == [1, 1]
    assert layers["conv3_block1_0_conv"].config["strides"] == [2, 2]
    assert layers["conv2_block1_1_conv"].config["strides"] == [1, 1]
    assert layers["conv1_conv"].config["padding"] == "valid"
    assert layers["conv4_block2_2_bn"].config["epsilon"] == 1.001e-5
    assert layers["batch_normalization_0_semantic_1"].config["epsilon"] == 1e-3
    assert layers["P1"].inbound == ("P1_merged",)
    assert layers["P1_merged"].inbound == ("C1_reduced", "P2_upsampled")
    assert layers["C1_reduced"].inbound == ("conv1_relu",)
    heads = [name for name, layer in layers.items() if "P1" in layer.inbound]
    assert heads == [f"conv_0_semantic_upsample_{k}" for k in range(4)]


def test_torch_parameter_shapes_are_oihw():
    shapes = graph.torch_parameter_shapes()
    assert shapes["conv1_conv.weight"] == (64, 3, 7, 7)
    assert shapes["conv1_bn.running_var"] == (64,)
    assert shapes["conv_1_semantic_1.weight"] == (3, 128, 1, 1)


def test_own_configuration_passes_the_check():
    graph.check_keras_graph(graph.keras_model_config())
    # and a JSON round trip of it (what an H5 attribute holds)
    graph.check_keras_graph(json.loads(json.dumps(graph.keras_model_config())))


def test_keras_spellings_of_the_same_setting_are_accepted():
    config = graph.keras_model_config()
    _layer(config, "conv1_bn")["config"]["axis"] = [3]
    _layer(config, "conv1_conv")["config"]["data_format"] = None
    _layer(config, "concatenate_location")["config"]["axis"] = 3
    _layer(config, "conv_channels")["config"].update(groups=1, dilation_rate=(1, 1))
    adds = _layer(config, "P4_merged")["inbound_nodes"][0]
    adds.reverse()  # addition is commutative
    graph.check_keras_graph(config)


def _mutate(kind: str) -> tuple[dict, str]:
    config = copy.deepcopy(graph.keras_model_config())
    if kind == "epsilon":
        _layer(config, "conv2_block2_1_bn")["config"]["epsilon"] = 1e-5
        return config, "conv2_block2_1_bn"
    if kind == "kernel":
        _layer(config, "P1")["config"]["kernel_size"] = [1, 1]
        return config, "'P1'"
    if kind == "stride":
        _layer(config, "conv3_block1_1_conv")["config"]["strides"] = [1, 1]
        return config, "conv3_block1_1_conv"
    if kind == "groups":
        _layer(config, "conv_channels")["config"]["groups"] = 3
        return config, "conv_channels"
    if kind == "interpolation":
        _layer(config, "P2_upsampled")["config"]["interpolation"] = "nearest"
        return config, "P2_upsampled"
    if kind == "inbound":
        _layer(config, "conv_0_semantic_upsample_2")["inbound_nodes"] = [[["P1_merged", 0, 0, {}]]]
        return config, "conv_0_semantic_upsample_2"
    if kind == "class":
        _layer(config, "semantic_1")["class_name"] = "Activation"
        return config, "semantic_1"
    if kind == "extra":
        config["config"]["layers"].insert(5, {"class_name": "Dropout", "name": "drop",
                                              "config": {"name": "drop"}, "inbound_nodes": []})
        return config, "drop"
    if kind == "missing":
        config["config"]["layers"] = [e for e in config["config"]["layers"]
                                      if e["name"] != "conv5_block3_add"]
        return config, "conv5_block3_add"
    if kind == "outputs":
        config["config"]["output_layers"].reverse()
        return config, "outputs"
    if kind == "input":
        _layer(config, "input_0")["config"]["batch_input_shape"] = [None, 512, 512, 2]
        return config, "input_0"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["epsilon", "kernel", "stride", "groups", "interpolation",
                                  "inbound", "class", "extra", "missing", "outputs", "input"])
def test_a_changed_graph_is_refused_naming_the_difference(kind):
    config, named = _mutate(kind)
    with pytest.raises(ModelLoadError, match="not Mesmer's network graph") as info:
        graph.check_keras_graph(config)
    assert named in str(info.value)


def test_first_difference_is_reported_in_graph_order():
    config = graph.keras_model_config()
    _layer(config, "conv_1_semantic_3")["config"]["filters"] = 4
    _layer(config, "conv1_conv")["config"]["filters"] = 32
    with pytest.raises(ModelLoadError, match="'conv1_conv' has filters=32"):
        graph.check_keras_graph(config)


@pytest.mark.parametrize("config", [{}, {"class_name": "Sequential", "config": []}, [1, 2]])
def test_non_functional_configuration_is_refused(config):
    with pytest.raises(ModelLoadError, match="no functional layer list"):
        graph.check_keras_graph(config)


def _keras_weights(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {layer.name: {w: rng.standard_normal(shape).astype(np.float32)
                         for w, shape in layer.weights}
            for layer in graph.mesmer_layers().values() if layer.weights}


def test_torch_state_dict_transposes_kernels_and_renames():
    weights = _keras_weights()
    state = graph.torch_state_dict(weights)
    assert set(state) == set(graph.torch_parameter_shapes())
    kernel = weights["conv1_conv"]["kernel"]  # (7, 7, 3, 64) HWIO
    for o, i, y, x in [(0, 0, 0, 0), (63, 2, 6, 1), (5, 1, 3, 4)]:
        assert state["conv1_conv.weight"][o, i, y, x] == kernel[y, x, i, o]
    assert state["conv1_conv.weight"].flags.c_contiguous
    np.testing.assert_array_equal(state["conv1_bn.running_var"],
                                  weights["conv1_bn"]["moving_variance"])
    np.testing.assert_array_equal(state["conv1_bn.weight"], weights["conv1_bn"]["gamma"])


@pytest.mark.parametrize("change, message", [
    (lambda w: w["P1"].pop("bias"), "lacks its weight 'bias'"),
    (lambda w: w["P1"].update(kernel=np.zeros((1, 1, 256, 256), np.float32)), "has shape"),
    (lambda w: w["conv1_bn"].update(renorm_mean=np.zeros(64, np.float32)), "unexpected weights"),
    (lambda w: w.update(extra_dense={"kernel": np.zeros((2, 2), np.float32)}), "extra_dense"),
    (lambda w: w.update(location={"kernel": np.zeros((2, 2), np.float32)}), "'location'"),
])
def test_torch_state_dict_refuses_wrong_weights(change, message):
    weights = _keras_weights()
    change(weights)
    with pytest.raises(ModelLoadError, match=message):
        graph.torch_state_dict(weights)
