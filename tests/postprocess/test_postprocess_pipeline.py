"""codexdask.postprocess.maps_to_labels against deepcell-toolbox's deep_watershed.

In the reference environment (deepcell-toolbox, scikit-image 0.25) labels must be identical
(values, numbering, dtype) to ``deepcell_toolbox.deep_watershed.deep_watershed`` for Mesmer's
whole-cell and nuclear keywords, the function's defaults and its other options, on
Mesmer-like maps, adversarial maps, random-weight Mesmer outputs of real and synthetic images,
and hypothesis-drawn maps. Everywhere (the main environment too) the result must equal
deepcell's steps written out with scikit-image calls (``_reference_deep_watershed``), so the
numba kernels are checked against scikit-image 0.26 / numpy 2 as well.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.mesmer_like import (
    MESMER_NUCLEAR,
    MESMER_WHOLE_CELL,
    adversarial_maps,
    mesmer_like_maps,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label as sk_label
from skimage.measure import regionprops
from skimage.morphology import dilation, disk, h_maxima, remove_small_holes, remove_small_objects
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess import STAGES, deep_watershed

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"
_NEW_SIZE_API = "max_size" in inspect.signature(remove_small_objects).parameters

OPTIONS = {
    "mesmer-whole-cell": MESMER_WHOLE_CELL,
    "mesmer-nuclear": MESMER_NUCLEAR,
    "defaults": {},
    "erosion": {**MESMER_WHOLE_CELL, "label_erosion": 1},
    "expansion": {**MESMER_NUCLEAR, "pixel_expansion": 1},
    "peak_local_max": {**MESMER_WHOLE_CELL, "maxima_algorithm": "peak_local_max"},
    "smooth-maxima": {**MESMER_WHOLE_CELL, "maxima_smooth": 1, "interior_smooth": 0},
    "fractional": {**MESMER_NUCLEAR, "small_objects_threshold": 14.5, "fill_holes_threshold": 9.5},
}


def _reference_deep_watershed(outputs, radius=10, maxima_threshold=0.1, interior_threshold=0.01,
                              maxima_smooth=0, interior_smooth=1, label_erosion=0,
                              small_objects_threshold=0, fill_holes_threshold=0,
                              pixel_expansion=None, maxima_algorithm="h_maxima"):
    """deepcell-toolbox 0.12's deep_watershed steps (2-D) spelled out with scikit-image calls."""
    maximas, interiors = outputs[0], outputs[-1]
    results = []
    for maxima, interior in zip(maximas, interiors):
        maxima = ndi.gaussian_filter(maxima[..., 0], maxima_smooth)
        interior = ndi.gaussian_filter(interior[..., 0], interior_smooth)
        if pixel_expansion:
            side = 2 * pixel_expansion + 1
            interior = dilation(interior, footprint=np.ones((side, side), np.uint8))
        if maxima_algorithm == "peak_local_max":
            coords = peak_local_max(maxima, min_distance=radius, threshold_abs=maxima_threshold,
                                    exclude_border=False)
            markers = np.zeros_like(maxima)
            markers[tuple(coords.T)] = 1
        else:
            markers = h_maxima(maxima, maxima_threshold, footprint=disk(radius))
        labels = watershed(-1 * interior, sk_label(markers), mask=interior > interior_threshold)
        for _ in range(label_erosion):
            labels[find_boundaries(labels, mode="inner")] = 0
        if small_objects_threshold:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if _NEW_SIZE_API:
                    labels = remove_small_objects(labels, max_size=small_objects_threshold - 1)
                else:
                    labels = remove_small_objects(labels, min_size=small_objects_threshold)
        if fill_holes_threshold > 0:
            out = labels.copy()
            for region in regionprops(labels.astype(int)):
                if region.euler_number < 1:
                    patch = out[region.slice]
                    mine = patch == region.label
                    if _NEW_SIZE_API:
                        filled = remove_small_holes(mine, max_size=fill_holes_threshold - 1)
                    else:
                        filled = remove_small_holes(mine, area_threshold=fill_holes_threshold)
                    out[region.slice] = np.where(filled, region.label, patch)
            labels = out
        results.append(relabel_sequential(labels)[0])
    return np.stack(results)[..., None]


def _deepcell():
    return pytest.importorskip("deepcell_toolbox.deep_watershed").deep_watershed


