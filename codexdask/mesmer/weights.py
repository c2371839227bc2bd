"""Where Mesmer's weights come from: one decision, used by the loader, ``doctor`` and the errors.

Sources, in this order (:func:`find_model_source`):

1. ``model_path`` (``--model-path``, the ``model_path:`` key, else ``$CODEXDASK_MODEL_PATH``, which
   only :mod:`codexdask.config` reads):
   a converted ``.safetensors`` file (``codexdask convert-model``), run on PyTorch; or a Keras
   SavedModel directory (the one holding ``saved_model.pb``) or deepcell's ``.tar.gz`` archive of
   it, run on TensorFlow;
2. deepcell's cache ``~/.deepcell/models``: the extracted ``MultiplexSegmentation`` directory, or
   deepcell's archive ``MultiplexSegmentation-9.tar.gz`` (md5-checked, extracted on first use);
   TensorFlow;
3. a download through deepcell when ``$DEEPCELL_ACCESS_TOKEN`` is set (where deepcell is
   installed); TensorFlow.

The weights choose the runtime (:attr:`ModelSource.runtime`): a converted file runs on PyTorch,
everything else on TensorFlow. If no source is there, the error names every way to provide
weights. Nothing here imports TensorFlow or PyTorch; deepcell is imported only to download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from codexdask.config import MODEL_PATH_ENV
from codexdask.errors import ModelLoadError
from codexdask.mesmer.graph import ARCHITECTURE, ARCHITECTURE_VERSION

__all__ = [
    "MODEL_ARCHIVE",
    "MODEL_HASH",
    "MODEL_KEY",
    "MODEL_NAME",
    "RUNTIMES",
    "TOKEN_ENV",
    "ModelSource",
    "deepcell_models_dir",
    "find_model_source",
    "locate_model_dir",
    "read_safetensors_metadata",
    "runtime_available",
    "weights_key",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

#: deepcell's asset for the Mesmer weights (``deepcell.applications.mesmer`` constants).
MODEL_NAME = "MultiplexSegmentation"
MODEL_ARCHIVE = "MultiplexSegmentation-9.tar.gz"
MODEL_KEY = "models/" + MODEL_ARCHIVE
MODEL_HASH = "a1dfbce2594f927b9112f23a0a1739e0"
#: deepcell's download token.
TOKEN_ENV = "DEEPCELL_ACCESS_TOKEN"
#: The two runtimes and the module each needs.
RUNTIMES = {"torch": "torch", "tensorflow": "tensorflow"}
#: How to make a converted file, for messages.
CONVERT_HINT = ("`codexdask convert-model SRC --out mesmer.safetensors` (SRC: deepcell's "
                f"{MODEL_NAME} directory or {MODEL_ARCHIVE})")
_GZIP_MAGIC = b"\x1f\x8b"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not one of ours


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the weights would be taken from (nothing loaded, nothing downloaded).

    Attributes
    ----------
    source : str or None
        ``"model_path"``, ``"deepcell-cache"``, ``"deepcell-cache-archive"``, ``"download"``, or
        ``None`` when no source works.
    path : str or None
        The file, directory or archive, when there is one.
    ok : bool
        Whether the weights are there (the runtime they need may still be missing:
        :attr:`runtime_ok`).
    detail : str
        One line for people: the source, or what is wrong and the ways to fix it.
    runtime : str or None
        ``"torch"`` for a converted ``.safetensors`` file, ``"tensorflow"`` for the others.
    runtime_ok : bool
        Whether that runtime's package is installed in this environment.
    metadata : dict or None
        A converted file's metadata: ``source_sha256``, ``architecture_version``,
        ``self_check`` (parsed JSON) and the rest of what ``convert-model`` wrote.
    """

    source: str | None
    path: str | None
    ok: bool
    detail: str
    runtime: str | None = None
    runtime_ok: bool = False
    metadata: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``codexdask doctor --json``)."""
        return dataclasses.asdict(self)

    def error(self) -> ModelLoadError:
        """The error to raise when :attr:`ok` is false, saying how to provide the weights."""
        if self.source == "model_path":
            return ModelLoadError(
                f"Mesmer {self.detail}; point model_path at converted weights for PyTorch (a "
                f".safetensors file made with {CONVERT_HINT}) or, where TensorFlow 2.8 and "
                "deepcell are installed, at a Keras SavedModel directory (the one holding "
                f"saved_model.pb) or deepcell's {MODEL_ARCHIVE}"
            )
        return ModelLoadError(self.detail)


def deepcell_models_dir() -> Path:
    """deepcell's model cache, ``~/.deepcell/models``."""
    return Path.home() / ".deepcell" / "models"


