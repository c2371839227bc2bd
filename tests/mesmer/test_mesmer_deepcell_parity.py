"""Bit-for-bit parity of codexdask.mesmer with deepcell 0.12.10 / deepcell_toolbox 0.12.1.

Runs in the reference environment only (Python 3.10, numpy 1.26, scikit-image 0.25)::

    PYTHONPATH=. /work/main/.venv/bin/python -m pytest tests/mesmer/test_mesmer_deepcell_parity.py

Real images come from ``../shared/real_data`` and are skipped when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codexdask.mesmer.indexing import Box
from codexdask.mesmer.normalisation import whole_image_statistics
from codexdask.mesmer.preprocess import (
    clahe_extrema,
    histogram_normalization,
    mesmer_preprocess,
    percentile_threshold,
    preprocess_plan,
)
from codexdask.mesmer.resize import resize_image, resize_labels, resized_shape
from codexdask.mesmer.tiling import tile_grid, tile_image, untile_image, untile_window
from codexdask.mesmer.windows import plan_window, window_inputs
from codexdask.synthetic import synthetic_slide

pytestmark = pytest.mark.reference  # deepcell itself: the reference environment
processing = pytest.importorskip("deepcell_toolbox.processing")
toolbox_utils = pytest.importorskip("deepcell_toolbox.utils")
application = pytest.importorskip("deepcell.applications.application")
mesmer_app = pytest.importorskip("deepcell.applications.mesmer")

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"
SIZES = [(255, 255), (256, 256), (257, 257), (300, 200), (511, 511), (512, 512), (513, 513),
         pytest.param((1000, 1700), marks=pytest.mark.slow)]
DTYPES = [np.uint8, np.uint16, np.int32, np.float32, np.float64]


def real_images() -> list[tuple[str, np.ndarray]]:
    if not REAL_DATA.is_dir():
        pytest.skip("shared/real_data is absent")
    out = []
    for name in ("mibi_tnbc_ark_fov8", "tissuenet_cellsam_sample"):
        out.append((name, np.load(REAL_DATA / f"{name}.npz")["image"]))
    imc = np.load(REAL_DATA / "imc_pancreas_cytomapper.npz")
    out += [(f"imc_{s}", imc[f"{s}_image"]) for s in ("E34", "G01", "J02")]
    nucleus = np.load(REAL_DATA / "dsb2018_stardist.npz")["nucleus"]
    out.append(("dsb_nucleus_only", np.stack([nucleus, np.zeros_like(nucleus)], axis=-1)))
    return out


def adversarial(shape: tuple[int, int], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.gamma(0.7, 400.0, shape + (2,)) * (rng.random(shape + (2,)) > 0.4)
    kind = seed % 4
    if kind == 1:
        image[..., 1] = 0  # an all-zero channel
    elif kind == 2:
        image[..., 1] = 0
        image[shape[0] // 2, shape[1] // 3, 1] = 9  # a single non-zero pixel
    elif kind == 3:
        image[..., 0] = 5  # a constant channel
    if np.dtype(dtype).kind == "i":
        image[::7] *= -1  # negative pixels
    return image.astype(dtype)


class _Tiler(application.Application):
    """deepcell's Application with Mesmer's 256x256x2 input, without a network."""

    def __init__(self) -> None:  # noqa: D107 - only the tiling attributes are needed
        self.model_image_shape = (256, 256, 2)


def test_real_images() -> None:
    for name, image in real_images():
        batch = image[None]
        assert np.array_equal(percentile_threshold(batch),
                              processing.percentile_threshold(batch)), name
        assert np.array_equal(mesmer_preprocess(batch), mesmer_app.mesmer_preprocess(batch)), name


def test_synthetic_tissue() -> None:
    image = synthetic_slide(700, 900, seed=4).two_channel()[None]
    for kwargs in ({}, {"percentile": 95.0}, {"kernel_size": 64}, {"threshold": False},
                   {"normalize": False}):
        ours = mesmer_preprocess(image, **kwargs)
        theirs = mesmer_app.mesmer_preprocess(image, **kwargs)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), kwargs


@pytest.mark.parametrize("size", SIZES)
def test_adversarial_sizes_and_dtypes(size: tuple[int, int]) -> None:
    for seed, dtype in enumerate(DTYPES):
        image = adversarial(size, dtype, seed + sum(size))[None]
        assert np.array_equal(percentile_threshold(image),
                              processing.percentile_threshold(image)), dtype
        assert np.array_equal(mesmer_preprocess(image), mesmer_app.mesmer_preprocess(image)), dtype


@pytest.mark.parametrize("kernel_size", [1, 2, 31, 127, 128, 129, 300, None])
def test_kernel_sizes(kernel_size) -> None:
    image = adversarial((257, 211), np.uint16, 3)[None]
    clipped = processing.percentile_threshold(image)
    expected = processing.histogram_normalization(clipped, kernel_size=kernel_size)
    assert np.array_equal(histogram_normalization(clipped, kernel_size), expected)


def test_tiny_images() -> None:
    for shape in [(1, 1), (1, 7), (3, 2), (20, 130)]:
        image = adversarial(shape, np.uint16, 2)[None]
        assert np.array_equal(mesmer_preprocess(image), mesmer_app.mesmer_preprocess(image))


def test_clip_value_is_numpy_percentile() -> None:
    rng = np.random.default_rng(0)
    for dtype in [np.uint8, np.int16, np.uint32, np.int64, np.float16, np.float32, np.float64]:
        for percentile in (99.9, 50.0, 0.0, 100.0, 99.99):
            image = adversarial((int(rng.integers(1, 80)), int(rng.integers(1, 80))), dtype,
                                int(rng.integers(0, 100)))
            stats = whole_image_statistics(image, percentile)
            for c in range(2):
                plane = image[..., c]
                values = plane[np.nonzero(plane)]
                if values.size:
                    assert stats.clip_value[c] == np.percentile(values, percentile)


@pytest.mark.parametrize("shape", [(256, 256), (257, 300), (512, 512), (513, 1000),
                                   (1000, 1700), (255, 255), (10, 300), (100, 256), (256, 700),
                                   (1, 1), (448, 449)])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_tiling(shape: tuple[int, int], pad_mode: str) -> None:
    rng = np.random.default_rng(sum(shape))
    images = rng.random((2,) + shape + (2,), dtype=np.float32)
    expected_tiles, info = _Tiler()._tile_input(images, pad_mode=pad_mode)
    tiles, grid = tile_image(images, pad_mode=pad_mode)
    assert np.array_equal(tiles, expected_tiles)
    outputs = rng.random(tiles.shape[:3] + (3,), dtype=np.float32)
    expected = _Tiler()._untile_output(outputs, info)
    assert np.array_equal(untile_image(outputs, grid), expected)


def _resize_cases() -> list[tuple[str, np.ndarray]]:
    cases = [("synthetic", synthetic_slide(512, 384, seed=2).two_channel()),
             ("float32", np.random.default_rng(1).gamma(1.0, 50.0, (257, 255, 2))
              .astype(np.float32))]
    if REAL_DATA.is_dir():
        cases += [case for case in real_images() if case[0] != "mibi_tnbc_ark_fov8"][:3]
    return cases


@pytest.mark.parametrize("image_mpp", [0.25, 0.377, 0.65, 1.0, 2.0])
def test_resize(image_mpp: float) -> None:
    """Bit-exact on these images; in general shrinking may differ by one unit (see resize.py)."""
    for name, image in _resize_cases():
        size = resized_shape(image.shape[:2], image_mpp)
        expected = toolbox_utils.resize(image[None], size)[0]
        assert np.array_equal(resize_image(image, size), expected), (name, image_mpp)


@pytest.mark.parametrize("channels", [1, 2])
def test_resize_labels(channels: int) -> None:
    labels = np.random.default_rng(channels).integers(0, 900, (1, 301, 257, channels))
    for image_mpp in (0.25, 0.377, 0.65, 2.0):
        size = resized_shape((301, 257), image_mpp)
        expected = toolbox_utils.resize(labels, size, labeled_image=True)
        assert np.array_equal(resize_labels(labels, size), expected), image_mpp
        # Mesmer resizes its labels back to the input size.
        back = toolbox_utils.resize(expected, (301, 257), labeled_image=True)
        assert np.array_equal(resize_labels(expected, (301, 257)), back)


class _PointwiseModel:
    """Stands in for Mesmer's network in deepcell's Application: four pointwise heads."""

    def predict(self, batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
        return heads(batch)


def heads(tiles: np.ndarray) -> list[np.ndarray]:
    nucleus, membrane = tiles[..., 0:1], tiles[..., 1:2]
    soft = np.concatenate([nucleus, membrane, nucleus * membrane], axis=-1)
    return [np.maximum(nucleus - 0.3, 0), soft, membrane ** 2, soft[..., ::-1] * 0.5]


@pytest.mark.parametrize("image_mpp", [None, 0.377, 2.0])
def test_application_chain_in_windows(image_mpp) -> None:
    """deepcell's resize -> preprocess -> tile -> network -> untile, against our windows."""
    raw = synthetic_slide(420, 390, seed=6).two_channel()
    app = application.Application(_PointwiseModel(), model_image_shape=(256, 256, 2),
                                  model_mpp=0.5, preprocessing_fn=mesmer_app.mesmer_preprocess,
                                  format_model_output_fn=mesmer_app.format_output_mesmer)
    resized = app._resize_input(raw[None], image_mpp)
    expected = app._run_model(resized, batch_size=4)

    shape = resized.shape[1:3]
    stats = whole_image_statistics(resized[0])
    plan = preprocess_plan(shape, stats)
    whole = Box.whole(shape)
    plan = plan.with_clahe_range(clahe_extrema(resized[0], whole, whole, plan))
    grid = tile_grid(shape)
    for out_box in (Box(0, 0, 200, 150), Box(100, 180, shape[0], shape[1]), whole):
        window = plan_window(out_box, grid, plan, raw.shape[:2])
        inputs = window_inputs(raw[window.raw_box.slices()], window, plan, grid,
                               (raw.min(), raw.max()))
        maps = [untile_window(head, grid, window.tiles, out_box) for head in heads(inputs)]
        for key, (first, second) in (("whole-cell", (0, 1)), ("nuclear", (2, 3))):
            inner, interior = expected[key]
            assert np.array_equal(maps[first], inner[0][out_box.slices()])
            assert np.array_equal(maps[second][..., 1:2], interior[0][out_box.slices()])
