"""Where Mesmer's weights come from: one decision, used by the loader, ``doctor`` and the errors.

Sources, in this order (:func:`find_model_source`):

1. ``model_path`` (``--model-path``, the ``model_path:`` key, else ``$CODEXDASK_MODEL_PATH``): a
   Keras SavedModel directory, the one holding ``saved_model.pb``;
2. deepcell's cache ``~/.deepcell/models``: the extracted ``MultiplexSegmentation`` directory, or
   deepcell's archive ``MultiplexSegmentation-9.tar.gz`` (md5-checked, extracted on first use);
3. a download through deepcell when ``$DEEPCELL_ACCESS_TOKEN`` is set.

If none is there, the error names these three ways. Nothing here imports TensorFlow; deepcell is
imported only to download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

__all__ = [
    "MODEL_ARCHIVE",
    "MODEL_HASH",
    "MODEL_KEY",
    "MODEL_NAME",
    "MODEL_PATH_ENV",
    "TOKEN_ENV",
    "ModelSource",
    "deepcell_models_dir",
    "find_model_source",
    "locate_model_dir",
    "weights_key",
]

logger = logging.getLogger(__name__)

#: deepcell's asset for the Mesmer weights (``deepcell.applications.mesmer`` constants).
MODEL_NAME = "MultiplexSegmentation"
MODEL_ARCHIVE = "MultiplexSegmentation-9.tar.gz"
MODEL_KEY = "models/" + MODEL_ARCHIVE
MODEL_HASH = "a1dfbce2594f927b9112f23a0a1739e0"
#: Environment variable read when no ``model_path`` is given.
MODEL_PATH_ENV = "CODEXDASK_MODEL_PATH"
#: deepcell's download token.
TOKEN_ENV = "DEEPCELL_ACCESS_TOKEN"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the weights would be taken from (nothing loaded, nothing downloaded).

    Attributes
    ----------
    source : str or None
        ``"model_path"``, ``"deepcell-cache"``, ``"deepcell-cache-archive"``, ``"download"``, or
        ``None`` when no source works.
    path : str or None
        The directory or archive, when there is one.
    ok : bool
        Whether loading can go ahead.
    detail : str
        One line for people: the source, or what is wrong and the ways to fix it.
    """

    source: str | None
    path: str | None
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """The four fields as a JSON-ready dict (``codexdask doctor --json``)."""
        return dataclasses.asdict(self)

    def error(self) -> ModelLoadError:
        """The error to raise when ``ok`` is false, saying how to provide the weights."""
        if self.source == "model_path":
            return ModelLoadError(
                f"Mesmer {self.detail}; point model_path at a Keras SavedModel directory (the "
                f"one holding saved_model.pb), e.g. the {MODEL_NAME} folder extracted from "
                f"deepcell's {MODEL_ARCHIVE}"
            )
        return ModelLoadError(self.detail)


def deepcell_models_dir() -> Path:
    """deepcell's model cache, ``~/.deepcell/models``."""
    return Path.home() / ".deepcell" / "models"