def runtime_available(runtime: str | None) -> bool:
    """Whether the package ``runtime`` needs can be imported here (looked up, not imported)."""
    module = RUNTIMES.get(runtime or "")
    return module is not None and importlib.util.find_spec(module) is not None


def find_model_source(model_path: str | os.PathLike[str] | None = None) -> ModelSource:
    """Decide where the weights are taken from, and so the runtime, looking at files only.

    Parameters
    ----------
    model_path : path, optional
        The configured weights (file, directory or archive), ``$CODEXDASK_MODEL_PATH`` already
        applied (:func:`codexdask.config.model_path_or_environment`); else deepcell's cache and
        download.

    Returns
    -------
    ModelSource
    """
    if model_path:
        return _explicit_source(Path(model_path).expanduser(), "model_path")
    models = deepcell_models_dir()
    extracted = models / MODEL_NAME
    if _savedmodel_problem(extracted) is None:
        return _tensorflow_source("deepcell-cache", extracted, f"deepcell cache {extracted}")
    archive = models / MODEL_ARCHIVE
    notes = []
    if archive.is_file():
        digest = _md5(archive)
        if digest == MODEL_HASH:
            return _tensorflow_source(
                "deepcell-cache-archive", archive,
                f"deepcell cache archive {archive} (md5 ok; extracted on first use)")
        notes.append(f"cached archive {archive} has md5 {digest}, expected {MODEL_HASH} "
                     "(partial or corrupt download; delete it)")
    if os.environ.get(TOKEN_ENV):
        if importlib.util.find_spec("deepcell") is not None:
            note = f" ({notes[0]})" if notes else ""
            detail = f"download through deepcell with ${TOKEN_ENV} into {models}{note}"
            return _tensorflow_source("download", None, detail)
        notes.append(f"${TOKEN_ENV} is set but deepcell is not installed here: download the "
                     "weights in deepcell's environment and convert them")
    return ModelSource(None, None, False, _no_weights_message(notes))


def _tensorflow_source(source: str, path: Path | None, detail: str) -> ModelSource:
    ok = runtime_available("tensorflow")
    if not ok:
        detail += (f"; runs on TensorFlow, which is not installed here: convert it with "
                   f"{CONVERT_HINT} and set model_path to the file")
    return ModelSource(source, None if path is None else str(path), True, detail,
                       "tensorflow", ok)


