"""Mesmer's three stages on the cluster: prepare (CPU), network (GPU-pinned), finish (CPU).

The engine runs Mesmer as three tasks per batch, the network alone on a worker advertising a
``GPU`` resource (no GPU here: the resource is what the scheduler pins by; PyTorch runs on the
CPU). The labels must be those of the plain loop, where each patch (or block) goes through
``predict`` (or the window functions) in this process, bit for bit, in both split modes; and the
manifest must record the seconds of every stage.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import tissue_batch
from distributed import Client, LocalCluster

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine.runner import run, run_serial
from codexdask.engine.stages import StageSeconds, stage_report
from codexdask.layout import MASK_NAMES, RESULT_STORE
from codexdask.outputs import open_result_store
from codexdask.segmenters.mesmer import MesmerSegmenter
from codexdask.store.patch_store import write_patch_store


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A converted random-weight Mesmer (PyTorch)."""
    pytest.importorskip("torch")
    from codexdask.mesmer import network
    from codexdask.mesmer.convert import save_network

    path = tmp_path_factory.mktemp("weights") / "mesmer.safetensors"
    save_network(network.random_network(seed=2), path, source_name="random seed 2")
    return path


@pytest.fixture(scope="module")
def gpu_client():
    """Two single-threaded workers that advertise one GPU each: the network tasks are pinned."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


SHAPES = {"patches": (600, 700), "full_image": (400, 480)}


def slide_store(tmp_path, mode: str):
    image = tissue_batch(1, *SHAPES[mode], seed=5)[0].transpose(2, 0, 1)
    config = PatchConfig(nucleus="DAPI", wholecell=["CD45"], split_mode=mode, patch_size=192,
                         chunk_size=128, image_mpp=0.65)
    return write_patch_store(image, tmp_path / f"{mode}.zarr", config,
                             channel_names=["DAPI", "CD45"])


@contextlib.contextmanager
def one_torch_thread():
    """PyTorch on one thread while in the block, as in the single-threaded workers (the same
    float rounding)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["patches", "full_image"])
def test_three_stages_equal_the_plain_loop(weights, gpu_client, tmp_path, mode):
    """Engine (prepare, pinned network, finish as separate tasks) == the serial loop, bit for
    bit, with the image resized (0.65 µm/px) and, in full_image, blocks with halos; in patches
    mode more batches than ``in_flight``, so preparation waits for earlier batches (a chain that
    must not deadlock)."""
    with one_torch_thread():
        result = assert_engine_equals_serial(weights, gpu_client, tmp_path, mode)
    stages = result.manifest["stages"]
    assert stages["prepare_s"] > 0 and stages["finish_s"] > 0 and stages["repair_s"] > 0
    assert 0 < stages["network_s"] <= stages["pinned_s"]
    assert stages["megapixels"] == pytest.approx(400 * 480 / 1e6 if mode == "full_image"
                                                 else result.n_computed * 192 * 192 / 1e6)
    assert 0 < stages["gpu_busy_fraction"] <= stages["pinned_busy_fraction"] <= 2.0
    assert ("stitch_s" in stages) == (mode == "full_image")

    assert result.manifest["plan"]["in_flight"] == 2 + 2 * 2
    if mode == "patches":
        assert result.n_computed > result.plan.in_flight


def test_regrown_objects_equal_the_plain_loop(weights, gpu_client, tmp_path):
    """A halo too small for the random network's objects: they are regrown on the pinned
    workers, in grown windows off the block grid, and the engine still equals the serial loop."""
    with one_torch_thread():
        result = assert_engine_equals_serial(weights, gpu_client, tmp_path, "full_image", halo=40)
    regrown = result.manifest["seamless"]["regrown"]
    assert sum(regrown["objects"]) > 0 and regrown["windows"] > 0, regrown
    assert result.manifest["seamless"]["dropped"] == [0, 0]


def assert_engine_equals_serial(weights, client, tmp_path, mode, halo=64):
    """Run the engine on a ``mode`` store, then the serial loop in this process; every mask of
    every patch must be equal. Returns the engine's RunResult."""
    store = slide_store(tmp_path, mode)
    config = SegmentConfig(backend="mesmer", model_path=str(weights), tiles_per_call=4,
                           batch_size=1, block_size=256, halo=halo, save_pickles=False,
                           save_mosaics=False, n_overlays=0)
    result = run(store, tmp_path / "out", config, client=client)
    assert result.plan.pin_gpu and result.n_computed >= 1
    serial = list(run_serial(store, config))
    group = open_result_store(tmp_path / "out" / RESULT_STORE)
    assert [index for index, _, _ in serial] == list(result.plan.todo)
    for index, masks, _ in serial:
        for name in MASK_NAMES:
            np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)
    assert int(group["cell"][:].max()) > 0  # something was segmented
    return result


def test_stages_are_the_two_stage_work(weights):
    """In one process: finish(network(prepare)) is postprocess(infer), for whole images and for
    windows, and the network stage holds no preparation (its tiles arrive contiguous)."""
    segmenter = MesmerSegmenter(model_path=weights, tiles_per_call=3, device="cpu")
    batch = tissue_batch(2, 300, 200, seed=8)
    prepared = segmenter.prepare(batch, 0.7)
    assert prepared.tiles.dtype == np.float32 and prepared.tiles.flags.c_contiguous
    out, seconds = segmenter.network(prepared)
    assert seconds > 0 and out.maps.shape == prepared.tiles.shape[:3] + (4,)
    np.testing.assert_array_equal(segmenter.finish(out),
                                  segmenter.postprocess(segmenter.infer(batch, 0.7)))


def test_stage_report_arithmetic():
    spent = StageSeconds(prepare=4.0, pinned=3.0, network=2.0, finish=6.0)
    report = stage_report(spent, repair_s=1.0, stitch_s=0.5, megapixels=2.0, graph_s=4.0,
                          gpus=1)
    assert report["pinned_other_s"] == 1.0
    assert report["s_per_megapixel"]["prepare"] == 2.0
    assert report["gpu_busy_fraction"] == 0.5 and report["pinned_busy_fraction"] == 0.75
    cpu = stage_report(spent, repair_s=1.0, stitch_s=None, megapixels=0.0, graph_s=4.0, gpus=0)
    assert cpu["gpu_busy_fraction"] is None and "stitch_s" not in cpu
    assert (spent + spent).share(2) == spent and spent.infer == 7.0