def _deepcell_or_steps(reference, outputs, kwargs) -> tuple[np.ndarray, bool]:
    """deepcell's labels; for the 1-pixel-wide images its fill_holes cannot take (it squeezes
    them to 1-D, then regionprops raises), deepcell's steps on the 2-D image. Second: crashed."""
    try:
        return reference(outputs, **kwargs), False
    except TypeError as error:
        assert "2-D and 3-D" in str(error) and 1 in outputs[0].shape[1:3]
        assert kwargs.get("fill_holes_threshold", 0) > 0
        return _reference_deep_watershed(outputs, **kwargs), True


def _assert_same(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.dtype == expected.dtype, what
    assert got.shape == expected.shape, what
    differ = int(np.count_nonzero(got != expected))
    assert differ == 0, f"{what}: {differ} pixels differ"


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("compartment", ["whole-cell", "nuclear"])
def test_mesmer_like_maps_equal_deepcell_steps(compartment, option):
    maps = mesmer_like_maps(160, 192, seed=1, compartment=compartment)
    kwargs = OPTIONS[option]
    _assert_same(deep_watershed(list(maps), **kwargs),
                 _reference_deep_watershed(maps, **kwargs), f"{compartment} {option}")


def test_adversarial_maps_equal_deepcell_steps():
    cases = 0
    for name, maxima, interior in adversarial_maps(seed=3):
        for option in ("mesmer-whole-cell", "mesmer-nuclear", "defaults"):
            kwargs = OPTIONS[option]
            _assert_same(deep_watershed([maxima, interior], **kwargs),
                         _reference_deep_watershed([maxima, interior], **kwargs),
                         f"{name} {option}")
            cases += 1
    assert cases > 150


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("compartment", ["whole-cell", "nuclear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.reference
def test_mesmer_like_maps_equal_deepcell(compartment, option, dtype):
    reference = _deepcell()
    maxima, interior = mesmer_like_maps(256, 224, seed=4, compartment=compartment, dtype=dtype)
    # a batch of two, with a 3-channel interior map read at channel 0 (index -1 of outputs)
    maps = [np.concatenate([maxima, maxima[:, ::-1]]),
            np.concatenate([interior, interior[:, ::-1]])]
    maps[1] = np.concatenate([maps[1], np.zeros_like(maps[1]), np.ones_like(maps[1])], axis=-1)
    kwargs = OPTIONS[option]
    _assert_same(deep_watershed(maps, **kwargs), reference(maps, **kwargs),
                 f"{compartment} {option} {np.dtype(dtype).name}")


@pytest.mark.reference
def test_adversarial_maps_equal_deepcell():
    reference = _deepcell()
    cases = crashes = 0
    for name, maxima, interior in adversarial_maps(seed=8):
        for option, kwargs in OPTIONS.items():
            expected, crashed = _deepcell_or_steps(reference, [maxima, interior], kwargs)
            _assert_same(deep_watershed([maxima, interior], **kwargs), expected,
                         f"{name} {option}")
            cases += 1
            crashes += crashed
    assert cases > 400 and 0 < crashes < cases // 2


@pytest.mark.reference
def test_deprecated_keywords_and_exclude_border_equal_deepcell():
    reference = _deepcell()
    maps = mesmer_like_maps(96, 96, seed=6)
    for kwargs in ({"min_distance": 3}, {"distance_threshold": 0.3},
                   {"detection_threshold": 0.2},
                   {"maxima_algorithm": "peak_local_max", "exclude_border": True}):
        expect_warning = "exclude_border" not in kwargs
        with pytest.warns(DeprecationWarning) if expect_warning else contextlib.nullcontext():
            got = deep_watershed(list(maps), **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = reference(list(maps), **kwargs)
        _assert_same(got, expected, str(kwargs))


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    dtype=st.sampled_from([np.float32, np.float64]),
    option=st.sampled_from(["mesmer-whole-cell", "mesmer-nuclear", "defaults"]),
)
def test_property_equals_deepcell_steps_and_deepcell(data, shape, dtype, option):
    values = st.sampled_from([0.0, 0.0625, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0])
    maxima = data.draw(hnp.arrays(dtype, (1, *shape, 1), elements=values))
    interior = data.draw(hnp.arrays(dtype, (1, *shape, 1), elements=values))
    kwargs = OPTIONS[option]
    got = deep_watershed([maxima, interior], **kwargs)
    _assert_same(got, _reference_deep_watershed([maxima, interior], **kwargs), option)
    try:
        from deepcell_toolbox.deep_watershed import deep_watershed as reference
    except ImportError:
        return
    _assert_same(got, _deepcell_or_steps(reference, [maxima, interior], kwargs)[0], option)


# ---------------------------------------------------------------- random-weight Mesmer outputs

def _real_image(name: str) -> np.ndarray:
    """A real image ``(H, W, 2)`` [nucleus, whole-cell] from ``shared/real_data``."""
    if not REAL_DATA.is_dir():
        pytest.skip("shared/real_data is absent")
    bundle, key = {
        "tissuenet-512": ("tissuenet_cellsam_sample", "image"),
        "mibi-1024": ("mibi_tnbc_ark_fov8", "image"),
        "imc-E34-100": ("imc_pancreas_cytomapper", "E34_image"),
        "imc-G01-100": ("imc_pancreas_cytomapper", "G01_image"),
        "imc-J02-100": ("imc_pancreas_cytomapper", "J02_image"),
        "dsb-512": ("dsb2018_stardist", "nucleus"),
    }[name]
    with np.load(REAL_DATA / f"{bundle}.npz") as data:
        image = data[key]
    return np.stack([image, image], axis=-1) if image.ndim == 2 else image


@pytest.fixture(scope="module")
def segmenter(mesmer_model_dir):
    from codexdask.segmenters.mesmer import MesmerSegmenter

    return MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)


def _compare_on_model_maps(segmenter, image: np.ndarray, name: str) -> None:
    reference = _deepcell()
    maps = segmenter.infer(image[None], 0.5)
    for compartment, kwargs in (("whole_cell", MESMER_WHOLE_CELL), ("nuclear", MESMER_NUCLEAR)):
        outputs = [maps[f"{compartment}_inner_distance"], maps[f"{compartment}_interior"]]
        for options in (kwargs, {}):
            got = deep_watershed(outputs, **options)
            _assert_same(got, reference(outputs, **options), f"{name} {compartment} {options}")
            assert got.max() > 0, f"{name} {compartment}: the maps give no object"


@pytest.mark.mesmer
@pytest.mark.parametrize("name", ["tissuenet-512", "imc-E34-100", "imc-G01-100", "imc-J02-100"])
def test_model_outputs_of_real_images_equal_deepcell(segmenter, name):
    _compare_on_model_maps(segmenter, _real_image(name), name)


@pytest.mark.mesmer
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mibi-1024", "dsb-512"])
def test_model_outputs_of_more_real_images_equal_deepcell(segmenter, name):
    _compare_on_model_maps(segmenter, _real_image(name), name)


@pytest.mark.mesmer
def test_model_outputs_of_synthetic_slides_equal_deepcell(segmenter):
    from codexdask.synthetic import synthetic_slide

    for seed, size in ((0, 384), (1, 256)):
        slide = synthetic_slide(size, size, seed=seed)
        _compare_on_model_maps(segmenter, slide.two_channel(), f"synthetic-{seed}-{size}")


# ------------------------------------------------------------------------- API and errors

def test_output_and_timings():
    maps = mesmer_like_maps(64, 80, seed=2)
    timings: dict[str, float] = {}
    labels = deep_watershed(list(maps), timings=timings, **MESMER_WHOLE_CELL)
    assert labels.shape == (1, 64, 80, 1) and labels.dtype == np.intp
    assert set(timings) == set(STAGES) and all(value >= 0 for value in timings.values())
    present = np.unique(labels)
    np.testing.assert_array_equal(present, np.arange(present.size))  # labels 0..N, no gaps
    empty = deep_watershed([maps[0][:0], maps[1][:0]])
    assert empty.shape == (0, 64, 80, 1)


def test_bad_inputs_raise_project_errors():
    maps = list(mesmer_like_maps(16, 16))
    with pytest.raises(InputError, match="at least two"):
        deep_watershed([maps[0]], interior_index=3)
    with pytest.raises(InputError, match="same shape"):
        deep_watershed([maps[0], maps[1][:, :8]])
    with pytest.raises(InputError, match="rank 4"):
        deep_watershed([maps[0][..., None], maps[1][..., None]])
    with pytest.raises(InputError, match="NaN"):
        deep_watershed([np.full_like(maps[0], np.nan), maps[1]])
    with pytest.raises(ConfigError, match="maxima_algorithm"):
        deep_watershed(maps, maxima_algorithm="watershed")
    with pytest.raises(ConfigError, match="unknown"):
        deep_watershed(maps, radiuss=3)
    with pytest.raises(ConfigError, match="h"):
        deep_watershed(maps, maxima_threshold=0)
