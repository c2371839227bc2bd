"""The PyTorch Mesmer network: structure, numerics of its pieces, precision modes, weight loading.

Parity with TensorFlow layer by layer (``test_stage_outputs_match_tensorflow``) needs the
reference environment (see ``tests/helpers/reference_env.py``); everything else runs on CPU in
seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from helpers.reference_env import STAGE_TAPS, reference_models_fixture  # noqa: E402

from codexdask.errors import ConfigError, InputError, ModelLoadError  # noqa: E402
from codexdask.mesmer import convert, graph, network  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net():
    return network.random_network(seed=3)


@pytest.fixture(scope="module")
def tiles():
    return convert.probe_tiles()


@pytest.fixture(scope="module")
def small(tiles):
    """Two 64x64 crops of the probe tiles (fast on CPU)."""
    return np.ascontiguousarray(tiles[:, 96:160, 64:128])


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory):
    return reference_models_fixture(tmp_path_factory)


def test_parameters_match_the_keras_graph():
    module = network.MesmerNet()
    assert network.count_values(module) == graph.PARAMETER_COUNT == 25_804_951
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert shapes == graph.torch_parameter_shapes()
    assert not module.training


def test_forward_shapes_dtypes_and_ranges(net, tiles):
    maps = network.predict_maps(net, tiles)
    assert maps.shape == (2, 256, 256, 4) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    distances, interiors = maps[..., [0, 2]], maps[..., [1, 3]]
    assert distances.min() >= 0
    assert 0 <= interiors.min() and interiors.max() <= 1
    # standardised heads: maps vary over the tile (interiors cross Mesmer's 0.2 threshold)
    assert ((interiors > 0.2).mean(axis=(1, 2)) > 0.05).all()
    assert ((interiors < 0.2).mean(axis=(1, 2)) > 0.05).all()


def test_interior_is_softmax_channel_one_and_distance_is_relu(net, small):
    with torch.inference_mode():
        acts = net.activations(torch.from_numpy(small), tuple(f"semantic_{k}" for k in range(4)))
        maps = net(torch.from_numpy(small)).numpy()
    for k in range(4):
        expected = acts[f"semantic_{k}"][..., 0 if k % 2 == 0 else 1].numpy()
        np.testing.assert_array_equal(maps[..., k], expected)
    np.testing.assert_allclose(acts["semantic_1"].sum(-1).numpy(), 1.0, atol=1e-6)


def test_location_channels_are_keras_location2d():
    image = torch.zeros(3, 2, 256, 128)
    loc = network.location_channels(image).numpy()
    assert loc.shape == (3, 2, 256, 128) and loc.dtype == np.float32
    rows = np.arange(256, dtype=np.float32) / np.float32(255)  # arange / max(arange), float32
    cols = np.arange(128, dtype=np.float32) / np.float32(127)
    np.testing.assert_array_equal(loc[2, 0], np.broadcast_to(rows[:, None], (256, 128)))
    np.testing.assert_array_equal(loc[0, 1], np.broadcast_to(cols[None, :], (256, 128)))
    assert loc[1, 0, -1, 0] == 1.0 and loc[1, 1, 0, -1] == 1.0


def _tf_bilinear_2x(x: np.ndarray) -> np.ndarray:
    """tf.image.resize(bilinear) of (H, W) to 2x: half-pixel centres, clamped at the edges."""
    def axis(n):
        src = (np.arange(2 * n) + 0.5) / 2 - 0.5
        low = np.floor(src)
        frac = src - low
        return np.clip(low, 0, n - 1).astype(int), np.clip(low + 1, 0, n - 1).astype(int), frac

    r0, r1, fr = axis(x.shape[0])
    c0, c1, fc = axis(x.shape[1])
    top = x[r0][:, c0] * (1 - fc) + x[r0][:, c1] * fc
    bottom = x[r1][:, c0] * (1 - fc) + x[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def test_upsampling_is_tensorflow_half_pixel_bilinear():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    got = network.upsample2x(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, 10, 14)
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[b, c], _tf_bilinear_2x(x[b, c]), rtol=0, atol=1e-12)
    # the corners copy the input's corners; align_corners=True would not shift the interior
    assert got[0, 0, 0, 0] == x[0, 0, 0, 0] and got[0, 0, -1, -1] == x[0, 0, -1, -1]


def test_channels_last_and_contiguous_layouts_agree(net, small):
    plain = network.MesmerNet()
    plain.load_state_dict(net.state_dict())
    plain = plain.to(memory_format=torch.contiguous_format)
    assert plain.P1.weight.is_contiguous() and net.P1.weight.is_contiguous(
        memory_format=torch.channels_last)
    a = network.predict_maps(net, small)
    b = network.predict_maps(plain, small)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_a_tile_does_not_depend_on_its_batch(net, small):
    together = network.predict_maps(net, np.concatenate([small, small[:1]]))
    alone = network.predict_maps(net, small[1:])
    np.testing.assert_allclose(together[1], alone[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(together[0], together[2], rtol=0, atol=1e-4)


def test_no_activation_reaches_the_per_pass_limit(net, small, monkeypatch):
    # WIDEST_CHANNELS must bound every intermediate tensor of the architecture, per output pixel.
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out[0].numel()))
             for m in net.modules() if m is not net]
    upsample = network.upsample2x

    def upsample_recorded(x):
        out = upsample(x)
        sizes.append(out[0].numel())
        return out

    monkeypatch.setattr(network, "upsample2x", upsample_recorded)
    try:
        network.predict_maps(net, small[:1])
    finally:
        for hook in hooks:
            hook.remove()
    assert max(sizes) == network.WIDEST_CHANNELS * small.shape[1] * small.shape[2]


def test_large_batches_run_in_passes_with_the_same_maps(net, small, monkeypatch):
    # The real limit (2**31 values) needs 256 tiles of 256²; a smaller one shows the splitting.
    alone = network.predict_maps(net, small)
    batch = np.concatenate([small, small[::-1], small[:1]])  # 5 tiles
    monkeypatch.setattr(network, "MAX_ACTIVATION_VALUES",
                        2 * network.WIDEST_CHANNELS * small.shape[1] * small.shape[2])
    assert network.tiles_per_pass(*small.shape[1:3]) == 2
    seen = []
    run = network.MesmerNet._run
    monkeypatch.setattr(network.MesmerNet, "_run",
                        lambda self, tiles, taps: seen.append(len(tiles)) or run(self, tiles, taps))
    maps = network.predict_maps(net, batch)
    assert seen == [2, 2, 1]
    np.testing.assert_allclose(maps, np.concatenate([alone, alone[::-1], alone[:1]]),
                               rtol=0, atol=1e-4)


def test_other_tile_sides_run(net):
    maps = network.predict_maps(net, np.zeros((1, 64, 96, 2), np.float32))
    assert maps.shape == (1, 64, 96, 4)


@pytest.mark.parametrize("precision", network.PRECISIONS)
def test_precision_modes_run_on_cpu(net, small, precision):
    reference = network.predict_maps(net, small, "fp32")
    maps = network.predict_maps(net, small, precision)
    assert maps.shape == reference.shape and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    diff = np.abs(maps - reference).max()
    if precision == "tf32":  # TF32 only exists on CUDA; on CPU it is float32
        assert diff == 0
    elif precision in ("bf16", "fp16"):  # really computed at lower precision, but close
        assert 0 < diff < 0.5
        interior = np.abs(maps[..., [1, 3]] - reference[..., [1, 3]]).mean()
        assert interior < 0.02


def test_tf32_switches_are_set_and_restored():
    """The CUDA TF32 flags (settable on any build): off for fp32, on for tf32, then restored."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    for enabled, value in ((False, "ieee"), (True, "tf32")):
        with network._tf32(enabled):
            assert (matmul.fp32_precision, conv.fp32_precision) == (value, value)
        assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_bad_inputs_and_options_are_refused(net):
    with pytest.raises(InputError, match=r"\(B, H, W, 2\)"):
        network.predict_maps(net, np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(InputError, match=r"\(B, H, W, 2\)"):
        network.predict_maps(net, np.zeros((256, 256, 2), np.float32))
    with pytest.raises(InputError, match="multiples of 32"):
        network.predict_maps(net, np.zeros((1, 250, 256, 2), np.float32))
    with pytest.raises(ConfigError, match="precision"):
        network.predict_maps(net, np.zeros((1, 64, 64, 2), np.float32), "int8")
    with pytest.raises(ConfigError, match="no activation tap"):
        net.activations(torch.zeros(1, 64, 64, 2), ("conv2_block1_out",))


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert network.resolve_device(None).type == expected
    assert network.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown torch device"):
        network.resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            network.resolve_device("cuda")


def test_network_imports_without_scipy_dask_zarr():
    """The GPU check's promise: numpy + torch suffice for the network and the random model."""
    code = ("import sys\n"
            "for name in ('scipy', 'dask', 'distributed', 'zarr', 'skimage', 'pandas', 'h5py',"
            " 'safetensors', 'tensorflow'):\n"
            "    sys.modules[name] = None\n"
            "from codexdask.mesmer import network\n"
            "net = network.random_network(seed=0)\n"
            "print(network.predict_maps(net, __import__('numpy').zeros((1, 32, 32, 2), "
            "'float32')).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 32, 32, 4)"


def _write(path, state, **metadata):
    meta = {"architecture": network.ARCHITECTURE,
            "architecture_version": network.ARCHITECTURE_VERSION, **metadata}
    convert.write_safetensors({k: v.numpy() for k, v in state.items()}, meta, path)


def test_load_network_round_trip_and_cache(tmp_path, net, small):
    network.clear_cache()
    path = tmp_path / "mesmer.safetensors"
    _write(path, net.state_dict())
    loaded = network.load_network(path, "cpu")
    for name, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    assert loaded.conv1_conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(network.predict_maps(loaded, small),
                                  network.predict_maps(net, small))
    assert network.load_network(path, "cpu") is loaded  # one model per process
    other = tmp_path / "other.safetensors"
    _write(other, network.MesmerNet().state_dict())
    assert network.load_network(other, "cpu") is not loaded
    network.clear_cache()


@pytest.mark.parametrize("problem, message", [
    ("missing", "not found"),
    ("garbage", "not a readable safetensors"),
    ("architecture", "does not hold Mesmer weights"),
    ("version", "architecture version"),
    ("tensor", "lacks the tensor 'P1.bias'"),
    ("shape", "tensor 'P1.weight'"),
    ("extra", "does not have"),
])
def test_bad_weight_files_are_refused(tmp_path, problem, message):
    network.clear_cache()
    path = tmp_path / "w.safetensors"
    state = dict(network.MesmerNet().state_dict())
    if problem == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif problem == "architecture":
        _write(path, state, architecture="something-else")
    elif problem == "version":
        _write(path, state, architecture_version="0")
    elif problem == "tensor":
        del state["P1.bias"]
        _write(path, state)
    elif problem == "shape":
        state["P1.weight"] = torch.zeros(256, 256, 1, 1)
        _write(path, state)
    elif problem == "extra":
        state["extra.weight"] = torch.zeros(3)
        _write(path, state)
    with pytest.raises(ModelLoadError, match=message):
        network.load_network(path, "cpu")


@pytest.mark.slow
def test_stage_outputs_match_tensorflow(reference_models):
    """Stem, every ResNet stage, P1 and each head against TensorFlow's activations (all seeds)."""
    worst: dict[str, float] = {}
    for model in reference_models.values():
        config, weights = convert.read_h5(model.h5)
        graph.check_keras_graph(config)
        module = network.MesmerNet()
        module.load_state_dict({k: torch.from_numpy(v)
                                for k, v in graph.torch_state_dict(weights).items()})
        module = module.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            acts = module.activations(torch.from_numpy(model.tiles[:2]), STAGE_TAPS)
        for name in STAGE_TAPS:
            diff = float(np.abs(acts[name].numpy() - model.taps[name]).max())
            worst[name] = max(worst.get(name, 0.0), diff)
    print("worst max abs diff per layer:", {k: f"{v:.2g}" for k, v in worst.items()})
    assert max(worst.values()) <= 1e-4, worst
