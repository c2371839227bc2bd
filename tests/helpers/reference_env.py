"""TensorFlow reference fixtures for the PyTorch Mesmer, built in the reference environment.

The main environment has PyTorch and no TensorFlow; the reference environment (Python 3.10,
deepcell 0.12.10, TensorFlow 2.8) has TensorFlow and no PyTorch. They meet through files:

- Run as a script in the reference environment, ``python tests/helpers/reference_env.py OUT --seeds
  0 1 2`` builds, per seed, the random-weight Mesmer of ``conftest.build_random_mesmer`` (the heads
  rescaled so that cells are found), saves it as a SavedModel
  (``OUT/seed<k>/MultiplexSegmentation``) and as H5 (``OUT/seed<k>/mesmer.h5``), and writes
  ``OUT/seed<k>/reference.npz``: the network input ``tiles`` (N, 256, 256, 2) float32, their
  ``names``, TensorFlow's four Mesmer ``maps`` (N, 256, 256, 4) and, for the first two tiles, the
  activations of :data:`STAGE_TAPS` as ``tap/<layer>``. The tiles are the same for every seed:
  synthetic tissue (``conftest.tissue_batch``) and crops of the real images in
  ``../shared/real_data`` (when present), all pre-processed by deepcell's ``mesmer_preprocess``,
  plus an all-zero and an all-one tile.
- ``python tests/helpers/reference_env.py OUT --labels fast|all`` (after the models exist) runs
  deepcell's ``Mesmer(model).predict(compartment="both", batch_size=4)`` of the seed-0 model on the
  inputs of the Mesmer matrix (:data:`LABEL_CASES`; ``fast``: the default cases of
  ``tests/segmenters/test_mesmer.py``) and writes ``OUT/labels-<which>.npz``: per case
  ``<id>/batch`` (the input) and ``<id>/labels``. Shapes deepcell cannot tile (one side under 256,
  the other over) go through deepcell's own pieces with the reflect padding codexdask adds
  (:func:`deepcell_labels`).
- In the main environment, the session fixture :func:`reference_models` runs that script with the
  python in ``$CODEXDASK_REFERENCE_PYTHON`` and returns one :class:`ReferenceModel` per seed.
  Without the variable the tests that use it skip, unless ``$CODEXDASK_REQUIRE_REFERENCE=1``, in
  which case they fail. ``$CODEXDASK_REFERENCE_CACHE`` names a folder to keep the models in between
  sessions (rebuilt when the seeds or this file change).
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
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"
_ROOT = Path(__file__).resolve().parents[2]


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


#: The Mesmer matrix: ``(id, batch size, (height, width), image_mpp, fast)``; ``fast`` cases are
#: ``tests/segmenters/test_mesmer.py``'s default cases, the others its slow matrix.
LABEL_CASES = [
    ("smaller-than-tile-B2", 2, (100, 120), 0.5, True), ("256", 1, (256, 256), 0.5, True),
    ("512-mpp0.25", 1, (512, 512), 0.25, True), ("100-mpp1.0", 1, (100, 100), 1.0, True),
    ("180-mpp0.65", 1, (180, 180), 0.65, True), ("B5-64", 5, (64, 64), 0.5, True),
    ("mixed-300x200", 1, (300, 200), 0.5, True),
] + [
    (f"B{b}-{h}x{w}-mpp{mpp}", b, (h, w), mpp, False)
    for (h, w) in [(100, 120), (256, 256), (300, 200), (512, 512)]
    for mpp in (0.5, 0.65, 1.0)
    for b in ((1, 2) if (h, w) == (512, 512) else (1, 3, 5))
    if not ((h, w) == (512, 512) and mpp == 1.0 and b > 1)
]


def deepcell_labels(app, batch: np.ndarray, image_mpp: float,  # noqa: ANN001
                    tiles_per_call: int = 4) -> np.ndarray:
    """deepcell's labels: ``Mesmer.predict``, or its own pieces for shapes it cannot tile.

    deepcell 0.12.10 fails on an image with one side under 256 (after resizing) and the other
    over; there its pipeline runs step by step (``_batch_predict`` per ``tiles_per_call``
    tiles, ``_untile_output``, ``mesmer_postprocess``) with the short side reflect-padded to
    256 the way ``_tile_input`` pads small images, and cropped after untiling.
    """
    scale = image_mpp / 0.5
    height, width = (int(s * scale) for s in batch.shape[1:3]) if image_mpp != 0.5 \
        else batch.shape[1:3]
    if not (min(height, width) < 256 < max(height, width)):
        return app.predict(batch, image_mpp=image_mpp, compartment="both",
                           batch_size=tiles_per_call)
    image = app._preprocess(app._resize_input(batch, image_mpp))
    pads = [((256 - s) // 2, 256 - s - (256 - s) // 2) if s < 256 else (0, 0)
            for s in (height, width)]
    padded = np.pad(image, [(0, 0), pads[0], pads[1], (0, 0)], "reflect")
    tiles, info = app._tile_input(padded)
    images = app._untile_output(app._batch_predict(tiles, tiles_per_call), info)
    images = [im[:, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width]
              for im in images]
    kwargs = {"maxima_threshold": 0.075, "maxima_smooth": 0, "interior_threshold": 0.2,
              "interior_smooth": 2, "small_objects_threshold": 15, "fill_holes_threshold": 15,
              "radius": 2}
    labels = app._postprocess(app._format_model_output(images), compartment="both",
                              whole_cell_kwargs=kwargs,
                              nuclear_kwargs={**kwargs, "maxima_threshold": 0.1})
    return app._resize_output(labels, batch.shape)


def build_labels(out: Path, which: str) -> None:
    """Write ``OUT/labels-<which>.npz``: deepcell's labels of the seed-0 model (reference side)."""
    import tensorflow as tf
    from conftest import tissue_batch
    from deepcell.applications import Mesmer

    model = tf.keras.models.load_model(str(out / "seed0" / "MultiplexSegmentation"),
                                       compile=False)
    app = Mesmer(model)
    arrays = {}
    for name, batch_size, shape, image_mpp, fast in LABEL_CASES:
        if which == "fast" and not fast:
            continue
        batch = tissue_batch(batch_size, *shape, seed=batch_size * 1000 + shape[0])
        arrays[f"{name}/batch"] = batch
        arrays[f"{name}/labels"] = deepcell_labels(app, batch, image_mpp).astype(np.uint32)
    partial = out / f".labels-{which}.npz"
    np.savez_compressed(partial, **arrays)
    partial.replace(out / f"labels-{which}.npz")


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
        env = _reference_env()
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


