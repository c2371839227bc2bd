"""Batch planner arithmetic, out-of-memory back-off, and batch-size invariance (no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tissue_batch

from codexdask.errors import ConfigError, SegmenterError
from codexdask.segmenters import MemoryEstimate, Segmenter, TiledSegmenter, get_segmenter, planner
from codexdask.segmenters.mesmer import DEVICE_BYTES_PER_TILE, MesmerSegmenter
from codexdask.segmenters.planner import BatchPlan, is_out_of_memory, plan_batches, run_with_backoff

TORCH_FP32 = DEVICE_BYTES_PER_TILE["torch"]["fp32"]

MiB = 2**20
GiB = 2**30


class FakePlain(Segmenter):
    """No tiles, CPU only, 50 MiB of host per patch."""

    name = "fake-plain"

    def infer(self, batch, image_mpp):
        return batch

    def postprocess(self, maps):
        return np.zeros(maps.shape[:3] + (2,), np.uint32)

    def memory_per_patch(self, shape, image_mpp):
        return MemoryEstimate(device_bytes=0, host_bytes=50 * MiB)


class FakeTiled(FakePlain):
    """9 tiles per patch, 100 MiB of accelerator memory per tile, 50 MiB of host per patch."""

    name = "fake-tiled"
    wants_gpu = True
    device_bytes_per_tile = 100 * MiB

    def tiles_per_patch(self, shape, image_mpp):
        return 9

    def memory_per_patch(self, shape, image_mpp):
        return MemoryEstimate(device_bytes=9 * 100 * MiB, host_bytes=50 * MiB)


def test_tiled_segmenters_are_recognised_by_their_protocol():
    assert isinstance(FakeTiled(), TiledSegmenter) and isinstance(MesmerSegmenter(), TiledSegmenter)
    assert not isinstance(FakePlain(), TiledSegmenter)
    assert not isinstance(get_segmenter("watershed"), TiledSegmenter)


# --- plan_batches arithmetic -------------------------------------------------------------------

def test_gpu_plan_fills_one_call_per_task():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=10 * GiB,
                        host_free_bytes=100 * GiB)
    # (10 GiB x 0.8 - 1.5 GiB) / 100 MiB = 66.56 -> 66 tiles; ceil(66 / 9) = 8 patches.
    assert plan.tiles_per_call == 66
    assert plan.patches_per_task == 8
    assert plan.device_bytes_per_patch == 900 * MiB
    assert plan.host_bytes_per_patch == 50 * MiB
    assert "66" in plan.reason and "ceil(66" in plan.reason


def test_gpu_plan_is_capped():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=80 * GiB,
                        host_free_bytes=1000 * GiB)
    assert plan.tiles_per_call == planner.MAX_TILES_PER_CALL_GPU
    assert plan.patches_per_task == math.ceil(planner.MAX_TILES_PER_CALL_GPU / 9)


def test_host_memory_limits_patches_per_task():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=10 * GiB,
                        host_free_bytes=400 * MiB)
    # Host budget 400 MiB x 0.5 = 200 MiB holds 4 patches of 50 MiB.
    assert (plan.tiles_per_call, plan.patches_per_task) == (66, 4)


def test_cpu_plan_takes_network_memory_from_host():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, host_free_bytes=8 * GiB)
    # Budget 4 GiB; tiles = 4 GiB x 0.5 / 100 MiB = 20; 4096 - 2000 MiB left = 41 patches fit.
    assert plan.tiles_per_call == 20
    assert plan.patches_per_task == math.ceil(20 / 9)
    assert "no GPU" in plan.reason


def test_zero_or_no_device_memory_means_cpu():
    for device in (0, None):
        plan = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=device,
                            host_free_bytes=8 * GiB)
        assert plan.tiles_per_call == 20 and "no GPU" in plan.reason
    gpu = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=80 * GiB,
                       host_free_bytes=8 * GiB)
    assert gpu.tiles_per_call == planner.MAX_TILES_PER_CALL_GPU  # the GPU figure is used


def test_cpu_tiles_are_capped():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, host_free_bytes=1000 * GiB)
    assert plan.tiles_per_call == planner.MAX_TILES_PER_CALL_CPU


def test_user_values_win():
    plan = plan_batches(FakeTiled(), (512, 512), 0.5, device_free_bytes=10 * GiB,
                        host_free_bytes=100 * GiB, batch_size=5, tiles_per_call=7)
    assert (plan.patches_per_task, plan.tiles_per_call) == (5, 7)
    assert "set by the user" in plan.reason


def test_plain_segmenter_has_no_tiles():
    plan = plan_batches(FakePlain(), (512, 512), 0.5, host_free_bytes=100 * GiB)
    assert plan.tiles_per_call is None
    assert plan.patches_per_task == planner.DEFAULT_PATCHES_PER_TASK
    small = plan_batches(FakePlain(), (512, 512), 0.5, host_free_bytes=300 * MiB)
    assert small.patches_per_task == 3  # 150 MiB budget / 50 MiB


def test_windows_of_a_plain_segmenter_go_one_per_task():
    # Grouping windows gains a plain segmenter nothing and leaves workers idle at the end.
    plan = plan_batches(FakePlain(), (1664, 1664), 0.5, host_free_bytes=100 * GiB, windows=True)
    assert plan.patches_per_task == 1 and "one window" in plan.reason
    fixed = plan_batches(FakePlain(), (1664, 1664), 0.5, host_free_bytes=100 * GiB,
                         windows=True, batch_size=4)
    assert fixed.patches_per_task == 4
    tiny = plan_batches(FakePlain(), (1664, 1664), 0.5, host_free_bytes=MiB, windows=True)
    assert "smaller block_size" in tiny.reason


def test_windows_of_a_tiled_segmenter_fill_a_network_call():
    plain = plan_batches(FakeTiled(), (512, 512), 0.5, host_free_bytes=100 * GiB,
                         device_free_bytes=80 * GiB)
    windows = plan_batches(FakeTiled(), (512, 512), 0.5, host_free_bytes=100 * GiB,
                           device_free_bytes=80 * GiB, windows=True)
    assert windows.patches_per_task == plain.patches_per_task > 1


def test_patch_too_big_for_memory_still_plans_one():
    plan = plan_batches(FakePlain(), (512, 512), 0.5, host_free_bytes=10 * MiB)
    assert plan.patches_per_task == 1
    assert "warning" in plan.reason


def test_plan_is_frozen_and_serialisable():
    plan = plan_batches(FakePlain(), (64, 64), 0.5, host_free_bytes=GiB)
    assert isinstance(plan, BatchPlan)
    assert set(plan.as_dict()) == {"patches_per_task", "tiles_per_call", "device_bytes_per_patch",
                                   "host_bytes_per_patch", "reason"}
    with pytest.raises(AttributeError):
        plan.patches_per_task = 3  # type: ignore[misc]


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5j])
def test_bad_batch_values_are_refused(bad):
    with pytest.raises(ConfigError, match="batch_size"):
        plan_batches(FakePlain(), (64, 64), 0.5, host_free_bytes=GiB, batch_size=bad)
    with pytest.raises(ConfigError, match="tiles_per_call"):
        plan_batches(FakeTiled(), (64, 64), 0.5, device_free_bytes=GiB, host_free_bytes=GiB,
                     tiles_per_call=bad)


def test_mesmer_plan_on_an_h100(no_weights_env):
    # Without weights the segmenter plans for PyTorch (the main environment's runtime).
    plan = plan_batches(MesmerSegmenter(), (512, 512), 0.5, device_free_bytes=79 * GiB,
                        host_free_bytes=120 * GiB)
    # (79 x 0.8 - 1.5) GiB / 128 MiB = 493 -> cap 256 tiles; a 512² patch has 9 tiles.
    assert plan.tiles_per_call == 256
    assert plan.patches_per_task == 29
    assert plan.device_bytes_per_patch == 9 * TORCH_FP32


def test_mesmer_memory_per_tile_follows_runtime_and_precision(no_weights_env, tmp_path):
    assert MesmerSegmenter().device_bytes_per_tile == TORCH_FP32 == 128 * 2**20
    assert MesmerSegmenter(precision="tf32").device_bytes_per_tile == 100 * 2**20
    for half in ("bf16", "fp16"):
        assert MesmerSegmenter(precision=half).device_bytes_per_tile == 64 * 2**20
    (tmp_path / "saved_model.pb").write_bytes(b"")  # a SavedModel runs on TensorFlow
    tensorflow = MesmerSegmenter(model_path=tmp_path)
    assert tensorflow.runtime == "tensorflow"
    assert tensorflow.device_bytes_per_tile == DEVICE_BYTES_PER_TILE["tensorflow"]["fp32"]
    # 12 GiB free: (12 x 0.8 - 1.5) GiB / tile -> 64 fp32 tiles, 129 bf16 tiles, 41 on TF 2.8.
    for segmenter, tiles in ((MesmerSegmenter(), 64), (MesmerSegmenter(precision="bf16"), 129),
                             (tensorflow, 41)):
        plan = plan_batches(segmenter, (512, 512), 0.5, device_free_bytes=12 * GiB,
                            host_free_bytes=64 * GiB)
        assert plan.tiles_per_call == tiles


# --- Mesmer's memory model (no TensorFlow needed) ----------------------------------------------

@pytest.mark.parametrize(("shape", "mpp", "tiles"), [
    ((256, 256), 0.5, 1), ((512, 512), 0.5, 9), ((1024, 1024), 0.5, 25), ((2048, 2048), 0.5, 121),
    ((100, 120), 0.5, 1), ((300, 200), 0.5, 2), ((200, 300), 0.5, 2), ((300, 260), 0.5, 4),
    ((512, 512), 0.25, 1), ((512, 512), 1.0, 25), ((180, 180), 0.65, 1), ((200, 200), 0.65, 4),
])
def test_mesmer_tile_counts(shape, mpp, tiles):
    assert MesmerSegmenter().tiles_per_patch(shape, mpp) == tiles


def test_mesmer_memory_grows_with_tiles(no_weights_env):
    segmenter = MesmerSegmenter()
    small = segmenter.memory_per_patch((256, 256), 0.5)
    large = segmenter.memory_per_patch((1024, 1024), 0.5)
    assert small.device_bytes == TORCH_FP32
    assert large.device_bytes == 25 * TORCH_FP32
    # Host: at least the float32 maps (16 B/px) and the labels, at most a few hundred B/px.
    assert 16 * 1024**2 < large.host_bytes < 400 * 1024**2
    assert segmenter.memory_per_patch((512, 512), 1.0).device_bytes == large.device_bytes


# --- out-of-memory back-off --------------------------------------------------------------------

class ResourceExhaustedError(RuntimeError):
    """Stands in for tensorflow.errors.ResourceExhaustedError (matched by class name)."""


def test_backoff_halves_until_it_fits():
    calls = []

    def network(tiles):
        calls.append(tiles)
        if tiles > 3:
            raise ResourceExhaustedError("OOM")
        return f"ran with {tiles}"

    result, used = run_with_backoff(network, 16)
    assert calls == [16, 8, 4, 2]
    assert (result, used) == ("ran with 2", 2)


def test_backoff_on_memory_error_and_odd_sizes():
    calls = []

    def network(tiles):
        calls.append(tiles)
        if tiles > 1:
            raise MemoryError
        return tiles

    assert run_with_backoff(network, 7) == (1, 1)
    assert calls == [7, 3, 1]


def test_backoff_gives_up_at_one_tile():
    def network(tiles):
        raise ResourceExhaustedError("OOM when allocating tensor")

    with pytest.raises(SegmenterError, match="even with 1 tile per call") as info:
        run_with_backoff(network, 4, what="the test network")
    assert "the test network" in str(info.value)
    assert isinstance(info.value.__cause__, ResourceExhaustedError)


def test_backoff_lets_other_errors_through():
    calls = []

    def network(tiles):
        calls.append(tiles)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_backoff(network, 8)
    assert calls == [8]
    with pytest.raises(ConfigError):
        run_with_backoff(network, 0)


def test_out_of_memory_detection():
    class Subclass(ResourceExhaustedError):
        pass

    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(Subclass("x"))
    assert is_out_of_memory(RuntimeError("OOM when allocating tensor with shape[64,256,256,128]"))
    assert not is_out_of_memory(ValueError("shapes do not match"))

    class OutOfMemoryError(RuntimeError):  # stands in for torch.cuda.OutOfMemoryError
        pass

    assert is_out_of_memory(OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    torch = pytest.importorskip("torch")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.OutOfMemoryError("out of memory"))


def test_backoff_empties_the_cuda_cache(monkeypatch):
    torch = pytest.importorskip("torch")
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def network(tiles):
        if tiles > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return tiles

    assert run_with_backoff(network, 8) == (2, 2)
    assert len(emptied) == 2  # once before each retry


# --- patches per task changes nothing ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["watershed", "fake"])
def test_labels_identical_for_every_patches_per_task(backend):
    batch = tissue_batch(5, 96, 80, seed=5)
    if backend == "fake":
        def per_image(images, image_mpp):  # a per-image segmenter, like every real one
            return np.stack([
                np.stack([(im[..., 1] > np.median(im[..., 1])), im[..., 0] > 200], -1)
                for im in images
            ]).astype(np.uint32)

        from codexdask.segmenters import register_segmenter

        register_segmenter("fake", per_image)
    segmenter = get_segmenter(backend)
    whole = segmenter.predict(batch, 0.5)
    assert whole.shape == (5, 96, 80, 2) and whole.dtype == np.uint32 and whole.max() > 0
    for size in range(1, 6):
        pieces = [segmenter.postprocess(segmenter.infer(batch[i:i + size], 0.5))
                  for i in range(0, 5, size)]
        np.testing.assert_array_equal(np.concatenate(pieces), whole)


@pytest.mark.parametrize(("cores", "cpu", "gpu", "threads", "wanted", "busy"), [
    (64, 0.6, 0.04, 16, 16, 1.0),        # enough cores: the GPU never waits
    (8, 0.6, 0.04, 8, 16, 7 * 0.04 / 0.6),
    (1, 0.6, 0.04, 1, 16, 0.04 / 0.64),  # one thread infers and post-processes in turn
    (4, 0.01, 0.04, 2, 2, 1.0),          # cheap post-processing: one CPU thread is plenty
])
def test_gpu_threads_arithmetic(cores, cpu, gpu, threads, wanted, busy):
    feed = planner.plan_gpu_threads(cores, cpu, gpu)
    assert (feed.threads, feed.wanted) == (threads, wanted)
    assert feed.gpu_busy_fraction == pytest.approx(busy)
    assert feed.as_dict()["cpu_s_per_mp"] == cpu


def test_gpu_threads_refuse_bad_costs():
    with pytest.raises(ConfigError, match="positive costs"):
        planner.plan_gpu_threads(8, 0.0, 0.04)
    with pytest.raises(ConfigError, match="cores_per_gpu >= 1"):
        planner.plan_gpu_threads(0, 0.5, 0.04)
