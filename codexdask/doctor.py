"""``codexdask doctor``: what this environment can run, and why not.

:func:`doctor_report` collects versions, GPUs, the Mesmer weight source and the runtime it
selects (PyTorch for a converted ``.safetensors`` file, with its self-check and source checksum;
TensorFlow for a SavedModel) into a plain dict (``codexdask doctor --json`` prints it as JSON);
:func:`format_doctor` renders it for a terminal. TensorFlow and PyTorch are imported only here,
only when asked, and any failure to import them is reported, not raised.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

from codexdask.config import model_path_or_environment
from codexdask.hardware import host_free_bytes, probe_gpus
from codexdask.mesmer.weights import find_model_source

PACKAGES = ("codexdask", "numpy", "dask", "distributed", "zarr", "scikit-image", "numba",
            "torch", "safetensors", "tensorflow", "deepcell", "dask-cuda")


def doctor_report(model_path: str | None = None, *, tensorflow: bool = True,
                  torch: bool = True) -> dict[str, Any]:
    """Describe the environment.

    Parameters
    ----------
    model_path : str, optional
        The configured Mesmer ``model_path`` (else ``$CODEXDASK_MODEL_PATH`` and deepcell's cache
        are checked).
    tensorflow : bool
        Import TensorFlow to list the GPUs it sees (a few seconds); ``False`` skips it.
    torch : bool
        Import PyTorch (when installed) to list the CUDA GPUs it sees; ``False`` skips it.

    Returns
    -------
    dict
        ``python`` (str), ``platform`` (str), ``packages`` ({name: version or None}),
        ``host_memory_available_bytes`` (int), ``gpus`` (list of NVML dicts: index, name, uuid,
        total_bytes, free_bytes), ``gpu_error`` (str or None: why no GPU is listed, or the NVML
        error of one that cannot be queried), ``tensorflow_gpus`` (list of str
        or None when not checked), ``tensorflow_error`` (str or None), ``torch_gpus`` and
        ``torch_error`` (the same for PyTorch), ``mesmer_weights`` (dict: source, path, ok,
        detail, runtime ("torch" / "tensorflow" / None), runtime_ok (its package is installed),
        metadata (a converted file's: source_sha256, self_check, ...)),
        ``cuda_visible_devices`` (str or None).
    """
    probe = probe_gpus()
    tf_gpus: list[str] | None = None
    tf_error: str | None = None
    if tensorflow:
        tf_gpus, tf_error = _tensorflow_gpus()
    torch_gpus: list[str] | None = None
    torch_error: str | None = None
    if torch and importlib.util.find_spec("torch") is not None:
        torch_gpus, torch_error = _torch_gpus()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "host_memory_available_bytes": host_free_bytes(),
        "gpus": probe.gpus,
        "gpu_error": probe.problem,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tensorflow_gpus": tf_gpus,
        "tensorflow_error": tf_error,
        "torch_gpus": torch_gpus,
        "torch_error": torch_error,
        "mesmer_weights": find_model_source(model_path_or_environment(model_path)).as_dict(),
    }


def format_doctor(report: dict[str, Any]) -> str:
    """Render :func:`doctor_report`'s dict as aligned text lines."""
    lines = [f"python        {report['python']}  ({report['platform']})"]
    for name, version in report["packages"].items():
        lines.append(f"{name:<13} {version or 'not installed'}")
    lines.append(f"host memory   {report['host_memory_available_bytes'] / 2**30:.1f} GiB available")
    if report["gpus"]:
        for gpu in report["gpus"]:
            lines.append(
                f"gpu {gpu['index']:<9} {gpu['name']}: {gpu['free_bytes'] / 2**30:.1f} of "
                f"{gpu['total_bytes'] / 2**30:.1f} GiB free"
            )
    else:
        lines.append(f"gpus          none ({report['gpu_error'] or 'no NVIDIA GPU'})")
    if report.get("cuda_visible_devices") is not None:
        lines.append(f"CUDA_VISIBLE_DEVICES={report['cuda_visible_devices']}")
    if report["tensorflow_error"]:
        lines.append(f"tensorflow    unusable: {report['tensorflow_error']}")
    elif report["tensorflow_gpus"] is not None:
        seen = ", ".join(report["tensorflow_gpus"]) or "none (Mesmer runs on CPU)"
        lines.append(f"tf gpus       {seen}")
    if report.get("torch_error"):
        lines.append(f"torch         unusable: {report['torch_error']}")
    elif report.get("torch_gpus") is not None:
        seen = ", ".join(report["torch_gpus"]) or "none (PyTorch runs on CPU)"
        lines.append(f"torch gpus    {seen}")
    weights = report["mesmer_weights"]
    status = "ok" if weights["ok"] else "MISSING"
    lines.append(f"mesmer weights {status}: {weights['detail']}")
    if weights.get("runtime"):
        installed = "installed" if weights["runtime_ok"] else "NOT installed here"
        lines.append(f"mesmer runtime {weights['runtime']} ({installed})")
    metadata = weights.get("metadata") or {}
    if metadata:
        lines.append(f"converted     from {metadata.get('source_name', '?')} "
                     f"({metadata.get('source_kind', '?')}), sha256 "
                     f"{metadata.get('source_sha256', '?')}")
        lines.append(f"self-check    {_self_check_line(metadata.get('self_check'))}")
    return "\n".join(lines)


def _self_check_line(check: Any) -> str:
    """One line for a converted file's self-check record."""
    if not isinstance(check, dict):
        return "not recorded"
    if not check.get("ran"):
        return f"not run ({check.get('reason', 'no reason recorded')})"
    diffs = check.get("max_abs_diff", {})
    worst = max(diffs.values(), default=float("nan"))
    return (f"PyTorch vs TensorFlow max abs diff {worst:.2e} over {len(diffs)} maps "
            f"(limit {check.get('tolerance', '?')})")


def _version(name: str) -> str | None:
    if name == "codexdask":  # the code that runs, not an editable install's stale metadata
        from codexdask._version import __version__

        return __version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_gpus() -> tuple[list[str] | None, str | None]:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _tensorflow_gpus() -> tuple[list[str] | None, str | None]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the report readable
    try:
        import tensorflow as tf
    except Exception as exc:  # ImportError, or a broken CUDA/protobuf install
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        return [gpu.name for gpu in tf.config.list_physical_devices("GPU")], None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
