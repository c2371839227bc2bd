"""Mesmer on TensorFlow: deepcell's labels bit for bit, offline weights, once-per-process loading.

A Keras SavedModel runs on TensorFlow; everything around the network is codexdask's own code
(resize, preprocessing, tiling, deep watershed). Every comparison runs deepcell 0.12.10 itself
(``Mesmer(model).predict``) on the random-weight model of ``conftest.mesmer_model_dir``, in the
reference environment. The network costs ~0.6 s per 256² tile on 2 CPU cores, so
the default run keeps to about 60 tiles: one or two images per case, mostly one tile each, one
512² patch (9 tiles). The full shape x image_mpp x batch matrix and the tiles-per-call sweep are
``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import tissue_batch
from helpers.reference_env import deepcell_labels

from codexdask.errors import ModelLoadError, SegmenterError
from codexdask.mesmer.weights import find_model_source
from codexdask.segmenters import get_segmenter
from codexdask.segmenters import mesmer as mesmer_module
from codexdask.segmenters.mesmer import MesmerSegmenter, load_mesmer_model, model_load_count

pytestmark = [
    pytest.mark.mesmer,
    pytest.mark.reference,
    pytest.mark.skipif(
        importlib.util.find_spec("deepcell") is None,
        reason="deepcell (pip install 'codexdask[mesmer]', Python 3.10) is not installed",
    ),
]

@pytest.fixture(scope="module")
def model(mesmer_model_dir: Path):
    return load_mesmer_model(mesmer_model_dir)


@pytest.fixture(scope="module")
def app(model):
    from deepcell.applications import Mesmer

    return Mesmer(model)


@pytest.fixture(scope="module")
def patch_512(app) -> tuple[np.ndarray, np.ndarray]:
    """One 512² patch (9 tiles) and deepcell's labels for it with 4 tiles per call."""
    batch = tissue_batch(1, 512, 512, seed=512)
    return batch, app.predict(batch, image_mpp=0.5, compartment="both", batch_size=4)


def reference(app, batch: np.ndarray, image_mpp: float, tiles_per_call: int) -> np.ndarray:
    """deepcell's labels: ``Mesmer.predict``, or its pieces for shapes deepcell cannot tile."""
    return deepcell_labels(app, batch, image_mpp, tiles_per_call)


def two_stage(segmenter: MesmerSegmenter, batch: np.ndarray, image_mpp: float) -> np.ndarray:
    """infer, ship the maps through pickle (as between Dask workers), postprocess."""
    maps = pickle.loads(pickle.dumps(segmenter.infer(batch, image_mpp)))
    return segmenter.postprocess(maps)


def assert_same_labels(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.uint32
    assert ours.shape == theirs.shape
    # Random weights still give objects in both compartments, so equality means something.
    assert ours[..., 0].max() > 0 and ours[..., 1].max() > 0
    np.testing.assert_array_equal(ours, theirs)


# --- deepcell's labels -------------------------------------------------------------------------

DEFAULT_CASES = [
    pytest.param(2, (100, 120), 0.5, id="smaller-than-tile-B2"),
    pytest.param(1, (256, 256), 0.5, id="256"),
    pytest.param(1, (512, 512), 0.25, id="512-mpp0.25-resized-to-256"),
    pytest.param(1, (100, 100), 1.0, id="100-mpp1.0-resized-to-200"),
    pytest.param(1, (180, 180), 0.65, id="180-mpp0.65-resized-to-234"),
    pytest.param(5, (64, 64), 0.5, id="B5"),
]


@pytest.mark.parametrize(("batch_size", "shape", "image_mpp"), DEFAULT_CASES)
def test_labels_equal_deepcell_predict(mesmer_model_dir, app, batch_size, shape, image_mpp):
    batch = tissue_batch(batch_size, *shape, seed=sum(shape) + batch_size)
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)
    assert_same_labels(two_stage(segmenter, batch, image_mpp), reference(app, batch, image_mpp, 4))


def test_512_equals_deepcell_predict(mesmer_model_dir, patch_512):
    batch, expected = patch_512
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)
    maps = segmenter.infer(batch, 0.5)
    assert maps.n_tiles == 9 and maps.tiles_per_call == 4 and maps.runtime == "tensorflow"
    assert maps["whole_cell_interior"].shape == (1, 512, 512, 1)
    assert maps["whole_cell_interior"].dtype == np.float32
    assert_same_labels(segmenter.postprocess(maps), expected)


