"""Convert deepcell's Mesmer model to a PyTorch ``.safetensors`` file, with a self-check.

``codexdask convert-model SRC --out FILE.safetensors`` (:func:`main`) accepts

- deepcell's ``MultiplexSegmentation`` SavedModel directory, or its ``.tar.gz`` archive
  (``MultiplexSegmentation-9.tar.gz``): reading either needs TensorFlow, which runs in a
  TensorFlow environment (deepcell's: Python 3.10, TensorFlow 2.8) through a subprocess when this
  process cannot import it (:mod:`codexdask.mesmer.tf_export`, run there as a file, writes the
  exchange ``.npz``);
- a Keras H5 export of it (``model.save("mesmer.h5")``): read with h5py alone.

Every source's layer graph is checked against Mesmer's (:func:`codexdask.mesmer.graph.
check_keras_graph`) and refused if it differs. The self-check runs fixed probe tiles
(:func:`probe_tiles`) through TensorFlow and through the converted PyTorch network (float32, CPU)
and records the largest absolute difference per map; a difference above ``tolerance`` (1e-4)
refuses the conversion. An H5 source converted where no TensorFlow is reachable is written with
``self_check.ran = false`` and the reason. TensorFlow runs with ``CUDA_VISIBLE_DEVICES=""`` (on
CPU): TensorFlow 2.8 has no kernels for recent GPUs.

The output's metadata (string values): ``architecture``, ``architecture_version``,
``source_name``, ``source_kind``, ``source_sha256`` (and ``source_md5`` for files, comparable to
deepcell's ``MODEL_HASH``), ``self_check`` (JSON), ``tile_shape``, ``maps``, ``converter``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codexdask._version import __version__
from codexdask.errors import CodexDaskError, ModelLoadError
from codexdask.mesmer import graph
from codexdask.mesmer.graph import probe_tiles

#: Environment variable naming the python of a TensorFlow environment.
TENSORFLOW_PYTHON_ENV = "CODEXDASK_TENSORFLOW_PYTHON"
#: Conversions whose self-check differs by more than this (absolute, any map) are refused.
TOLERANCE = 1e-4
#: Seconds the TensorFlow subprocess may take (loading TensorFlow and the model, two probe tiles).
TENSORFLOW_TIMEOUT = 900
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: Runs the script named by the first argument as __main__ without putting its folder on sys.path.
_RUN_SCRIPT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], " \
              "run_name='__main__')"


def convert_model(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  tensorflow_python: str | None = None, tolerance: float = TOLERANCE
                  ) -> dict[str, str]:
    """Convert Mesmer's Keras model at ``src`` into ``out`` (``.safetensors``).

    Parameters
    ----------
    src : path-like
        SavedModel directory, its ``.tar.gz``, or a Keras H5 file.
    out : path-like
        File to write; written to a temporary name in the same folder and renamed.
    tensorflow_python : str, optional
        Python of a TensorFlow environment, used when this process cannot import TensorFlow.
        Default: ``$CODEXDASK_TENSORFLOW_PYTHON``, else ``.venv-deepcell/bin/python`` of the
        project checkout if it exists.
    tolerance : float
        Largest accepted self-check difference.

    Returns
    -------
    dict of str to str
        The metadata written into ``out``.

    Raises
    ------
    ModelLoadError
        ``src`` is missing, not a Mesmer graph, a truncated archive, needs TensorFlow that cannot
        be found, or fails the self-check.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    kind = source_kind(src)
    python = tensorflow_environment(tensorflow_python)
    metadata = {"architecture": graph.ARCHITECTURE,
                "architecture_version": graph.ARCHITECTURE_VERSION,
                "source_name": src.name, "source_kind": kind, **checksums(src),
                "tile_shape": ",".join(map(str, graph.INPUT_SHAPE)),
                "maps": ",".join(graph.MAP_NAMES)}
    probe = probe_tiles()
    with tempfile.TemporaryDirectory(prefix="codexdask-convert-") as scratch:
        reference, info = None, {}
        reason = ("no TensorFlow in this process and no TensorFlow environment found "
                  f"(--tensorflow-python or ${TENSORFLOW_PYTHON_ENV})")
        if kind == "h5":
            model_config, weights = read_h5(src)
            graph.check_keras_graph(model_config)
            if python is not None:
                exchange = run_tensorflow_export(src, Path(scratch), probe, python,
                                                 with_weights=False)
                reference, info = exchange["outputs"], exchange["info"]
        else:
            model_dir = extract_archive(src, Path(scratch)) if kind == "archive" else src
            if python is None:
                raise ModelLoadError(_no_tensorflow_message(src))
            exchange = run_tensorflow_export(model_dir, Path(scratch), probe, python)
            graph.check_keras_graph(exchange["graph"])
            weights, reference, info = exchange["weights"], exchange["outputs"], exchange["info"]
        state = graph.torch_state_dict(weights)
        torch, network = _torch_network()
        metadata["converter"] = f"codexdask {__version__}, torch {torch.__version__}"
        net = network.MesmerNet()
        net.load_state_dict({name: torch.from_numpy(v) for name, v in state.items()})
        if reference is None:
            check: dict[str, Any] = {"ran": False, "reason": reason}
        else:
            maps = network.predict_maps(network.to_channels_last(net), probe, "fp32")
            diffs = {name: float(np.abs(maps[..., i] - reference[..., i]).max())
                     for i, name in enumerate(graph.MAP_NAMES)}
            check = {"ran": True, "max_abs_diff": diffs, "tolerance": tolerance,
                     "probe": "codexdask.mesmer.graph.probe_tiles() (2 tiles 256x256)",
                     "torch": "float32 on CPU", **info}
            worst = max(diffs.values())
            if not worst <= tolerance:
                per_map = ", ".join(f"{name} {value:.2e}" for name, value in diffs.items())
                raise ModelLoadError(
                    f"self-check failed: PyTorch and TensorFlow differ by up to {worst:.2e} on "
                    f"the probe tiles (limit {tolerance:.0e}; {per_map}); the file was not "
                    "written. Report this with the model's source checksum "
                    f"{metadata['source_sha256']}")
        metadata["self_check"] = json.dumps(check)
        write_safetensors(state, metadata, out)
    return metadata


