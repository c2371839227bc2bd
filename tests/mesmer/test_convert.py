"""Weight conversion: sources, refusals, the self-check, and parity with TensorFlow.

Fast tests write Keras-layout H5 files with h5py from a random PyTorch network (no TensorFlow).
The parity tests (slow) convert random-weight Mesmer models saved by TensorFlow in the reference
environment (``tests/helpers/reference_env.py``) and compare PyTorch float32 with TensorFlow on the
same tiles; ``test_tf_export_*`` runs only where TensorFlow is installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile

import numpy as np
import pytest
from helpers.keras_h5 import write_keras_h5
from helpers.reference_env import reference_models_fixture

from codexdask.errors import ModelLoadError
from codexdask.mesmer import convert, graph

PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory):
    return reference_models_fixture(tmp_path_factory)


@pytest.fixture
def no_tensorflow(monkeypatch, tmp_path):
    """No TensorFlow reachable: no variable, no .venv-deepcell next to the package."""
    monkeypatch.delenv(convert.TENSORFLOW_PYTHON_ENV, raising=False)
    monkeypatch.setattr(convert, "_PACKAGE_ROOT", tmp_path / "no-checkout")
    if convert.tensorflow_environment() is not None:
        pytest.skip("TensorFlow is importable here; these tests are for the main environment")




@pytest.fixture(scope="module")
def torch_net():
    pytest.importorskip("torch")
    from codexdask.mesmer import network

    return network.random_network(seed=7)


@pytest.fixture(scope="module")
def h5_model(tmp_path_factory, torch_net):
    path = tmp_path_factory.mktemp("h5") / "mesmer.h5"
    write_keras_h5(path, {k: v.numpy() for k, v in torch_net.state_dict().items()})
    return path


def test_probe_tiles_are_fixed():
    a, b = convert.probe_tiles(), convert.probe_tiles()
    assert a.shape == (2, 256, 256, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    assert a[1].std() > 0.1  # the tissue-like tile has structure


def test_h5_converts_without_tensorflow(tmp_path, h5_model, torch_net, no_tensorflow):
    import torch

    from codexdask.mesmer import network

    out = tmp_path / "sub" / "mesmer.safetensors"
    metadata = convert.convert_model(h5_model, out)
    check = json.loads(metadata["self_check"])
    assert check["ran"] is False and "no TensorFlow" in check["reason"]
    assert metadata["source_kind"] == "h5"
    assert metadata["source_sha256"] == hashlib.sha256(h5_model.read_bytes()).hexdigest()
    assert metadata["source_md5"] == hashlib.md5(h5_model.read_bytes()).hexdigest()
    assert metadata["architecture_version"] == network.ARCHITECTURE_VERSION
    loaded = network.read_weights(out)
    for name, value in torch_net.state_dict().items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == metadata
    assert [p.name for p in out.parent.iterdir()] == ["mesmer.safetensors"]  # no temp files


@pytest.mark.parametrize("change, named", [
    (lambda c: c["config"]["layers"][5]["config"].update(kernel_size=[5, 5]), "conv1_conv"),
    (lambda c: c["config"]["layers"][-1].update(class_name="Activation"), "semantic_3"),
])
def test_h5_with_another_graph_is_refused(tmp_path, torch_net, no_tensorflow, change, named):
    config = graph.keras_model_config()
    change(config)
    path = tmp_path / "other.h5"
    write_keras_h5(path, {k: v.numpy() for k, v in torch_net.state_dict().items()}, config)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ModelLoadError, match=f"not Mesmer's network graph.*{named}"):
        convert.convert_model(path, out)
    assert not out.exists()


def test_h5_with_wrong_weights_is_refused(tmp_path, torch_net, no_tensorflow):
    state = {k: v.numpy() for k, v in torch_net.state_dict().items()}
    state["P1.weight"] = state["P1.weight"][:, :, :1, :1]
    path = tmp_path / "bad.h5"
    write_keras_h5(path, state)
    with pytest.raises(ModelLoadError, match="weight P1/kernel has shape"):
        convert.convert_model(path, tmp_path / "out.safetensors")


def test_weights_only_h5_is_refused(tmp_path):
    import h5py

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("conv1_conv")
    with pytest.raises(ModelLoadError, match="not a whole Keras model"):
        convert.convert_model(path, tmp_path / "out.safetensors")


def test_failed_self_check_refuses_and_writes_nothing(tmp_path, h5_model, torch_net, monkeypatch):
    from codexdask.mesmer import network

    exact = network.predict_maps(torch_net, convert.probe_tiles())

    def fake_export(src, scratch, probe, python, with_weights=True):
        shifted = exact.copy()
        shifted[1, 10, 20, 3] += 3e-4
        return {"outputs": shifted, "info": {"tensorflow_version": "fake"}}

    monkeypatch.setattr(convert, "run_tensorflow_export", fake_export)
    monkeypatch.setattr(convert, "tensorflow_environment", lambda option=None: "python-tf")
    out = tmp_path / "m.safetensors"
    message = r"self-check failed.*3\.00e-04.*nuclear_interior 3\.00e-04"
    with pytest.raises(ModelLoadError, match=message):
        convert.convert_model(h5_model, out)
    assert list(tmp_path.iterdir()) == []
    # within tolerance it is written and the numbers are recorded
    monkeypatch.setattr(convert, "run_tensorflow_export",
                        lambda *a, **k: {"outputs": exact + 5e-5, "info": {}})
    check = json.loads(convert.convert_model(h5_model, out)["self_check"])
    assert check["ran"] is True
    assert set(check["max_abs_diff"]) == set(network.MAP_NAMES)
    assert all(4e-5 < v < 6e-5 for v in check["max_abs_diff"].values())


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert.convert_model(tmp_path / "nothing", tmp_path / "o.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelLoadError, match="without saved_model.pb"):
        convert.convert_model(tmp_path / "empty_dir", tmp_path / "o.safetensors")
    (tmp_path / "text.bin").write_bytes(b"hello world, no model")
    with pytest.raises(ModelLoadError, match="neither a gzip archive nor an HDF5"):
        convert.convert_model(tmp_path / "text.bin", tmp_path / "o.safetensors")


def _fake_savedmodel(folder):
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01" * 1000)
    (folder / "variables" / "variables.index").write_bytes(np.arange(5000).tobytes())
    return folder


def test_savedmodel_without_tensorflow_says_how_to_provide_it(tmp_path, no_tensorflow):
    model = _fake_savedmodel(tmp_path / "MultiplexSegmentation")
    with pytest.raises(ModelLoadError, match="--tensorflow-python.*CODEXDASK_TENSORFLOW_PYTHON"):
        convert.convert_model(model, tmp_path / "o.safetensors")


def test_nonexistent_tensorflow_python_is_refused(tmp_path):
    model = _fake_savedmodel(tmp_path / "MultiplexSegmentation")
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert.convert_model(model, tmp_path / "o.safetensors",
                              tensorflow_python=str(tmp_path / "bin" / "python"))


def test_archives_extract_and_truncation_is_reported(tmp_path):
    model = _fake_savedmodel(tmp_path / "src" / "MultiplexSegmentation")
    archive = tmp_path / "MultiplexSegmentation-9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model, arcname="MultiplexSegmentation")
    found = convert.extract_archive(archive, tmp_path / "scratch")
    assert found.name == "MultiplexSegmentation"
    assert (found / "saved_model.pb").read_bytes() == (model / "saved_model.pb").read_bytes()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert convert.source_kind(truncated) == "archive"
    with pytest.raises(ModelLoadError, match="truncated or not a .tar.gz"):
        convert.extract_archive(truncated, tmp_path / "scratch2")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(model / "variables", arcname="variables")
    with pytest.raises(ModelLoadError, match="holds 0 SavedModels"):
        convert.extract_archive(empty, tmp_path / "scratch3")


def test_archive_with_unsafe_paths_is_refused(tmp_path):
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../escape")
    with pytest.raises(ModelLoadError, match="unsafe entry"):
        convert.extract_archive(archive, tmp_path / "scratch")
    assert not (tmp_path.parent / "escape").exists()


def test_directory_checksum_covers_names_and_contents(tmp_path):
    model = _fake_savedmodel(tmp_path / "a")
    first = convert.checksums(model)["source_sha256"]
    assert convert.checksums(shutil.copytree(model, tmp_path / "b"))["source_sha256"] == first
    (model / "variables" / "variables.index").write_bytes(b"changed")
    assert convert.checksums(model)["source_sha256"] != first


def test_main_reports_errors_and_success(tmp_path, h5_model, no_tensorflow, capsys):
    assert convert.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o.st")]) == 2
    assert "codexdask convert-model: error: model source" in capsys.readouterr().err
    out = tmp_path / "ok.safetensors"
    assert convert.main([str(h5_model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "self-check not run" in printed
    assert out.is_file()


# ----------------------------------------------------------------------------- TensorFlow side
@pytest.mark.reference
def test_tf_export_dumps_a_graph_the_check_accepts(tmp_path, mesmer_model_dir):
    pytest.importorskip("tensorflow")
    from codexdask.mesmer import tf_export

    out = tmp_path / "exchange.npz"
    probe = convert.probe_tiles()[:1]
    tf_export.export(mesmer_model_dir, out, probe, taps=("P1",))
    exchange = convert.read_exchange(out)
    graph.check_keras_graph(exchange["graph"])
    state = graph.torch_state_dict(exchange["weights"])
    assert sum(v.size for v in state.values()) == graph.PARAMETER_COUNT
    assert exchange["outputs"].shape == (1, 256, 256, 4)
    assert exchange["taps"]["P1"].shape == (1, 128, 128, 256)
    assert "serving_default" in exchange["info"]["outputs_from"]


@pytest.mark.reference
def test_own_location_layer_equals_deepcells():
    """The stand-in used where deepcell is absent computes exactly deepcell's Location2D."""
    pytest.importorskip("deepcell")
    from deepcell.layers import Location2D

    from codexdask.mesmer import tf_export

    image = np.random.default_rng(0).random((2, 256, 128, 2), dtype=np.float32)
    ours = tf_export._own_location_layer()(name="location")(image).numpy()
    theirs = Location2D(name="location")(image).numpy()
    assert ours.shape == (2, 256, 128, 2)
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------- parity
def _maps(path, tiles):
    from codexdask.mesmer import network

    network.clear_cache()
    net = network.load_network(path, "cpu")
    maps = np.concatenate([network.predict_maps(net, tiles[i:i + 4])
                           for i in range(0, len(tiles), 4)])
    network.clear_cache()
    return maps


