"""Mesmer on PyTorch: converted weights, the segmenter contract, errors, precision, workers.

The weights are a random-weight network (:func:`codexdask.mesmer.network.random_network`, heads
standardised so that objects are found) written as a converted file by
:func:`codexdask.mesmer.convert.save_network` and loaded through the real loading code. Labels
against deepcell's own (reference environment) are in ``test_mesmer_faithfulness.py``; tiled
against one-shot in ``test_mesmer_seamless.py``.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from conftest import tissue_batch

torch = pytest.importorskip("torch")

from codexdask.boxes import Box  # noqa: E402
from codexdask.errors import ConfigError, InputError, ModelLoadError, SegmenterError  # noqa: E402
from codexdask.mesmer import network  # noqa: E402
from codexdask.mesmer.convert import save_network  # noqa: E402
from codexdask.mesmer.weights import runtime_available  # noqa: E402
from codexdask.segmenters import get_segmenter  # noqa: E402
from codexdask.segmenters import mesmer as mesmer_module  # noqa: E402
from codexdask.segmenters.base import WindowInput  # noqa: E402
from codexdask.segmenters.mesmer import MesmerSegmenter, load_mesmer_model  # noqa: E402
from codexdask.segmenters.mesmer_runtime import model_load_count  # noqa: E402
from codexdask.statistics.passes import gather_statistics  # noqa: E402


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A converted weight file of a random-weight Mesmer (PyTorch)."""
    path = tmp_path_factory.mktemp("weights") / "mesmer.safetensors"
    save_network(network.random_network(seed=0), path, source_name="random seed 0")
    return path


@pytest.fixture(scope="module")
def segmenter(weights):
    return MesmerSegmenter(model_path=weights, tiles_per_call=4, device="cpu")


def assert_labelled(labels: np.ndarray, shape: tuple[int, ...]) -> None:
    """The contract: ``(B, H, W, 2)`` uint32, each image and compartment labelled 1..K."""
    assert labels.shape == shape and labels.dtype == np.uint32
    for image in labels:
        for c in range(2):
            ids = np.unique(image[..., c])
            ids = ids[ids > 0]
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))


def test_segments_with_the_contract(segmenter):
    batch = tissue_batch(2, 100, 120, seed=1)
    maps = pickle.loads(pickle.dumps(segmenter.infer(batch, 0.5)))  # as between workers
    assert (maps.runtime, maps.n_tiles, maps.tiles_per_call) == ("torch", 2, 4)
    assert maps["nuclear_interior"].shape == (2, 100, 120, 1)
    assert maps["nuclear_interior"].dtype == np.float32
    labels = segmenter.postprocess(maps)
    assert_labelled(labels, (2, 100, 120, 2))
    assert labels[..., 0].max() > 0 and labels[..., 1].max() > 0  # cells are found
    np.testing.assert_array_equal(segmenter.predict(batch, 0.5), labels)


@pytest.mark.parametrize(("shape", "image_mpp", "tiles"), [
    ((300, 200), 0.5, 2),    # one side under a tile, one over: deepcell fails, padded here
    ((130, 90), 0.65, 1),    # resized up to 169x117
    ((700, 500), 0.377, 6),  # resized down to 527x377: 3 x 2 tiles
])
def test_one_image_is_one_window(segmenter, shape, image_mpp, tiles):
    """``infer`` of a whole image equals the window path with the image's own statistics."""
    image = tissue_batch(1, *shape, seed=sum(shape))[0]
    maps = segmenter.infer(image[None], image_mpp)
    assert maps.n_tiles == tiles
    stats = gather_statistics(segmenter.statistics(image_mpp), shape,
                              lambda box: image[box.slices()])
    whole = Box.whole(shape)
    read = segmenter.read_box(whole, shape, image_mpp)
    assert read == whole
    windows = segmenter.infer_windows([WindowInput(image, whole, whole, shape)], image_mpp,
                                      stats)
    np.testing.assert_array_equal(windows[0].maps, maps.windows[0].maps)
    labels = segmenter.postprocess(maps)
    np.testing.assert_array_equal(segmenter.postprocess_windows(windows)[0], labels[0])
    assert_labelled(labels, (1, *shape, 2))


def test_empty_and_blank_batches(segmenter):
    labels = segmenter.predict(np.zeros((0, 64, 48, 2), np.uint16), 0.5)
    assert labels.shape == (0, 64, 48, 2) and labels.dtype == np.uint32
    assert_labelled(segmenter.predict(np.zeros((1, 64, 48, 2), np.float32), 0.5),
                    (1, 64, 48, 2))


@pytest.mark.parametrize(("batch", "image_mpp", "error", "message"), [
    (np.zeros((1, 64, 64, 3)), 0.5, InputError, "B, H, W, 2"),
    (np.full((1, 64, 64, 2), np.nan), 0.5, InputError, "NaN"),
    (np.zeros((1, 64, 64, 2), bool), 0.5, InputError, "numeric"),
    (np.zeros((1, 64, 64, 2)), 0.0, ConfigError, "image_mpp"),
    (np.zeros((1, 64, 64, 2)), float("nan"), ConfigError, "image_mpp"),
])
def test_bad_input_is_refused(segmenter, batch, image_mpp, error, message):
    with pytest.raises(error, match=message):
        segmenter.predict(batch, image_mpp)


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "int8"}, "precision must be one of"),
    ({"preprocess_kwargs": {"percentil": 99}}, "unknown preprocess_kwargs"),
    ({"postprocess_kwargs_nuclear": {"radious": 3}}, "unknown deep_watershed keywords"),
    ({"pad_mode": "wrap"}, "pad_mode"),
    ({"tiles_per_call": 0}, "tiles_per_call"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        MesmerSegmenter(**options)


def test_bad_weights_are_refused(tmp_path, no_weights_env):
    missing = MesmerSegmenter(model_path=tmp_path / "none.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist.*convert-model"):
        missing.check()
    with pytest.raises(ModelLoadError, match="does not exist"):
        missing.predict(tissue_batch(1, 64, 64), 0.5)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelLoadError, match="neither converted weights"):
        MesmerSegmenter(model_path=junk).check()
    with pytest.raises(ModelLoadError, match="No Mesmer weights found.*convert-model"):
        MesmerSegmenter().check()


