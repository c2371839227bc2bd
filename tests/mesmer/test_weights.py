"""Where Mesmer's weights come from: one decision for the loader, ``doctor`` and the errors.

Only files are looked at (fake archives, no TensorFlow, no network); the loader itself is tested
in ``test_mesmer.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
import tarfile
import tempfile
from pathlib import Path

import pytest

from codexdask.config import MODEL_PATH_ENV, model_path_or_environment
from codexdask.errors import ModelLoadError
from codexdask.mesmer import weights
from codexdask.mesmer.graph import ARCHITECTURE, ARCHITECTURE_VERSION


def test_model_path_decides_first_and_names_its_problem(no_weights_env, tmp_path):
    missing = weights.find_model_source(tmp_path / "nowhere")
    assert (missing.source, missing.ok) == ("model_path", False)
    assert missing.detail == f"model_path {tmp_path / 'nowhere'}: does not exist"
    with pytest.raises(ModelLoadError, match="does not exist.*convert-model.*saved_model.pb"):
        weights.locate_model_dir(tmp_path / "nowhere")
    (tmp_path / "saved_model.pb").write_bytes(b"")
    found = weights.find_model_source(tmp_path)
    tensorflow_here = weights.runtime_available("tensorflow")
    assert (found.source, found.path, found.ok) == ("model_path", str(tmp_path), True)
    assert (found.runtime, found.runtime_ok) == ("tensorflow", tensorflow_here)
    assert found.detail.startswith(f"model_path {tmp_path} (Keras SavedModel)")
    assert ("not installed here" in found.detail) is (not tensorflow_here)
    assert weights.locate_model_dir(tmp_path) == tmp_path


def test_no_source_names_every_way(no_weights_env):
    found = weights.find_model_source()
    assert (found.source, found.path, found.ok) == (None, None, False)
    for way in ("model_path", ".safetensors", "convert-model", "MultiplexSegmentation-9.tar.gz",
                "DEEPCELL_ACCESS_TOKEN"):
        assert way in found.detail
    with pytest.raises(ModelLoadError) as info:
        weights.locate_model_dir()
    assert str(info.value) == found.detail


def _safetensors(path: Path, metadata: dict[str, str]) -> Path:
    """A minimal safetensors file: the JSON header with ``metadata`` and one tiny tensor."""
    header = json.dumps({"__metadata__": metadata,
                         "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    return path


def test_converted_file_selects_pytorch_and_shows_its_self_check(no_weights_env, tmp_path):
    check = {"ran": True, "max_abs_diff": {"nuclear_interior": 2.5e-6}, "tolerance": 1e-4}
    file = _safetensors(tmp_path / "mesmer.safetensors", {
        "architecture": ARCHITECTURE, "architecture_version": ARCHITECTURE_VERSION,
        "source_sha256": "ab" * 32, "self_check": json.dumps(check)})
    found = weights.find_model_source(file)
    assert (found.source, found.ok, found.runtime) == ("model_path", True, "torch")
    assert found.runtime_ok is weights.runtime_available("torch")
    assert found.metadata["self_check"] == check and found.metadata["source_sha256"] == "ab" * 32
    assert "converted weights for PyTorch" in found.detail and "2.5e-06" in found.detail
    with pytest.raises(ModelLoadError, match="PyTorch, not a Keras SavedModel"):
        weights.locate_model_dir(file)


@pytest.mark.parametrize(("metadata", "problem"), [
    ({"architecture": "resnet"}, "not Mesmer weights converted by codexdask"),
    ({"architecture": ARCHITECTURE, "architecture_version": "0"}, "architecture version '0'"),
])
def test_foreign_safetensors_are_refused(tmp_path, metadata, problem):
    found = weights.find_model_source(_safetensors(tmp_path / "w.safetensors", metadata))
    assert not found.ok and problem in found.detail
    with pytest.raises(ModelLoadError, match="convert-model"):
        raise found.error()


def test_other_files_are_refused_with_a_fix(tmp_path):
    h5 = tmp_path / "mesmer.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 8)
    found = weights.find_model_source(h5)
    assert not found.ok and "codexdask convert-model FILE.h5" in found.detail
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\xff" * 64)
    found = weights.find_model_source(junk)
    assert not found.ok and "neither converted weights" in found.detail
    assert "nor deepcell's .tar.gz" in found.detail


def test_archive_as_model_path_is_extracted_once(no_weights_env, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where it is extracted
    (tmp_path / "tmp").mkdir()
    archive = tmp_path / "MultiplexSegmentation-9.tar.gz"
    _fake_archive(archive)
    found = weights.find_model_source(archive)
    assert (found.ok, found.runtime) == (True, "tensorflow") and "archive" in found.detail
    first = weights.locate_model_dir(archive)
    assert first.is_relative_to(tmp_path / "tmp" / "codexdask-models")
    assert (first / "saved_model.pb").read_bytes() == b"placeholder"
    assert weights.locate_model_dir(archive) == first  # reused, keyed by the archive's md5


@pytest.mark.reference
def test_constants_match_deepcell():
    deepcell_mesmer = pytest.importorskip("deepcell.applications.mesmer")
    assert weights.MODEL_KEY == deepcell_mesmer.MODEL_KEY
    assert weights.MODEL_NAME == deepcell_mesmer.MODEL_NAME
    assert weights.MODEL_HASH == deepcell_mesmer.MODEL_HASH


def _fake_archive(path: Path) -> str:
    """A tar.gz like deepcell's (``MultiplexSegmentation/saved_model.pb``); returns its md5."""
    payload = b"placeholder"
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo("MultiplexSegmentation/saved_model.pb")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_deepcell_cache_archive_is_checked_and_extracted(no_weights_env, monkeypatch):
    models = no_weights_env / ".deepcell" / "models"
    models.mkdir(parents=True)
    digest = _fake_archive(models / "MultiplexSegmentation-9.tar.gz")
    with pytest.raises(ModelLoadError, match="md5"):  # not deepcell's hash: refused
        weights.locate_model_dir(None)
    monkeypatch.setattr(weights, "MODEL_HASH", digest)
    assert weights.find_model_source().source == "deepcell-cache-archive"
    found = weights.locate_model_dir(None)
    assert found == models / "MultiplexSegmentation"
    assert (found / "saved_model.pb").read_bytes() == b"placeholder"
    assert weights.find_model_source().source == "deepcell-cache"
    assert not [p for p in models.iterdir() if p.name.startswith(".codexdask-extract")]


