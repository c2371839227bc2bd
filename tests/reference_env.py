"""TensorFlow reference fixtures for the PyTorch Mesmer, built in the reference environment.

The main environment has PyTorch and no TensorFlow; the reference environment (Python 3.10,
deepcell 0.12.10, TensorFlow 2.8) has TensorFlow and no PyTorch. They meet through files:

- Run as a script in the reference environment,
  ``python tests/reference_env.py OUT --seeds 0 1 2`` builds, per seed, the random-weight Mesmer of
  ``conftest.build_random_mesmer`` (the heads rescaled so that cells are found), saves it as a
  SavedModel (``OUT/seed<k>/MultiplexSegmentation``) and as H5 (``OUT/seed<k>/mesmer.h5``), and
  writes ``OUT/seed<k>/reference.npz``: the network input ``tiles`` (N, 256, 256, 2) float32, their
  ``names``, TensorFlow's four Mesmer ``maps`` (N, 256, 256, 4) and, for the first two tiles, the
  activations of :data:`STAGE_TAPS` as ``tap/<layer>``. The tiles are the same for every seed:
  synthetic tissue (``conftest.tissue_batch``) and crops of the real images in
  ``../shared/real_data`` (when present), all pre-processed by deepcell's ``mesmer_preprocess``,
  plus an all-zero and an all-one tile.
- In the main environment, the session fixture :func:`reference_models` runs that script with the
  python in ``$CODEXDASK_REFERENCE_PYTHON`` and returns one :class:`ReferenceModel` per seed.
  Without the variable the tests that use it skip, unless ``$CODEXDASK_REQUIRE_REFERENCE=1``, in
  which case they fail. ``$CODEXDASK_REFERENCE_CACHE`` names a folder to keep the models in
  between sessions (rebuilt when the seeds or this file change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
REFERENCE_PYTHON_ENV = "CODEXDASK_REFERENCE_PYTHON"
REQUIRE_ENV = "CODEXDASK_REQUIRE_REFERENCE"
CACHE_ENV = "CODEXDASK_REFERENCE_CACHE"
#: Layers compared one by one: the stem, each ResNet stage's output, the pyramid, each head.
STAGE_TAPS = ("conv_channels", "conv1_relu", "pool1_pool", "conv2_block3_out", "conv3_block4_out",
              "conv4_block6_out", "conv5_block3_out", "P1", "semantic_0", "semantic_1",
              "semantic_2", "semantic_3")
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "real_data"
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ReferenceModel:
    """One random-weight Mesmer saved by TensorFlow, with TensorFlow's outputs on fixed tiles."""

    seed: int
    savedmodel: Path
    h5: Path
    tiles: np.ndarray  # (N, 256, 256, 2) float32 network inputs
    names: tuple[str, ...]  # where each tile comes from
    maps: np.ndarray  # (N, 256, 256, 4) float32, TensorFlow
    taps: dict[str, np.ndarray]  # layer -> (2, h, w, c) activations of the first two tiles


