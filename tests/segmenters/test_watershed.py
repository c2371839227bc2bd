"""Tests of the offline watershed segmenter."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from codexdask.errors import ConfigError, InputError
from codexdask.segmenters import get_segmenter
from codexdask.segmenters.watershed import WatershedMaps, WatershedSegmenter
from codexdask.synthetic import SyntheticSlide, synthetic_slide
from codexdask.synthetic.scores import match_instances


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return synthetic_slide(512, 512, seed=11)


@pytest.fixture(scope="module")
def labels(slide: SyntheticSlide) -> np.ndarray:
    return WatershedSegmenter().predict(slide.two_channel()[None], slide.image_mpp)[0]


def _check_contract(labels: np.ndarray) -> None:
    """uint32, cell k contains nucleus k, both compartments labelled 1..K."""
    assert labels.dtype == np.uint32
    for image in labels.reshape((-1,) + labels.shape[-3:]):
        cell, nucleus = image[..., 0], image[..., 1]
        inside = nucleus > 0
        assert np.array_equal(cell[inside], nucleus[inside])
        k = int(nucleus.max())
        assert np.array_equal(np.unique(nucleus[nucleus > 0]), np.arange(1, k + 1))
        assert np.array_equal(np.unique(cell[cell > 0]), np.arange(1, k + 1))


def test_registered_under_its_name() -> None:
    segmenter = get_segmenter("watershed", max_expansion_um=5.0)
    assert isinstance(segmenter, WatershedSegmenter)
    assert segmenter.max_expansion_um == 5.0
    assert segmenter.name == "watershed" and not segmenter.wants_gpu


@pytest.mark.parametrize("seed", [11, 12])
def test_quality_on_synthetic_ground_truth(seed: int) -> None:
    slide = synthetic_slide(512, 512, seed=seed)
    labels = WatershedSegmenter().predict(slide.two_channel()[None], slide.image_mpp)[0]
    nuclei = match_instances(slide.nucleus_labels, labels[..., 1], 0.5)
    cells = match_instances(slide.cell_labels, labels[..., 0], 0.5)
    assert nuclei.f1 >= 0.9, nuclei.as_dict()
    assert cells.f1 >= 0.8, cells.as_dict()
    assert nuclei.mean_iou >= 0.8 and cells.mean_iou >= 0.75


def test_output_contract(slide: SyntheticSlide, labels: np.ndarray) -> None:
    assert labels.shape == (512, 512, 2)
    _check_contract(labels)
    assert labels[..., 0].max() > 300
    # Cells are larger than their nuclei: ordering is (whole-cell, nucleus).
    assert (labels[..., 0] > 0).sum() > 2 * (labels[..., 1] > 0).sum()


def test_batch_items_are_independent(slide: SyntheticSlide, labels: np.ndarray) -> None:
    image = slide.two_channel()
    batch: np.ndarray = np.stack([image, np.zeros_like(image), image[::-1].copy()])
    out = WatershedSegmenter().predict(batch, 0.5)
    assert out.shape == (3, 512, 512, 2)
    assert np.array_equal(out[0], labels)
    assert not out[1].any()
    _check_contract(out)


def test_stages_compose_to_predict(slide: SyntheticSlide, labels: np.ndarray) -> None:
    segmenter = WatershedSegmenter()
    maps = segmenter.infer(slide.two_channel()[None], 0.5)
    assert isinstance(maps, WatershedMaps)
    assert maps.maps.dtype == np.float32 and maps.maps.shape == (1, 512, 512, 2)
    assert 0.0 <= maps.maps.min() and maps.maps.max() <= 1.0
    # Stages may run in different processes: the maps and the segmenter pickle.
    maps = pickle.loads(pickle.dumps(maps))
    segmenter = pickle.loads(pickle.dumps(segmenter))
    assert np.array_equal(segmenter.postprocess(maps)[0], labels)


def test_deterministic(slide: SyntheticSlide, labels: np.ndarray) -> None:
    again = WatershedSegmenter().predict(slide.two_channel()[None], 0.5)[0]
    assert np.array_equal(again, labels)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.int32])
def test_dtypes_with_the_same_values_give_the_same_labels(
    slide: SyntheticSlide, labels: np.ndarray, dtype: type
) -> None:
    batch: np.ndarray = slide.two_channel()[None].astype(dtype)
    assert np.array_equal(WatershedSegmenter().predict(batch, 0.5)[0], labels)


def test_rescaled_uint8_input(slide: SyntheticSlide) -> None:
    image = slide.two_channel().astype(np.float64)
    scaled = np.clip(image / np.percentile(image, 99.9, axis=(0, 1)) * 255, 0, 255)
    out = WatershedSegmenter().predict(scaled.astype(np.uint8)[None], 0.5)[0]
    _check_contract(out)
    assert match_instances(slide.nucleus_labels, out[..., 1]).f1 >= 0.9
    assert match_instances(slide.cell_labels, out[..., 0]).f1 >= 0.8


def test_all_zero_patches_give_zero_labels_without_warnings() -> None:
    segmenter = WatershedSegmenter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (np.uint8, np.uint16, np.float32):
            out = segmenter.predict(np.zeros((2, 64, 80, 2), dtype=dtype), 0.5)
            assert out.shape == (2, 64, 80, 2) and out.dtype == np.uint32
            assert not out.any()
        constant = segmenter.predict(np.full((1, 64, 64, 2), 500, np.uint16), 0.5)
        assert not constant.any()
        nucleus_only = np.zeros((1, 64, 64, 2), np.uint16)
        nucleus_only[0, ..., 1] = 300
        assert not segmenter.predict(nucleus_only, 0.5).any()  # no nuclei, no cells


def test_sparse_noise_in_empty_regions_gives_no_objects() -> None:
    rng = np.random.default_rng(0)
    noise = np.where(rng.random((1, 256, 256, 2)) < 0.003, rng.integers(1, 30, (1, 256, 256, 2)), 0)
    assert not WatershedSegmenter().predict(noise.astype(np.uint16), 0.5).any()


def test_small_patches(slide: SyntheticSlide) -> None:
    image = slide.two_channel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for height, width in ((40, 60), (7, 9), (1, 1)):
            out = WatershedSegmenter().predict(
                image[None, 100 : 100 + height, 100 : 100 + width], 0.5
            )
            assert out.shape == (1, height, width, 2)
            _check_contract(out)
    crop = WatershedSegmenter().predict(image[None, 100:140, 100:160], 0.5)
    assert crop[..., 1].max() >= 3  # a 20 × 30 µm window holds several nuclei


def test_nucleus_only_input_gives_cells_around_nuclei(slide: SyntheticSlide) -> None:
    image = slide.two_channel()[None].copy()
    image[..., 1] = 0
    out = WatershedSegmenter().predict(image, 0.5)
    _check_contract(out)
    assert match_instances(slide.nucleus_labels, out[0, ..., 1]).f1 >= 0.9
    cell_area = (out[..., 0] > 0).sum()
    assert (out[..., 1] > 0).sum() < cell_area < 3 * (out[..., 1] > 0).sum()


def test_sizes_follow_image_mpp(slide: SyntheticSlide, labels: np.ndarray) -> None:
    # The same tissue at twice the resolution, segmented at 0.25 µm/px, gives the same objects.
    fine = np.repeat(np.repeat(slide.two_channel()[:256, :256], 2, axis=0), 2, axis=1)
    out = WatershedSegmenter().predict(fine[None], 0.25)[0]
    coarse = labels[:256, :256]
    n_coarse = len(np.unique(coarse[..., 1])) - 1
    n_fine = len(np.unique(out[..., 1])) - 1
    assert abs(n_fine - n_coarse) <= 0.05 * n_coarse
    area_ratio = (out[..., 0] > 0).sum() / (coarse[..., 0] > 0).sum()
    assert 3.6 < area_ratio < 4.4


def test_memory_estimate() -> None:
    segmenter = WatershedSegmenter()
    small = segmenter.memory_per_patch((256, 256), 0.5)
    large = segmenter.memory_per_patch((512, 1024), 0.5)
    assert small.device_bytes == large.device_bytes == 0
    assert large.host_bytes == 8 * small.host_bytes
    assert small.host_bytes >= 100 * 256 * 256  # measured ~80 bytes/pixel of peak RSS growth


def test_bad_input_and_options() -> None:
    segmenter = WatershedSegmenter()
    with pytest.raises(InputError):
        segmenter.predict(np.zeros((64, 64, 2)), 0.5)
    with pytest.raises(InputError):
        segmenter.predict(np.zeros((1, 64, 64, 3)), 0.5)
    with pytest.raises(InputError):
        segmenter.predict(np.full((1, 8, 8, 2), np.nan), 0.5)
    with pytest.raises(ConfigError, match="image_mpp"):
        segmenter.predict(np.zeros((1, 8, 8, 2)), 0.0)
    with pytest.raises(ConfigError, match="nucleus_diameter_um"):
        WatershedSegmenter(nucleus_diameter_um=0)
    with pytest.raises(ConfigError, match="min_nucleus_contrast"):
        WatershedSegmenter(min_nucleus_contrast=1.5)
    with pytest.raises(TypeError):
        WatershedSegmenter(unknown_option=1)  # type: ignore[call-arg]