def test_predict_is_infer_then_postprocess(mesmer_model_dir):
    batch = tissue_batch(1, 128, 160, seed=7).astype(np.float32)
    segmenter = get_segmenter("mesmer", model_path=mesmer_model_dir, tiles_per_call=4)
    np.testing.assert_array_equal(
        segmenter.predict(batch, 0.5), segmenter.postprocess(segmenter.infer(batch, 0.5))
    )


def test_mixed_shape_follows_deepcell_padding(mesmer_model_dir, app):
    """300x200 (one side under a tile, one over): deepcell 0.12.10 itself fails on it."""
    import tensorflow as tf

    batch = tissue_batch(1, 300, 200, seed=3)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="[Ii]ncompatible"):
        app.predict(batch, image_mpp=0.5, compartment="both")
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)
    maps = segmenter.infer(batch, 0.5)
    assert maps.n_tiles == 2
    assert_same_labels(segmenter.postprocess(maps), reference(app, batch, 0.5, 4))


def test_other_tiles_per_call_agree(mesmer_model_dir, patch_512, record_property):
    """All 9 tiles in one call instead of deepcell's 4: TensorFlow may differ in the last bit."""
    batch, expected = patch_512
    labels = two_stage(MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=9), batch, 0.5)
    differing = int((labels != expected).sum())
    record_property("pixels_differing_T9_vs_T4", differing)
    print(f"tiles_per_call 9 vs 4: {differing} of {labels.size} label pixels differ")
    assert labels.shape == expected.shape
    assert differing <= 1e-4 * labels.size


def test_out_of_memory_halves_tiles_per_call(mesmer_model_dir, app, monkeypatch):
    class ResourceExhaustedError(RuntimeError):
        pass

    real = mesmer_module.run_tiles
    tried = []

    def fussy(runtime, tiles, tiles_per_call):
        tried.append(tiles_per_call)
        if tiles_per_call > 2:
            raise ResourceExhaustedError("OOM when allocating tensor")
        return real(runtime, tiles, tiles_per_call)

    monkeypatch.setattr(mesmer_module, "run_tiles", fussy)
    batch = tissue_batch(3, 80, 80, seed=11)
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=8)
    maps = segmenter.infer(batch, 0.5)
    assert tried == [8, 4, 2]
    assert maps.tiles_per_call == 2
    assert_same_labels(segmenter.postprocess(maps), reference(app, batch, 0.5, 2))


def test_out_of_memory_at_one_tile_is_a_clear_error(mesmer_model_dir, model, monkeypatch):
    def always(runtime, tiles, tiles_per_call):
        raise MemoryError("no memory")

    monkeypatch.setattr(mesmer_module, "run_tiles", always)
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=2)
    with pytest.raises(SegmenterError, match="even with 1 tile per call"):
        segmenter.infer(tissue_batch(1, 64, 64), 0.5)


def test_empty_batch(mesmer_model_dir):
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir)
    labels = segmenter.predict(np.zeros((0, 64, 48, 2), np.uint16), 0.5)
    assert labels.shape == (0, 64, 48, 2) and labels.dtype == np.uint32


# --- loading the weights (where they come from: test_weights.py) -------------------------------

def test_model_loaded_once_per_process(mesmer_model_dir, model):
    count = model_load_count()
    assert load_mesmer_model(mesmer_model_dir) is model
    assert load_mesmer_model(str(mesmer_model_dir) + os.sep) is model  # same resolved path
    assert model_load_count() == count
    assert model.input_shape == (None, 256, 256, 2) and len(model.outputs) == 4


def test_missing_model_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_mesmer_model(missing)
    assert str(missing) in str(info.value) and "saved_model.pb" in str(info.value)


def test_model_path_without_savedmodel(tmp_path):
    with pytest.raises(ModelLoadError, match="no saved_model.pb"):
        load_mesmer_model(tmp_path)


def test_broken_savedmodel(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="could not load the Mesmer model") as info:
        load_mesmer_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_no_weights_error_names_three_options(no_weights_env):
    with pytest.raises(ModelLoadError) as info:
        load_mesmer_model()
    message = str(info.value)
    assert "model_path" in message
    models = no_weights_env / ".deepcell" / "models"
    assert str(models / "MultiplexSegmentation-9.tar.gz") in message
    assert "DEEPCELL_ACCESS_TOKEN" in message
    assert find_model_source().ok is False


def _infer_in_worker(model_dir: str, batch: np.ndarray) -> tuple[int, int, int]:
    maps = MesmerSegmenter(model_path=model_dir).infer(batch, 0.5)  # tiles_per_call="auto"
    return os.getpid(), model_load_count(), maps.tiles_per_call