# ----------------------------------------------------------------------------- reference side
def reference_tiles() -> tuple[np.ndarray, list[str]]:
    """Network inputs: (N, 256, 256, 2) float32 pre-processed like Mesmer, and their names."""
    from conftest import tissue_batch
    from deepcell.applications.mesmer import mesmer_preprocess

    def prep(image: np.ndarray) -> np.ndarray:
        return mesmer_preprocess(image[None].astype(np.float32))[0].astype(np.float32)

    tiles, names = [], []
    for k, image in enumerate(tissue_batch(2, 256, 256, seed=5)):
        tiles.append(prep(image))
        names.append(f"tissue_batch[{k}]")
    if REAL_DATA.is_dir():
        mibi = prep(np.load(REAL_DATA / "mibi_tnbc_ark_fov8.npz")["image"])
        tissuenet = prep(np.load(REAL_DATA / "tissuenet_cellsam_sample.npz")["image"])
        for (r, c) in ((0, 0), (384, 512)):
            tiles.append(mibi[r:r + 256, c:c + 256])
            names.append(f"mibi_tnbc_fov8[{r}:{r + 256}, {c}:{c + 256}]")
        for (r, c) in ((0, 0), (256, 256)):
            tiles.append(tissuenet[r:r + 256, c:c + 256])
            names.append(f"tissuenet[{r}:{r + 256}, {c}:{c + 256}]")
        imc = prep(np.load(REAL_DATA / "imc_pancreas_cytomapper.npz")["E34_image"])
        pad = [(d // 2, d - d // 2) for d in (256 - imc.shape[0], 256 - imc.shape[1])]
        tiles.append(np.pad(imc, [*pad, (0, 0)], mode="reflect"))  # as deepcell pads small images
        names.append("imc_E34 (100x100, reflect-padded)")
        nucleus = np.load(REAL_DATA / "dsb2018_stardist.npz")["nucleus"]
        dsb = prep(np.stack([nucleus, np.zeros_like(nucleus)], axis=-1))  # empty membrane
        tiles.append(dsb[128:384, 128:384])
        names.append("dsb2018[128:384, 128:384] (membrane channel empty)")
    tiles += [np.zeros((256, 256, 2), np.float32), np.ones((256, 256, 2), np.float32)]
    names += ["zeros", "ones"]
    return np.stack(tiles).astype(np.float32), names


def build(out: Path, seeds: tuple[int, ...]) -> None:
    """Write the models and ``reference.npz`` of every seed under ``out`` (reference side)."""
    import tensorflow as tf
    from conftest import build_random_mesmer

    tiles, names = reference_tiles()
    for seed in seeds:
        folder = out / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        model = build_random_mesmer(seed)
        model.save(str(folder / "MultiplexSegmentation"), include_optimizer=False)
        model.save(str(folder / "mesmer.h5"), include_optimizer=False)
        outputs = [np.concatenate(parts) for parts in zip(*(
            [np.asarray(o) for o in model(tiles[i:i + 4], training=False)]
            for i in range(0, len(tiles), 4)))]
        maps = np.concatenate([outputs[0], outputs[1][..., 1:2], outputs[2],
                               outputs[3][..., 1:2]], axis=-1)
        tapped = tf.keras.Model(model.inputs, [model.get_layer(t).output for t in STAGE_TAPS])
        taps = {f"tap/{t}": np.asarray(v, np.float32)
                for t, v in zip(STAGE_TAPS, tapped(tiles[:2], training=False))}
        np.savez(folder / "reference.npz", tiles=tiles, names=np.array(names),
                 maps=maps.astype(np.float32), **taps)


# ----------------------------------------------------------------------------- main side
_built: dict[str, dict[int, ReferenceModel]] = {}


def reference_python() -> str:
    """The reference python; skip without it (fail if ``$CODEXDASK_REQUIRE_REFERENCE=1``)."""
    import pytest

    python = os.environ.get(REFERENCE_PYTHON_ENV)
    if not python:
        reason = (f"TensorFlow parity needs the reference environment: set {REFERENCE_PYTHON_ENV}"
                  " to its python (e.g. .venv-deepcell/bin/python)")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason + f" ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    return python


def load_reference(out: Path, seeds: tuple[int, ...] = SEEDS) -> dict[int, ReferenceModel]:
    """Build (through the reference python) or reuse the reference models under ``out``."""
    key = f"{out}:{seeds}"
    if key in _built:
        return _built[key]
    stamp = json.dumps({"seeds": list(seeds), "source": hashlib.sha256(
        Path(__file__).read_bytes() + (_ROOT / "tests" / "conftest.py").read_bytes()).hexdigest()})
    done = out / "done.json"
    if not done.is_file() or done.read_text() != stamp:
        python = reference_python()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH"))
                                             if p)}
        command = [python, str(Path(__file__).resolve()), str(out),
                   "--seeds", *map(str, seeds)]
        done_run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done_run.returncode != 0:
            raise RuntimeError(f"building the TensorFlow reference models failed:\n"
                               f"{done_run.stderr[-3000:]}")
        done.write_text(stamp)
    models = {}
    for seed in seeds:
        folder = out / f"seed{seed}"
        with np.load(folder / "reference.npz") as data:
            models[seed] = ReferenceModel(
                seed, folder / "MultiplexSegmentation", folder / "mesmer.h5", data["tiles"],
                tuple(str(n) for n in data["names"]), data["maps"],
                {k[4:]: data[k] for k in data.files if k.startswith("tap/")})
    _built[key] = models
    return models


def reference_models_fixture(tmp_path_factory) -> dict[int, ReferenceModel]:  # noqa: ANN001
    """Body of the ``reference_models`` session fixture (import it into a test module)."""
    reference_python()
    cache = os.environ.get(CACHE_ENV)
    out = Path(cache) if cache else tmp_path_factory.getbasetemp() / "reference_models"
    out.mkdir(parents=True, exist_ok=True)
    return load_reference(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    build(arguments.out, tuple(arguments.seeds))
