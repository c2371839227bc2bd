"""Mesmer preprocessing of codexdask.mesmer.preprocess: whole image and per window.

Two references: scikit-image's own ``rescale_intensity`` + ``equalize_adapthist`` composed as
deepcell composes them (installed in both environments), and the whole-image result for every
window. Parity with deepcell itself is in test_mesmer_deepcell_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box
from codexdask.mesmer.normalisation import whole_image_statistics
from codexdask.mesmer.preprocess import (
    clahe_extrema,
    combine_clahe_extrema,
    context_box,
    histogram_normalization,
    mesmer_preprocess,
    percentile_threshold,
    preprocess_plan,
    preprocess_window,
)
from codexdask.synthetic import synthetic_slide

exposure = pytest.importorskip("skimage.exposure")


def skimage_histogram_normalization(image: np.ndarray, kernel_size) -> np.ndarray:
    """deepcell's histogram_normalization written with scikit-image, for one (H, W, C) image."""
    image = image.astype("float32")
    for c in range(image.shape[-1]):
        plane = image[..., c]
        if (plane == plane.flat[0]).all():
            image[..., c] = 0
            continue
        plane = exposure.rescale_intensity(plane, out_range=(0.0, 1.0))
        image[..., c] = exposure.equalize_adapthist(plane, kernel_size=kernel_size)
    return image


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    return synthetic_slide(height, width, seed=seed).two_channel()


def random_image(rng: np.random.Generator, shape: tuple[int, int], dtype: type) -> np.ndarray:
    values = rng.gamma(1.0, 300.0, shape + (2,)) * (rng.random(shape + (2,)) > 0.3)
    if rng.random() < 0.2:
        values[..., 1] = 7  # a constant channel
    return values.astype(dtype)


@pytest.mark.parametrize("shape,dtype,kernel", [
    ((300, 200), np.uint16, 128), ((257, 513), np.uint8, 128), ((100, 100), np.float32, 64),
    ((37, 301), np.int32, 31), ((1, 1), np.uint16, 128), ((5, 300), np.float64, None),
    ((128, 128), np.uint16, 128), ((129, 255), np.float16, (40, 90)),
])
def test_histogram_normalization_matches_skimage(shape, dtype, kernel) -> None:
    rng = np.random.default_rng(sum(shape))
    image = random_image(rng, shape, dtype)
    ours = histogram_normalization(image, kernel_size=kernel)
    theirs = skimage_histogram_normalization(image, kernel)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)


def test_histogram_normalization_on_synthetic_tissue() -> None:
    image = tissue(600, 700)
    clipped = percentile_threshold(image)
    assert clipped.dtype == np.uint16
    ours = mesmer_preprocess(image)
    theirs = skimage_histogram_normalization(clipped, 128)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(mesmer_preprocess(image[None])[0], ours)  # batch axis


def test_percentile_threshold_options() -> None:
    image = tissue(256, 300, seed=2)
    stats = whole_image_statistics(image, 99.0)
    assert np.array_equal(percentile_threshold(image, 99.0), stats.clip(image))
    assert np.array_equal(mesmer_preprocess(image, threshold=False, normalize=False), image)
    unclipped = mesmer_preprocess(image, threshold=False)
    assert np.array_equal(unclipped, skimage_histogram_normalization(image, 128))


def partition_extrema(image: np.ndarray, plan, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    ys = sorted({0, height, int(rng.integers(0, height + 1))})
    xs = sorted({0, width, int(rng.integers(0, width + 1))})
    parts = []
    for top, bottom in zip(ys[:-1], ys[1:]):
        for left, right in zip(xs[:-1], xs[1:]):
            if bottom > top and right > left:
                core = Box(top, left, bottom, right)
                read = plan.required_box(core)
                parts.append(clahe_extrema(image[read.slices()], read, core, plan))
    return combine_clahe_extrema(parts)


def random_box(rng: np.random.Generator, shape: tuple[int, int]) -> Box:
    kind = rng.integers(0, 4)
    if kind == 0:
        return Box.whole(shape)
    top, left = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
    if kind == 1:  # touching the bottom-right border
        return Box(top, left, shape[0], shape[1])
    return Box(top, left, int(rng.integers(top + 1, shape[0] + 1)),
               int(rng.integers(left + 1, shape[1] + 1)))


def test_windows_equal_the_whole_image() -> None:
    rng = np.random.default_rng(7)
    windows = 0
    for trial in range(14):
        shape = (int(rng.integers(1, 600)), int(rng.integers(1, 600)))
        if trial < 3:
            shape = [(1, 1), (100, 70), (255, 129)][trial]
        dtype = [np.uint8, np.uint16, np.float32, np.int32][trial % 4]
        kernel = int(rng.choice([128, 64, 37]))
        image = random_image(rng, shape, dtype)
        whole = mesmer_preprocess(image, kernel_size=kernel)
        plan = preprocess_plan(shape, whole_image_statistics(image), kernel)
        if plan.clahe_range is None:
            plan = plan.with_clahe_range(partition_extrema(image, plan, rng))
        for _ in range(6):
            box = random_box(rng, shape)
            read = plan.required_box(box)
            assert read == context_box(box, shape, kernel)
            window = preprocess_window(image[read.slices()], read, box, plan)
            assert np.array_equal(window, whole[box.slices()]), (shape, dtype, kernel, box)
            windows += 1
    assert windows == 84


def test_plan_errors() -> None:
    image = tissue(200, 200)
    plan = preprocess_plan((200, 200), whole_image_statistics(image))
    whole = Box.whole((200, 200))
    with pytest.raises(InputError, match="CLAHE range"):
        preprocess_window(image, whole, whole, plan)
    with pytest.raises(InputError, match="required box"):
        clahe_extrema(image[:100], Box(0, 0, 100, 200), Box(0, 0, 100, 200), plan)
    with pytest.raises(InputError, match="dtype"):
        clahe_extrema(image.astype(np.int32), whole, whole, plan)
    with pytest.raises(InputError, match="shape"):
        plan.with_clahe_range(np.zeros((3, 2)))
    with pytest.raises(InputError, match=r"\(H, W, C\)"):
        mesmer_preprocess(image[..., 0])