def find_model_source(model_path: str | os.PathLike[str] | None = None) -> ModelSource:
    """Decide where :func:`locate_model_dir` takes the weights from, looking at files only.

    Parameters
    ----------
    model_path : path, optional
        The configured SavedModel directory; else ``$CODEXDASK_MODEL_PATH``, else deepcell's.

    Returns
    -------
    ModelSource
    """
    explicit = model_path or os.environ.get(MODEL_PATH_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        problem = _savedmodel_problem(path)
        origin = "model_path" if model_path else f"${MODEL_PATH_ENV}"
        detail = f"{origin} {path}" + (f": {problem}" if problem else " (Keras SavedModel)")
        return ModelSource("model_path", str(path), problem is None, detail)
    models = deepcell_models_dir()
    extracted = models / MODEL_NAME
    if _savedmodel_problem(extracted) is None:
        return ModelSource("deepcell-cache", str(extracted), True, f"deepcell cache {extracted}")
    archive = models / MODEL_ARCHIVE
    notes = []
    if archive.is_file():
        digest = _md5(archive)
        if digest == MODEL_HASH:
            return ModelSource("deepcell-cache-archive", str(archive), True,
                               f"deepcell cache archive {archive} (md5 ok; extracted on first use)")
        notes.append(f"cached archive {archive} has md5 {digest}, expected {MODEL_HASH} "
                     "(partial or corrupt download; delete it)")
    if os.environ.get(TOKEN_ENV):
        note = f" ({notes[0]})" if notes else ""
        return ModelSource("download", None, True,
                           f"download through deepcell with ${TOKEN_ENV} into {models}{note}")
    return ModelSource(None, None, False, _no_weights_message(notes))


def locate_model_dir(model_path: str | os.PathLike[str] | None = None) -> Path:
    """The SavedModel directory to load, extracting or downloading deepcell's archive if needed.

    Raises
    ------
    ModelLoadError
        If no source works (the message names the three ways to provide weights), the archive
        cannot be extracted, or the download fails.
    """
    found = find_model_source(model_path)
    if not found.ok:
        raise found.error()
    models = deepcell_models_dir()
    if found.source == "deepcell-cache-archive":
        return _extract(Path(str(found.path)), models)
    if found.source == "download":
        return _extract(_download(), models)
    return Path(str(found.path))


def weights_key(model_path: str | os.PathLike[str] | None) -> str:
    """A key naming the weights ``model_path`` leads to (the loader's per-process cache key)."""
    path = model_path or os.environ.get(MODEL_PATH_ENV)
    if path:
        return str(Path(path).expanduser().resolve())
    return str(deepcell_models_dir() / MODEL_NAME)


def _no_weights_message(notes: list[str]) -> str:
    models = deepcell_models_dir()
    prefix = "; ".join(notes) + ". " if notes else ""
    return (
        f"{prefix}No Mesmer weights found. Provide them in one of three ways: "
        f"(1) set model_path (--model-path, or ${MODEL_PATH_ENV}) to a Keras SavedModel "
        f"directory; (2) put deepcell's cache in place: {models / MODEL_ARCHIVE} "
        f"(md5 {MODEL_HASH}) or its extracted {models / MODEL_NAME} directory; "
        f"(3) set ${TOKEN_ENV} (from https://users.deepcell.org) so deepcell downloads them"
    )


def _savedmodel_problem(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a SavedModel directory (extract an archive with tar xzf first)"
    if not (path / "saved_model.pb").is_file():
        return "is not a Keras SavedModel directory (no saved_model.pb inside)"
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, models: Path) -> Path:
    """Extract deepcell's archive into ``models/MultiplexSegmentation`` atomically."""
    target = models / MODEL_NAME
    models.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".codexdask-extract-", dir=models))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:  # Python < 3.10.12
                tar.extractall(scratch)
        found = [p.parent for p in scratch.rglob("saved_model.pb")]
        if not found:
            raise ModelLoadError(f"archive {archive} holds no saved_model.pb; delete it and retry")
        try:
            os.rename(found[0], target)
        except OSError:  # another worker extracted it first
            if _savedmodel_problem(target) is not None:
                raise
    except (tarfile.TarError, OSError) as exc:
        raise ModelLoadError(f"could not extract {archive} into {models}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _download() -> Path:
    """Download deepcell's archive with ``$DEEPCELL_ACCESS_TOKEN`` through deepcell's fetch_data."""
    from deepcell.utils import fetch_data

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:  # fetch_data calls logging.basicConfig(level=INFO); undo that afterwards
        return Path(fetch_data(asset_key=MODEL_KEY, cache_subdir="models", file_hash=MODEL_HASH))
    except Exception as exc:  # requests / HTTP / token errors
        raise ModelLoadError(
            f"downloading the Mesmer weights with ${TOKEN_ENV} failed ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}); check the token and network access, or use model_path"
        ) from exc
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
