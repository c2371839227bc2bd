"""The Dask engine against a plain serial loop, on a real LocalCluster and real Zarr stores."""

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client, LocalCluster, SpecCluster, Worker
from helpers.patch_stores import EMPTY_PATCHES, make_store

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine import progress
from codexdask.engine.patch_graph import build_graph, submit
from codexdask.engine.plan import RunPlan, plan_batches_on
from codexdask.engine.runner import run, run_serial
from codexdask.errors import ClusterError, OutputExistsError, StoreError
from codexdask.hardware import WORKER_IDLE_BYTES
from codexdask.layout import (
    MASK_NAMES,
    MATCHED_KEYS,
    MATCHED_PICKLE,
    ORIGINAL_KEYS,
    ORIGINAL_PICKLE,
    RESULT_STAT_COLUMNS,
    RESULT_STORE,
)
from codexdask.outputs import load_manifest, load_seg_res, open_result_store
from codexdask.segmenters import MemoryEstimate, Segmenter, get_segmenter
from codexdask.segmenters.planner import HOST_FRACTION, BatchPlan
from codexdask.store.patch_store import open_patch_store, write_patch_store

MiB = 2**20



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "slide.zarr")


@pytest.fixture(scope="module")
def finished_run(store, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run(store, out, SegmentConfig(batch_size=3, pickle_compression="gzip"), client=client)
    return out, result


def test_store_has_the_awkward_shape(store):
    patch_store = open_patch_store(store)
    assert patch_store.n_patches == 7
    assert patch_store.informative_indices.tolist() == [0, 1, 3, 4, 6]


def test_dask_result_equals_serial_loop(store, finished_run):
    out, result = finished_run
    assert result.plan.batch.patches_per_task == 3
    assert result.n_computed == 5
    group = zarr.open_group(str(out / "masks.zarr"), mode="r")
    serial = list(run_serial(store, SegmentConfig()))
    assert [index for index, _, _ in serial] == [0, 1, 3, 4, 6]
    for index, masks, stats in serial:
        for name in MASK_NAMES:
            np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)
        np.testing.assert_array_equal(group["stats"][index][: len(stats)], stats)
    assert group["cell"][0].max() > 0, "the fixture should contain cells"
    for index in EMPTY_PATCHES:
        assert not group["done"][index]
        assert all(group[name][index].max() == 0 for name in MASK_NAMES)


def test_metadata_csv_has_stats_and_nan_for_skipped_rows(finished_run):
    out, result = finished_run
    csv = pd.read_csv(out / "patches_metadata.csv")
    assert len(csv) == 7
    assert set(RESULT_STAT_COLUMNS) <= set(csv.columns)
    assert csv.loc[list(EMPTY_PATCHES), "matched_fraction"].isna().all()
    informative = csv[csv["is_informative"]]
    assert informative["matched_fraction"].between(0, 1).all()
    assert (informative["n_matched"] <= informative["n_cells"]).all()
    assert (informative["infer_s"] >= 0).all()


def test_pickles_are_compact_lists_in_informative_order(finished_run):
    out, _ = finished_run
    group = zarr.open_group(str(out / "masks.zarr"), mode="r")
    import gzip

    with gzip.open(out / "original_seg_res_batch.pickle.gz", "rb") as f:
        original = pickle.load(f)
    with gzip.open(out / "matched_seg_res_batch.pickle.gz", "rb") as f:
        matched = pickle.load(f)
    assert len(original) == len(matched) == 5
    for entry, index in zip(original, [0, 1, 3, 4, 6]):
        assert set(entry) == {"cell", "nucleus", "cell_boundary", "nucleus_boundary"}
        np.testing.assert_array_equal(entry["cell"], group["cell"][index])
    for entry, index in zip(matched, [0, 1, 3, 4, 6]):
        np.testing.assert_array_equal(entry["nucleus_matched_mask"],
                                      group["nucleus_matched_mask"][index])
        assert entry["matching_stats"]["whole_cell"]["total"][0] == entry["n_cells"]


def test_manifest_is_written_last_with_plan_and_versions(finished_run):
    out, _ = finished_run
    manifest = load_manifest(out)
    assert manifest["n_informative"] == 5
    assert manifest["plan"]["batch"]["patches_per_task"] == 3
    assert "dask" in manifest["versions"]
    assert json.loads((out / "run_manifest.json").read_text()) == manifest


def test_existing_output_is_refused_then_resumed_or_overwritten(store, finished_run, client):
    out, _ = finished_run
    with pytest.raises(OutputExistsError, match="--resume"):
        run(store, out, SegmentConfig(), client=client)
    resumed = run(store, out, SegmentConfig(resume=True, save_mosaics=False), client=client)
    assert resumed.n_computed == 0


def test_resume_of_other_store_is_refused(tmp_path, finished_run, client):
    out, _ = finished_run
    other = make_store(tmp_path / "other.zarr", n_patches=3, empty=())
    with pytest.raises(StoreError, match="resume with the same patch store"):
        run(other, out, SegmentConfig(resume=True), client=client)


