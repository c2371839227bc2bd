"""codexdask.mesmer's whole-image functions give identical bytes in both environments.

The test fingerprints every function's output on fixed inputs here and in a second Python
environment (``$CODEXDASK_REFERENCE_PYTHON``, for example the reference environment's python
when the tests run in the main one) and compares the fingerprints. Without the variable the
test is skipped, unless ``CODEXDASK_REQUIRE_REFERENCE=1``, which makes it fail instead.

Run as a script, this file prints the fingerprints as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()[:24]


def fingerprints() -> dict[str, str]:
    """SHA-256 prefixes of every whole-image function's output on fixed inputs."""
    from codexdask.mesmer.normalisation import whole_image_statistics
    from codexdask.mesmer.preprocess import (
        histogram_normalization,
        mesmer_preprocess,
        percentile_threshold,
    )
    from codexdask.mesmer.resize import resize_image, resize_labels, resized_shape
    from codexdask.mesmer.tiling import tile_image, untile_image
    from codexdask.synthetic import synthetic_slide

    rng = np.random.default_rng(2026)
    images = {
        "tissue_u16": synthetic_slide(300, 257, seed=3).two_channel(),
        "gamma_u8": (rng.gamma(0.8, 40.0, (211, 190, 2))).astype(np.uint8),
        "gamma_f32": rng.gamma(0.8, 40.0, (190, 263, 2)).astype(np.float32),
        "normal_f64": rng.standard_normal((129, 140, 2)) * 1e3,
        "signed_i16": rng.integers(-3000, 3000, (100, 120, 2)).astype(np.int16),
    }
    out: dict[str, str] = {}
    for name, image in images.items():
        stats = whole_image_statistics(image)
        out[f"{name}/clip_value"] = _digest(stats.clip_value)
        out[f"{name}/percentile_threshold"] = _digest(percentile_threshold(image))
        out[f"{name}/mesmer_preprocess"] = _digest(mesmer_preprocess(image))
        out[f"{name}/mesmer_preprocess_k37"] = _digest(mesmer_preprocess(image, kernel_size=37))
        out[f"{name}/histogram_normalization"] = _digest(histogram_normalization(image))
        for mpp in (0.25, 0.377, 0.45, 2.0):
            size = resized_shape(image.shape[:2], mpp)
            out[f"{name}/resize_{mpp}"] = _digest(resize_image(image, size))
    preprocessed = mesmer_preprocess(images["tissue_u16"])
    for mode in ("constant", "reflect"):
        tiles, grid = tile_image(preprocessed, pad_mode=mode)
        outputs = rng.random(tiles.shape[:3] + (3,), dtype=np.float32)
        out[f"tiles_{mode}"] = _digest(tiles)
        out[f"untile_{mode}"] = _digest(untile_image(outputs, grid))
    labels = rng.integers(0, 500, (150, 131, 2))
    for channels in (1, 2):
        out[f"labels_{channels}"] = _digest(resize_labels(labels[..., :channels], (301, 262)))
    return out


def test_identical_bytes_in_the_other_environment() -> None:
    import pytest

    python = os.environ.get("CODEXDASK_REFERENCE_PYTHON")
    if not python:
        reason = ("set CODEXDASK_REFERENCE_PYTHON to the other environment's python "
                  "(e.g. /work/main/.venv/bin/python) to compare bytes across environments")
        if os.environ.get("CODEXDASK_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([python, str(Path(__file__).resolve())], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    ours = fingerprints()
    assert sorted(theirs) == sorted(ours)
    differing = sorted(name for name in ours if ours[name] != theirs[name])
    assert not differing, f"outputs differ between environments: {differing}"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(fingerprints()))
