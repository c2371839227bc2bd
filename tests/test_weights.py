"""Where Mesmer's weights come from: one decision for the loader, ``doctor`` and the errors.

Only files are looked at (fake archives, no TensorFlow, no network); the loader itself is tested
in ``test_mesmer.py``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from codexdask.errors import ModelLoadError
from codexdask.mesmer import weights


def test_model_path_decides_first_and_names_its_problem(no_weights_env, tmp_path):
    missing = weights.find_model_source(tmp_path / "nowhere")
    assert (missing.source, missing.ok) == ("model_path", False)
    assert missing.detail == f"model_path {tmp_path / 'nowhere'}: does not exist"
    with pytest.raises(ModelLoadError, match="does not exist.*saved_model.pb"):
        weights.locate_model_dir(tmp_path / "nowhere")
    (tmp_path / "saved_model.pb").write_bytes(b"")
    found = weights.find_model_source(tmp_path)
    assert found.as_dict() == {"source": "model_path", "path": str(tmp_path), "ok": True,
                               "detail": f"model_path {tmp_path} (Keras SavedModel)"}
    assert weights.locate_model_dir(tmp_path) == tmp_path


def test_no_source_names_the_three_ways(no_weights_env):
    found = weights.find_model_source()
    assert (found.source, found.path, found.ok) == (None, None, False)
    for way in ("model_path", "MultiplexSegmentation-9.tar.gz", "DEEPCELL_ACCESS_TOKEN"):
        assert way in found.detail
    with pytest.raises(ModelLoadError) as info:
        weights.locate_model_dir()
    assert str(info.value) == found.detail


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
    assert weights.find_model_source().source == "download"
    found = weights.locate_model_dir(None)
    assert found == no_weights_env / ".deepcell" / "models" / "MultiplexSegmentation"
    # An explicit model_path wins over the token.
    assert weights.find_model_source(tmp_path).source == "model_path"


def test_model_path_env_variable(no_weights_env, mesmer_model_dir, monkeypatch):
    monkeypatch.setenv(weights.MODEL_PATH_ENV, str(mesmer_model_dir))
    source = weights.find_model_source()
    assert source.source == "model_path" and source.ok
    assert weights.locate_model_dir(None) == mesmer_model_dir