def source_kind(src: Path) -> str:
    """``"savedmodel"``, ``"archive"`` or ``"h5"``; :class:`ModelLoadError` for anything else."""
    if not src.exists():
        raise ModelLoadError(f"model source {src} does not exist: give deepcell's "
                             "MultiplexSegmentation directory, its .tar.gz, or a Keras .h5 file")
    if src.is_dir():
        if (src / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{src} is a directory without saved_model.pb, so not a Keras "
                             "SavedModel (deepcell extracts it to ~/.deepcell/models/"
                             "MultiplexSegmentation)")
    with open(src, "rb") as handle:
        magic = handle.read(8)
    if magic[:2] == b"\x1f\x8b":
        return "archive"
    if magic == b"\x89HDF\r\n\x1a\n":
        return "h5"
    raise ModelLoadError(f"{src} is neither a gzip archive nor an HDF5 file")


def checksums(src: Path) -> dict[str, str]:
    """``source_sha256`` of a file (and ``source_md5``) or of a directory's files.

    A directory's digest is the sha256 of ``relative path NUL file sha256 NUL`` over its files in
    sorted path order.
    """
    if src.is_file():
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with open(src, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
                md5.update(block)
        return {"source_sha256": sha.hexdigest(), "source_md5": md5.hexdigest()}
    digest = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0")
        digest.update(checksums(path)["source_sha256"].encode() + b"\0")
    return {"source_sha256": digest.hexdigest()}


def extract_archive(archive: Path, scratch: Path) -> Path:
    """Extract a SavedModel ``.tar.gz`` into ``scratch``; return the SavedModel directory."""
    target = scratch / "archive"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile()
                                                                     or member.isdir()):
                    raise ModelLoadError(f"{archive} holds an unsafe entry {member.name!r}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.10.12+
            tar.extractall(target, members=members, **safe)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ModelLoadError(f"{archive} is truncated or not a .tar.gz archive ({exc}); download "
                             "it again (deepcell's MultiplexSegmentation-9.tar.gz has md5 "
                             "a1dfbce2594f927b9112f23a0a1739e0)") from exc
    found = sorted(p.parent for p in target.rglob("saved_model.pb"))
    if len(found) != 1:
        raise ModelLoadError(f"{archive} holds {len(found)} SavedModels, expected one "
                             "(MultiplexSegmentation/saved_model.pb)")
    return found[0]


def read_h5(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """A Keras 2 H5 model file's JSON configuration and weights, read with h5py.

    Returns
    -------
    model_config : dict
        The ``model_config`` attribute, parsed.
    weights : dict
        Layer name -> {weight name (``"kernel"`` ...) -> float32 array in Keras layout}.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            group = h5.get("model_weights")
            if raw is None or group is None:
                raise ModelLoadError(f"{path} is not a whole Keras model saved as H5 (no "
                                     "model_config / model_weights); save it with "
                                     "model.save('mesmer.h5') in deepcell's environment")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            weights: dict[str, dict[str, np.ndarray]] = {}
            for layer in group:
                names = group[layer].attrs.get("weight_names", [])
                for name in names:
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    short = name.split(":")[0].split("/")[-1]
                    weights.setdefault(layer, {})[short] = np.asarray(group[layer][name],
                                                                      np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the Keras H5 file {path}: {exc}") from exc
    return config, weights


def tensorflow_environment(option: str | None = None) -> str | None:
    """How to reach TensorFlow: ``""`` (this process), a python path, or None (not found).

    Order: ``option``; ``$CODEXDASK_TENSORFLOW_PYTHON``; this process if it imports TensorFlow;
    ``.venv-deepcell/bin/python`` in the project checkout.
    """
    for candidate in (option, os.environ.get(TENSORFLOW_PYTHON_ENV)):
        if candidate:
            if not Path(candidate).is_file():
                raise ModelLoadError(f"TensorFlow python {candidate!r} does not exist; give the "
                                     "python of deepcell's environment, e.g. "
                                     ".venv-deepcell/bin/python")
            return candidate
    if importlib.util.find_spec("tensorflow") is not None:
        return ""
    default = _PACKAGE_ROOT / ".venv-deepcell" / "bin" / "python"
    return str(default) if default.is_file() else None


def run_tensorflow_export(src: Path, scratch: Path, probe: np.ndarray, python: str, *,
                          with_weights: bool = True) -> dict[str, Any]:
    """Run :mod:`codexdask.mesmer.tf_export` on ``src`` and read its exchange file.

    Returns
    -------
    dict
        ``graph`` (Keras config dict), ``weights`` (layer -> name -> array, empty when
        ``with_weights`` is false), ``outputs`` ``(N, H, W, 4)`` float32 maps (whole-cell inner
        distance and interior, nuclear inner distance and interior), ``info`` (dict).
    """
    probe_file, exchange = scratch / "probe.npy", scratch / "exchange.npz"
    np.save(probe_file, probe)
    args = [str(src), str(exchange), "--probe", str(probe_file)]
    if not with_weights:
        args.append("--outputs-only")
    if python == "":
        from codexdask.mesmer import tf_export
        try:
            tf_export.main(args)
        except Exception as exc:  # TensorFlow raises many kinds; all mean "cannot read it"
            raise ModelLoadError(f"TensorFlow could not read {src}: {exc}") from exc
    else:
        # tf_export.py needs only numpy and TensorFlow, so it runs as a file: the TensorFlow
        # environment does not need codexdask installed, and nothing of this environment
        # (another Python, numpy 2) is put on its path.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        script = Path(__file__).with_name("tf_export.py")
        command = [python, "-c", _RUN_SCRIPT, str(script), *args]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=TENSORFLOW_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelLoadError(f"could not run TensorFlow through {python}: {exc}") from exc
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise ModelLoadError(f"TensorFlow ({python}) could not read {src}:\n{tail}")
    return read_exchange(exchange)


def read_exchange(path: Path) -> dict[str, Any]:
    """Parse the ``.npz`` written by :mod:`codexdask.mesmer.tf_export` (see there)."""
    with np.load(path, allow_pickle=False) as data:
        weights: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            if key.startswith("weight/"):
                _, layer, name = key.split("/")
                weights.setdefault(layer, {})[name] = data[key]
        outputs = {key.split("/", 1)[1]: data[key] for key in data.files
                   if key.startswith("output/")}
        taps = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith("tap/")}
        result = {"graph": json.loads(str(data["graph"])), "weights": weights, "taps": taps,
                  "info": json.loads(str(data["info"]))}
    missing = [name for name in graph.OUTPUT_LAYERS if name not in outputs]
    if missing:
        raise ModelLoadError(f"TensorFlow returned no output {missing[0]!r}: not Mesmer's model")
    result["outputs"] = mesmer_maps([outputs[name] for name in graph.OUTPUT_LAYERS])
    return result


def mesmer_maps(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The 4 maps Mesmer uses from the model's 4 outputs: ``(N, H, W, 4)`` float32.

    Inner distances are outputs 0 and 2; interiors are channel 1 of the softmax outputs 1 and 3.
    """
    return np.concatenate([outputs[0][..., :1], outputs[1][..., 1:2], outputs[2][..., :1],
                           outputs[3][..., 1:2]], axis=-1).astype(np.float32)


def write_safetensors(state: dict[str, np.ndarray], metadata: dict[str, str], out: Path) -> None:
    """Write ``state`` with ``metadata`` to ``out`` atomically (temporary name, then rename)."""
    from safetensors.numpy import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        # C order explicitly: safetensors stores raw buffers, and a channels-last tensor's
        # numpy view is not C-contiguous
        save_file({name: np.ascontiguousarray(value) for name, value in state.items()},
                  str(partial), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # readable like any file the user writes
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def save_network(net: Any, out: str | os.PathLike[str], *, source_name: str = "pytorch"
                 ) -> dict[str, str]:
    """Write a PyTorch ``MesmerNet``'s weights as a converted file (e.g. ``random_network``).

    For tests and benchmarks: the file loads like a converted one, its ``source_kind`` is
    ``"pytorch"``, ``source_sha256`` covers the tensors (name, then bytes, in name order) and
    ``self_check.ran`` is false (there is no TensorFlow source to compare with).
    """
    torch, _ = _torch_network()
    state = {name: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
             for name, t in net.state_dict().items()}
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + b"\0" + state[name].tobytes())
    metadata = {"architecture": graph.ARCHITECTURE,
                "architecture_version": graph.ARCHITECTURE_VERSION,
                "source_name": source_name, "source_kind": "pytorch",
                "source_sha256": digest.hexdigest(),
                "tile_shape": ",".join(map(str, graph.INPUT_SHAPE)),
                "maps": ",".join(graph.MAP_NAMES),
                "converter": f"codexdask {__version__}, torch {torch.__version__}",
                "self_check": json.dumps({"ran": False, "reason": "written from a PyTorch "
                                          "network: no TensorFlow source to compare with"})}
    write_safetensors(state, metadata, Path(out).expanduser())
    return metadata


def _torch_network() -> tuple[Any, Any]:
    """``torch`` and :mod:`codexdask.mesmer.network`, or a :class:`ModelLoadError` saying why."""
    try:
        import torch

        from codexdask.mesmer import network
    except ImportError as exc:
        raise ModelLoadError(f"converting needs PyTorch ({exc}): run convert-model in the main "
                             "environment; TensorFlow is reached through --tensorflow-python"
                             ) from exc
    return torch, network


def _no_tensorflow_message(src: Path) -> str:
    return (f"reading the SavedModel {src} needs TensorFlow, which this process cannot import. "
            "Give the python of deepcell's environment (Python 3.10, deepcell 0.12.10, "
            f"TensorFlow 2.8) with --tensorflow-python PATH or ${TENSORFLOW_PYTHON_ENV}, or run "
            "`make` to create .venv-deepcell; or, in that environment, save the model as H5 "
            "(tf.keras.models.load_model(dir).save('mesmer.h5')) and convert the .h5 file here")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convert-model`` command's arguments (for the ``codexdask`` CLI)."""
    parser.add_argument("src", help="deepcell's MultiplexSegmentation SavedModel directory, its "
                                    ".tar.gz, or a Keras .h5 export")
    parser.add_argument("--out", required=True, help="converted weights to write, FILE.safetensors")
    parser.add_argument("--tensorflow-python", help="python of a TensorFlow environment "
                        f"(default ${TENSORFLOW_PYTHON_ENV}, then .venv-deepcell/bin/python)")


def command(args: argparse.Namespace) -> int:
    """Run ``convert-model`` for parsed ``args``; print a summary; return 0."""
    metadata = convert_model(args.src, args.out, tensorflow_python=args.tensorflow_python)
    check = json.loads(metadata["self_check"])
    print(f"wrote {args.out} (source {metadata['source_kind']} sha256 "
          f"{metadata['source_sha256'][:16]}...)")
    if check["ran"]:
        print("self-check, max abs difference PyTorch vs TensorFlow: " + ", ".join(
            f"{name} {value:.2g}" for name, value in check["max_abs_diff"].items()))
    else:
        print(f"self-check not run: {check['reason']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m codexdask.mesmer.convert SRC --out FILE.safetensors``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="codexdask convert-model",
                                     description="Convert Mesmer's Keras model to PyTorch.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command(args)
    except CodexDaskError as exc:
        print(f"codexdask convert-model: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