def test_model_loaded_once_per_worker_process(mesmer_model_dir):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        batch = tissue_batch(1, 64, 64)
        first = client.submit(_infer_in_worker, str(mesmer_model_dir), batch, pure=False).result()
        second = client.submit(_infer_in_worker, str(mesmer_model_dir), batch, pure=False).result()
    assert first[0] == second[0] != os.getpid()  # one worker process, not this one
    assert first[1] == second[1] == 1  # the second task reused the loaded model
    # "auto" was resolved once for the process (from host memory here: no GPU) and reused.
    assert 1 <= first[2] == second[2] <= 256


# --- the full matrix (slow) --------------------------------------------------------------------

SLOW_CASES = [
    pytest.param(batch_size, shape, mpp, id=f"B{batch_size}-{shape[0]}x{shape[1]}-mpp{mpp}")
    for shape in [(100, 120), (256, 256), (300, 200), (512, 512)]
    for mpp in (0.5, 0.65, 1.0)
    for batch_size in ((1, 2) if shape == (512, 512) else (1, 3, 5))
    if not (shape == (512, 512) and mpp == 1.0 and batch_size > 1)
]


@pytest.mark.slow
@pytest.mark.timeout(900)  # up to 2 x 125 network tiles on 2 CPU cores
@pytest.mark.parametrize(("batch_size", "shape", "image_mpp"), SLOW_CASES)
def test_full_matrix_equals_deepcell(mesmer_model_dir, app, batch_size, shape, image_mpp):
    batch = tissue_batch(batch_size, *shape, seed=batch_size * 1000 + shape[0])
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)
    assert_same_labels(two_stage(segmenter, batch, image_mpp), reference(app, batch, image_mpp, 4))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("tiles_per_call", [1, 2, 3, 5, 16])
def test_tiles_per_call_sweep(mesmer_model_dir, app, patch_512, tiles_per_call, record_property):
    batch, expected_at_4 = patch_512
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=tiles_per_call)
    labels = two_stage(segmenter, batch, 0.5)
    # Same tiles per call as deepcell: identical. Versus deepcell's default of 4: >= 99.99 %.
    np.testing.assert_array_equal(labels, reference(app, batch, 0.5, tiles_per_call))
    differing = int((labels != expected_at_4).sum())
    record_property(f"pixels_differing_T{tiles_per_call}_vs_T4", differing)
    print(f"tiles_per_call {tiles_per_call} vs 4: {differing} of {labels.size} pixels differ")
    assert differing <= 1e-4 * labels.size


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("image_mpp", [0.5, 0.65])
def test_blockwise_equals_deepcell_one_shot(mesmer_model_dir, app, image_mpp):
    """A logical patch in 256-px compute tiles on TensorFlow against deepcell's own
    ``Mesmer.predict`` of the whole image. The random model's objects are random features, not
    cells (hundreds of pixels across): the halo holds the largest one (``test_mesmer_seamless``
    explains why its slides are tissue everywhere)."""
    from scipy import ndimage as ndi

    from codexdask.repair.masks import repair_masks
    from codexdask.seamless.blocks import block_grid
    from codexdask.seamless.serial import repair_blocks, segment_in_blocks
    from codexdask.synthetic.scores import labelling_agreement

    image = tissue_batch(1, 600, 700, seed=21)[0]
    expected = app.predict(image[None], image_mpp=image_mpp, compartment="both",
                           batch_size=4)[0]
    segmenter = MesmerSegmenter(model_path=mesmer_model_dir, tiles_per_call=4)
    extent = max(max(s.stop - s.start for s in box) for c in range(2)
                 for box in ndi.find_objects(expected[..., c]) if box is not None)
    halo = int(np.ceil(extent / 2 + 16 / image_mpp))
    in_blocks, report = segment_in_blocks(image, segmenter, image_mpp, block_size=256, halo=halo)
    assert report == {"regrown": [0, 0], "dropped": [0, 0], "conflicts": [0, 0], "windows": 0}
    for c in range(2):
        agreement = labelling_agreement(expected[..., c], in_blocks[..., c])
        print(f"mpp {image_mpp} compartment {c}: {agreement}")
        assert agreement["n_reference"] > 20
        assert agreement["identical_fraction"] >= 0.999, agreement
        assert agreement["pixel_agreement"] >= 0.9999, agreement
    masks, _ = repair_blocks(in_blocks[..., 0], in_blocks[..., 1],
                             block_grid(image.shape[:2], 256, halo))
    repaired = repair_masks(in_blocks[..., 0], in_blocks[..., 1])
    for name in ("cell_matched_mask", "nucleus_matched_mask", "cell_matched_boundary"):
        np.testing.assert_array_equal(masks[name], repaired[name], err_msg=name)