def _reference_dir(tmp_path_factory) -> Path:  # noqa: ANN001
    cache = os.environ.get(CACHE_ENV)
    out = Path(cache) if cache else tmp_path_factory.getbasetemp() / "reference_models"
    out.mkdir(parents=True, exist_ok=True)
    return out


def reference_models_fixture(tmp_path_factory) -> dict[int, ReferenceModel]:  # noqa: ANN001
    """Body of the ``reference_models`` session fixture (import it into a test module)."""
    reference_python()
    return load_reference(_reference_dir(tmp_path_factory))


def reference_labels(tmp_path_factory, which: str = "fast"  # noqa: ANN001
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """deepcell's labels of the seed-0 model on the Mesmer matrix, built in the reference
    environment once (``which``: ``"fast"`` cases or ``"all"``).

    Returns ``{case id: (batch, labels, image_mpp)}``.
    """
    out = _reference_dir(tmp_path_factory)
    load_reference(out)
    stamp = out / f"labels-{which}.json"
    expected = json.dumps({"cases": LABEL_CASES, "models": (out / "done.json").read_text()})
    if not stamp.is_file() or stamp.read_text() != expected:
        command = [reference_python(), str(Path(__file__).resolve()), str(out),
                   "--labels", which]
        done_run = subprocess.run(command, env=_reference_env(), capture_output=True,
                                  text=True, check=False)
        if done_run.returncode != 0:
            raise RuntimeError(f"deepcell's labels failed:\n{done_run.stderr[-3000:]}")
        stamp.write_text(expected)
    mpps = {name: image_mpp for name, _, _, image_mpp, _ in LABEL_CASES}
    with np.load(out / f"labels-{which}.npz") as data:
        names = sorted({key.split("/")[0] for key in data.files})
        return {name: (data[f"{name}/batch"], data[f"{name}/labels"], mpps[name])
                for name in names}


def _reference_env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH"))
                                          if p)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--labels", choices=("fast", "all"),
                        help="write deepcell's labels of the seed-0 model instead of the models")
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest
    if arguments.labels:
        build_labels(arguments.out, arguments.labels)
    else:
        build(arguments.out, tuple(arguments.seeds))