def _explicit_source(path: Path, origin: str) -> ModelSource:
    """The source for a configured ``model_path``: a converted file, a SavedModel, an archive."""
    head = f"{origin} {path}"
    if not path.exists():
        return ModelSource("model_path", str(path), False, f"{head}: does not exist")
    if path.is_dir():
        problem = _savedmodel_problem(path)
        if problem is not None:
            return ModelSource("model_path", str(path), False, f"{head}: {problem}")
        return _tensorflow_source("model_path", path, f"{head} (Keras SavedModel)")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic[:2] == _GZIP_MAGIC:
        return _tensorflow_source("model_path", path,
                                  f"{head} (SavedModel archive; extracted on first use)")
    if magic == _HDF5_MAGIC:
        return ModelSource("model_path", str(path), False,
                           f"{head}: is a Keras H5 file, which is not loaded directly; convert "
                           "it with `codexdask convert-model FILE.h5 --out mesmer.safetensors`")
    try:
        metadata = read_safetensors_metadata(path)
    except ModelLoadError as exc:
        return ModelSource("model_path", str(path), False, f"{head}: {exc}")
    problem = _converted_problem(metadata)
    if problem is not None:
        return ModelSource("model_path", str(path), False, f"{head}: {problem}")
    ok = runtime_available("torch")
    check = metadata.get("self_check", {})
    if isinstance(check, dict) and check.get("ran"):
        worst = max(check.get("max_abs_diff", {}).values(), default=float("nan"))
        verdict = f"self-check max abs diff {worst:.1e}"
    else:
        verdict = "self-check not run"
    detail = (f"{head} (converted weights for PyTorch; source sha256 "
              f"{str(metadata.get('source_sha256', '?'))[:16]}..., {verdict})")
    if not ok:
        detail += "; PyTorch is not installed here: install torch or use the main environment"
    return ModelSource("model_path", str(path), True, detail, "torch", ok, metadata)


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file, read with the standard library only.

    A safetensors file starts with the length of its JSON header (8 bytes, little-endian); the
    header's ``__metadata__`` holds string values. ``self_check`` (JSON written by
    ``convert-model``) is returned parsed.

    Raises
    ------
    ModelLoadError
        If the file is not a safetensors file.
    """
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            if not 2 <= size <= _MAX_HEADER:
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(size).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"is neither converted weights (.safetensors), a SavedModel directory nor deepcell's "
            f".tar.gz archive ({exc})") from None
    metadata: dict[str, Any] = dict(header.get("__metadata__") or {})
    if isinstance(metadata.get("self_check"), str):
        try:
            metadata["self_check"] = json.loads(metadata["self_check"])
        except ValueError:
            pass
    return metadata


def _converted_problem(metadata: dict[str, Any]) -> str | None:
    if metadata.get("architecture") != ARCHITECTURE:
        return ("is a safetensors file but not Mesmer weights converted by codexdask "
                f"(architecture {metadata.get('architecture')!r}); make one with {CONVERT_HINT}")
    if metadata.get("architecture_version") != ARCHITECTURE_VERSION:
        return (f"was converted for architecture version "
                f"{metadata.get('architecture_version')!r}, this codexdask needs "
                f"{ARCHITECTURE_VERSION}: convert the original model again")
    return None


def locate_model_dir(found: ModelSource | str | os.PathLike[str] | None = None) -> Path:
    """The SavedModel directory to load on TensorFlow, extracting or downloading if needed.

    ``found`` is :func:`find_model_source`'s answer, or the ``model_path`` to ask it about.

    Raises
    ------
    ModelLoadError
        If no source works (the message names every way to provide weights), the source is a
        converted file (it runs on PyTorch), the archive cannot be extracted, or the download
        fails.
    """
    if not isinstance(found, ModelSource):
        found = find_model_source(found)
    if not found.ok:
        raise found.error()
    if found.runtime != "tensorflow":
        raise ModelLoadError(f"{found.path} holds converted weights for PyTorch, not a Keras "
                             "SavedModel; TensorFlow cannot load it")
    models = deepcell_models_dir()
    if found.source == "deepcell-cache-archive":
        return _extract(Path(str(found.path)), models)
    if found.source == "download":
        return _extract(_download(), models)
    path = Path(str(found.path))
    if path.is_file():  # an archive given as model_path: extracted once per machine
        target = Path(tempfile.gettempdir()) / "codexdask-models" / _md5(path)
        if _savedmodel_problem(target / MODEL_NAME) is None:
            return target / MODEL_NAME
        return _extract(path, target)
    return path


def weights_key(found: ModelSource) -> str:
    """A key naming the weights of ``found`` (the loaders' per-process cache key)."""
    if found.path:
        return str(Path(found.path).expanduser().resolve())
    return str(deepcell_models_dir() / MODEL_NAME)


def weights_sha256(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-256 of a weights file, or of a directory's files (relative path and bytes of each,
    in sorted order); ``None`` for no path."""
    if path is None:
        return None
    root = Path(path).expanduser()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(2**24), b""):
                digest.update(block)
    return digest.hexdigest()


def _no_weights_message(notes: list[str]) -> str:
    models = deepcell_models_dir()
    prefix = "; ".join(notes) + ". " if notes else ""
    return (
        f"{prefix}No Mesmer weights found. Provide them in one of three ways: "
        f"(1) set model_path (--model-path, or ${MODEL_PATH_ENV}) to converted weights for "
        f"PyTorch, a .safetensors file made with {CONVERT_HINT}, or, where TensorFlow 2.8 and "
        f"deepcell are installed, to a Keras SavedModel directory or deepcell's {MODEL_ARCHIVE}; "
        f"(2) put deepcell's cache in place (TensorFlow environment): {models / MODEL_ARCHIVE} "
        f"(md5 {MODEL_HASH}) or its extracted {models / MODEL_NAME} directory; "
        f"(3) set ${TOKEN_ENV} (from https://users.deepcell.org) so deepcell downloads them "
        "(TensorFlow environment; convert them afterwards to run on PyTorch)"
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