def test_token_download_comes_last(no_weights_env, monkeypatch, tmp_path):
    archive = tmp_path / "download" / "MultiplexSegmentation-9.tar.gz"
    archive.parent.mkdir()
    _fake_archive(archive)
    (no_weights_env / ".deepcell" / "models").mkdir(parents=True)
    monkeypatch.setattr(weights, "_download", lambda: archive)  # no network in tests
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "test-token")
    if importlib.util.find_spec("deepcell") is None:  # the token needs deepcell to download
        found = weights.find_model_source()
        assert not found.ok and "deepcell is not installed here" in found.detail
        return
    assert weights.find_model_source().source == "download"
    found = weights.locate_model_dir(None)
    assert found == no_weights_env / ".deepcell" / "models" / "MultiplexSegmentation"
    # An explicit model_path wins over the token.
    assert weights.find_model_source(tmp_path).source == "model_path"


@pytest.mark.reference
def test_model_path_env_variable(no_weights_env, mesmer_model_dir, monkeypatch):
    # The configuration reads the variable (the one place that does); the weights' lookup then
    # takes it as the configured model_path.
    monkeypatch.setenv(MODEL_PATH_ENV, str(mesmer_model_dir))
    model_path = model_path_or_environment(None)
    source = weights.find_model_source(model_path)
    assert source.source == "model_path" and source.ok
    assert weights.locate_model_dir(model_path) == mesmer_model_dir
    from codexdask.segmenters.mesmer import MesmerSegmenter

    assert MesmerSegmenter().source() == source