def test_zero_informative_patches_warn_and_give_empty_outputs(tmp_path, client):
    store = make_store(tmp_path / "empty.zarr", n_patches=2, empty=(0, 1))
    with pytest.warns(UserWarning, match="no informative patch"):
        result = run(store, tmp_path / "out", SegmentConfig(), client=client)
    assert result.n_computed == 0
    assert result.metadata["matched_fraction"].isna().all()
    with open(tmp_path / "out" / "matched_seg_res_batch.pickle", "rb") as f:
        assert pickle.load(f) == []
    assert load_manifest(tmp_path / "out")["n_informative"] == 0


class RecordingSegmenter:
    """Watershed that records which worker ran each inference (to check GPU pinning)."""

    def __new__(cls, log_dir):
        segmenter = get_segmenter("watershed")
        inner_infer = segmenter.infer

        def infer(batch, image_mpp):
            from distributed import get_worker

            (Path(log_dir) / f"{get_worker().name}-{time.perf_counter_ns()}").touch()
            return inner_infer(batch, image_mpp)

        segmenter.infer = infer
        segmenter.wants_gpu = True
        return segmenter


def test_inference_runs_only_on_gpu_workers(store, tmp_path):
    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 2}},
    }
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    with SpecCluster(workers=workers, scheduler={"cls": __import__("distributed").Scheduler,
                                                 "options": {"dashboard_address": ":0"}},
                     asynchronous=False) as cluster, Client(cluster) as gpu_client:
        run(store, tmp_path / "out", SegmentConfig(batch_size=1, save_mosaics=False),
            client=gpu_client, segmenter=RecordingSegmenter(log_dir))
    ran_on = {path.name.split("-")[0] for path in log_dir.iterdir()}
    assert len(list(log_dir.iterdir())) == 5
    assert ran_on == {"gpu"}


def test_gpu_annotation_survives_graph_optimisation(store, tmp_path):
    """What the scheduler receives: only the network tasks restricted to GPU workers; their
    batches were prepared on the CPU worker."""
    patch_store = open_patch_store(store)
    plan = BatchPlan(patches_per_task=2, tiles_per_call=None, device_bytes_per_patch=0,
                     host_bytes_per_patch=0, reason="test")
    informative = tuple(int(i) for i in patch_store.informative_indices)
    run_plan = RunPlan(split_mode="patches", image_mpp=0.5, tie_break="lowest-label",
                       informative=informative, todo=informative, batch=plan, blocks=None,
                       patches=(), chunk=patch_store.patch_shape, pin_gpu=True, gpu_feed=None,
                       in_flight=8, weights=None)
    graph = build_graph(patch_store, run_plan, get_segmenter("watershed"), str(tmp_path / "unused"))
    # No worker has a GPU, so the restricted tasks wait in the scheduler where we can read them.
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as cpu_client:
        futures = submit(cpu_client, graph)
        deadline = time.monotonic() + 30
        while True:
            restrictions = cpu_client.run_on_scheduler(
                lambda dask_scheduler: {
                    str(key): (ts.resource_restrictions, ts.state)
                    for key, ts in dask_scheduler.tasks.items()
                }
            )
            waiting = [state for _, state in restrictions.values() if state == "no-worker"]
            if len(waiting) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        cpu_client.cancel(futures)
    pinned = {key: state for key, (res, state) in restrictions.items() if res == {"GPU": 1}}
    assert len(pinned) == 3
    assert all("network_batch" in key and state == "no-worker" for key, state in pinned.items())
    unpinned = {key: state for key, (res, state) in restrictions.items() if not res}
    assert not any("network_batch" in key for key in unpinned)
    prepared = [state for key, state in unpinned.items() if "prepare_batch" in key]
    assert len(prepared) == 3 and all(state in ("memory", "released") for state in prepared)


# --------------------------------------------------------------------------------------------
# Patches smaller than the store's patch shape (halves and quarters of odd-sized slides)

QUARTER_SIZES = [(503, 671), (503, 672), (504, 671), (504, 672)]


class WholeImageSegmenter(Segmenter):
    """Labels every pixel it is given as cell 1, and every pixel with nucleus signal as nucleus 1.

    Zero padding handed to it would show as cell pixels in the padding; a cell edge at the true
    patch edge would gain a boundary from padding next to it.
    """

    name = "whole-image"

    def infer(self, batch, image_mpp):
        return np.asarray(batch)

    def postprocess(self, maps):
        cell = np.ones(maps.shape[:3] + (1,), np.uint32)
        return np.concatenate([cell, (maps[..., :1] > 0).astype(np.uint32)], axis=-1)