def test_truncated_weights_are_refused_when_loading(tmp_path, weights):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    segmenter = MesmerSegmenter(model_path=broken)
    segmenter.check()  # the header is intact: the files look fine
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        segmenter.predict(tissue_batch(1, 64, 64), 0.5)


@pytest.mark.skipif(runtime_available("tensorflow"), reason="TensorFlow is installed here")
def test_savedmodel_without_tensorflow_says_convert(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    segmenter = MesmerSegmenter(model_path=tmp_path)
    assert segmenter.runtime == "tensorflow"
    with pytest.raises(ConfigError, match="TensorFlow, which is not installed.*convert-model"):
        segmenter.check()
    with pytest.raises(SegmenterError, match="convert-model"):
        segmenter.predict(tissue_batch(1, 64, 64), 0.5)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_precision_modes_segment(weights, segmenter, precision):
    batch = tissue_batch(1, 96, 80, seed=4)
    other = MesmerSegmenter(model_path=weights, tiles_per_call=4, precision=precision,
                            device="cpu")
    labels = other.predict(batch, 0.5)
    assert_labelled(labels, (1, 96, 80, 2))
    if precision == "tf32":  # TF32 exists on CUDA only: the same computation on CPU
        np.testing.assert_array_equal(labels, segmenter.predict(batch, 0.5))


def test_weights_loaded_once_per_process(weights, segmenter):
    segmenter.predict(tissue_batch(1, 64, 64), 0.5)
    count = model_load_count()
    again = MesmerSegmenter(model_path=str(weights) + "", tiles_per_call=2, device="cpu")
    again.predict(tissue_batch(1, 64, 64), 0.5)
    assert model_load_count() == count
    assert isinstance(load_mesmer_model(weights), network.MesmerNet)
    assert get_segmenter("mesmer", model_path=weights).runtime == "torch"


def test_out_of_memory_halves_the_tile_batch(weights, monkeypatch):
    real = mesmer_module.run_tiles
    tried = []

    def fussy(runtime, tiles, tiles_per_call):
        tried.append(tiles_per_call)
        if tiles_per_call > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(runtime, tiles, tiles_per_call)

    monkeypatch.setattr(mesmer_module, "run_tiles", fussy)
    batch = tissue_batch(3, 80, 80, seed=11)
    segmenter = MesmerSegmenter(model_path=weights, tiles_per_call=8, device="cpu")
    maps = segmenter.infer(batch, 0.5)
    assert tried == [8, 4, 2] and maps.tiles_per_call == 2
    monkeypatch.setattr(mesmer_module, "run_tiles", real)
    expected = MesmerSegmenter(model_path=weights, tiles_per_call=2, device="cpu")
    np.testing.assert_array_equal(segmenter.postprocess(maps), expected.predict(batch, 0.5))


def _infer_in_worker(weights: str) -> tuple[int, int, int, int]:
    maps = MesmerSegmenter(model_path=weights).infer(tissue_batch(1, 64, 64), 0.5)
    return os.getpid(), model_load_count(), maps.tiles_per_call, torch.get_num_threads()


def test_worker_loads_once_and_uses_its_threads(weights):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        first = client.submit(_infer_in_worker, str(weights), pure=False).result()
        second = client.submit(_infer_in_worker, str(weights), pure=False).result()
    assert first[0] == second[0] != os.getpid()  # one worker process, not this one
    assert first[1] == second[1] == 1  # the second task reused the loaded network
    assert 1 <= first[2] == second[2] <= 32  # "auto" resolved once, from host memory (CPU)
    assert first[3] == second[3] == 1  # the single-threaded worker's share of the cores


def test_engine_records_the_weights_it_ran(weights, tmp_path, client):
    """A Mesmer run's manifest names its weights: path, SHA-256 of the file, runtime, precision."""
    import hashlib

    from codexdask.config import PatchConfig, SegmentConfig
    from codexdask.engine.runner import run
    from codexdask.outputs import load_manifest
    from codexdask.store.patch_store import write_patch_store

    image = tissue_batch(1, 256, 256, seed=4)[0].transpose(2, 0, 1)
    store = write_patch_store(image, tmp_path / "slide.zarr",
                              PatchConfig(nucleus="DAPI", wholecell=["CD45"], patch_size=256),
                              channel_names=["DAPI", "CD45"])
    config = SegmentConfig(backend="mesmer", model_path=str(weights), tiles_per_call=4,
                           save_pickles=False, save_mosaics=False, n_overlays=0)
    result = run(store, tmp_path / "out", config, client=client)
    assert result.n_computed == 1
    recorded = load_manifest(tmp_path / "out")["plan"]["weights"]
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert recorded == {"path": str(weights), "sha256": sha256, "source": "model_path",
                        "runtime": "torch", "precision": "fp32"}
    assert result.plan.weights is not None and result.plan.weights.sha256 == recorded["sha256"]