@pytest.mark.slow
def test_converted_models_match_tensorflow(reference_models, tmp_path):
    """SavedModel (TensorFlow subprocess) and H5 (h5py) conversions of every seed vs TensorFlow."""
    pytest.importorskip("torch")
    from helpers.reference_env import reference_python

    from codexdask.mesmer import network

    python = reference_python()
    report = {}
    for seed, model in reference_models.items():
        for kind, src in (("savedmodel", model.savedmodel), ("h5", model.h5)):
            out = tmp_path / f"seed{seed}-{kind}.safetensors"
            metadata = convert.convert_model(src, out, tensorflow_python=python)
            check = json.loads(metadata["self_check"])
            assert check["ran"] and max(check["max_abs_diff"].values()) <= PARITY_TOLERANCE
            diff = np.abs(_maps(out, model.tiles) - model.maps).max(axis=(1, 2))  # (tile, map)
            report[f"seed{seed} {kind}"] = dict(zip(network.MAP_NAMES, diff.max(axis=0)))
            worst_tile = model.names[int(diff.max(axis=1).argmax())]
            assert diff.max() <= PARITY_TOLERANCE, (seed, kind, worst_tile, diff.max(axis=0))
    for name, row in report.items():
        print(name, {k: f"{v:.2g}" for k, v in row.items()})
    worst = {m: max(row[m] for row in report.values()) for m in network.MAP_NAMES}
    print("worst per map:", {k: f"{v:.2g}" for k, v in worst.items()})


@pytest.mark.slow
def test_converted_archive_matches_tensorflow(reference_models, tmp_path):
    """deepcell's .tar.gz form (first seed): extracted, converted, equal to TensorFlow."""
    pytest.importorskip("torch")
    from helpers.reference_env import reference_python

    model = next(iter(reference_models.values()))
    archive = tmp_path / "MultiplexSegmentation-9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model.savedmodel, arcname="MultiplexSegmentation")
    out = tmp_path / "archive.safetensors"
    metadata = convert.convert_model(archive, out, tensorflow_python=reference_python())
    assert metadata["source_kind"] == "archive"
    assert metadata["source_md5"] == hashlib.md5(archive.read_bytes()).hexdigest()
    assert np.abs(_maps(out, model.tiles) - model.maps).max() <= PARITY_TOLERANCE