@pytest.fixture(scope="module")
def quarters_store(tmp_path_factory):
    """A 1007 x 1343 slide, nucleus signal everywhere, cut in quarters of four different sizes."""
    rng = np.random.default_rng(7)
    image = rng.integers(1, 1000, size=(2, 1007, 1343), dtype=np.uint16)
    config = PatchConfig(nucleus="DAPI", wholecell=["CD45"], split_mode="quarters")
    path = tmp_path_factory.mktemp("quarters") / "slide.zarr"
    return write_patch_store(image, path, config, channel_names=["DAPI", "CD45"])


def test_quarters_pickle_entries_have_the_true_patch_sizes(quarters_store, tmp_path, client):
    out = tmp_path / "out"
    run(quarters_store, out, SegmentConfig(save_mosaics=False, n_overlays=0), client=client,
        segmenter=WholeImageSegmenter())
    for name, keys in ((ORIGINAL_PICKLE, ORIGINAL_KEYS), (MATCHED_PICKLE, MATCHED_KEYS)):
        entries = load_seg_res(out / name)
        assert [tuple(e[key].shape) for e in entries for key in keys[:1]] == QUARTER_SIZES
        assert all(e[key].shape == e[keys[0]].shape for e in entries for key in keys)


def test_segmentation_and_repair_see_the_true_patch_not_its_padding(quarters_store, tmp_path,
                                                                    client):
    out = tmp_path / "out"
    run(quarters_store, out, SegmentConfig(save_mosaics=False, n_overlays=0), client=client,
        segmenter=WholeImageSegmenter())
    group = open_result_store(out / RESULT_STORE, mode="r")
    assert group["cell"].shape == (4, 504, 672)  # stored zero-padded to the largest quarter
    for index, (h, w) in enumerate(QUARTER_SIZES):
        cell = group["cell"][index]
        assert (cell[:h, :w] == 1).all() and not cell[h:].any() and not cell[:, w:].any()
        # The true patch edge is the image edge: no boundary along it, in any mask.
        for name in ("cell_boundary", "nucleus_boundary", "cell_matched_boundary"):
            assert not group[name][index].any(), (index, name)
        nucleus = group["nucleus_matched_mask"][index]
        assert (nucleus[:h, :w] == 1).all() and int(nucleus.sum()) == h * w
    serial = {index: masks for index, masks, _ in
              run_serial(quarters_store, segmenter=WholeImageSegmenter())}
    for index in range(4):
        np.testing.assert_array_equal(serial[index]["cell"], group["cell"][index])


# --------------------------------------------------------------------------------------------
# Progress output off a terminal


def test_progress_off_a_terminal_is_plain_lines(store, tmp_path, client, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 3600.0)  # lines by percent only, here
    run(store, tmp_path / "out", SegmentConfig(batch_size=1, save_mosaics=False, n_overlays=0),
        client=client, progress=True)
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "\r" not in printed  # no bar redrawn in place
    lines = [line for line in printed.splitlines() if "% done" in line]
    assert lines and lines[-1].startswith("segmentation: 100% done")
    assert len(lines) <= 12  # at most one line per 10 % (plus the last), however long the run


# --------------------------------------------------------------------------------------------
# Planning: the worker's own memory and the GPU's


def test_host_budget_leaves_out_what_the_worker_already_holds(store):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      memory_limit="400MiB", dashboard_address=":0") as cluster, \
            Client(cluster) as small:
        plan, _ = plan_batches_on(small, FixedMemorySegmenter(), (96, 96), 0.5,
                                  SegmentConfig(), n_units=10_000)
    # Without the worker's own ~145 MiB the budget would be 400 MiB x 0.5 = 4 patches of 50 MiB.
    fit = int((400 * MiB - WORKER_IDLE_BYTES) * HOST_FRACTION) // (50 * MiB)
    assert plan.patches_per_task <= fit == 2


class FixedMemorySegmenter(WholeImageSegmenter):
    """50 MiB of host memory per patch."""

    def memory_per_patch(self, shape, image_mpp):
        return MemoryEstimate(device_bytes=0, host_bytes=50 * MiB)


class GpuWholeImageSegmenter(WholeImageSegmenter):
    """A segmenter that wants a GPU (its inference tasks are pinned to GPU workers)."""

    wants_gpu = True


def test_a_gpu_that_cannot_be_measured_is_a_warning_in_the_manifest(store, tmp_path, fake_nvml):
    fake_nvml(gpus=[("H100", "GPU-aaa", 80 * 2**30, 79 * 2**30)], query_error="NVMLError_Unknown")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as gpu_client:
        result = run(store, tmp_path / "out", SegmentConfig(save_mosaics=False, n_overlays=0),
                     client=gpu_client, segmenter=GpuWholeImageSegmenter())
        (warning,) = result.manifest["warnings"]
        assert "NVMLError_Unknown" in warning and "CPU memory" in warning
        assert load_manifest(tmp_path / "out")["warnings"] == [warning]
        with pytest.raises(ClusterError, match="NVMLError_Unknown.*drop --gpus"):
            run(store, tmp_path / "out2", SegmentConfig(gpus=True), client=gpu_client,
                segmenter=GpuWholeImageSegmenter())
