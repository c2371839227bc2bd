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

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine import build_graph, run, run_serial, submit
from codexdask.errors import OutputExistsError, StoreError
from codexdask.layout import MASK_NAMES, RESULT_STAT_COLUMNS
from codexdask.outputs import load_manifest
from codexdask.patches import open_patch_store, write_patch_store
from codexdask.segmenters import get_segmenter
from codexdask.segmenters.planner import BatchPlan
from codexdask.synthetic import synthetic_slide

PATCH = 96
EMPTY_PATCHES = (2, 5)


def make_store(path: Path, *, n_patches: int = 7, empty=EMPTY_PATCHES) -> Path:
    """A 1 x n_patches row of patches; the nucleus channel is blanked in the ``empty`` ones."""
    slide = synthetic_slide(PATCH, PATCH * n_patches, seed=3, empty_fraction=0.0)
    image = slide.image.copy()
    for k in empty:
        image[0, :, k * PATCH : (k + 1) * PATCH] = 0
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                         patch_size=(PATCH, PATCH), overlap=0.0)
    return write_patch_store(image, path, config, channel_names=slide.channel_names)


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
    assert result.plan.patches_per_task == 3
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
    assert manifest["plan"]["patches_per_task"] == 3
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
    """What the scheduler receives: only inference tasks restricted to GPU workers."""
    patch_store = open_patch_store(store)
    plan = BatchPlan(patches_per_task=2, tiles_per_call=None, device_bytes_per_patch=0,
                     host_bytes_per_patch=0, reason="test")
    stats = build_graph(patch_store, patch_store.informative_indices, plan,
                        get_segmenter("watershed"), 0.5, str(tmp_path / "unused"), "lowest-label",
                        pin_gpu=True)
    # No worker has a GPU, so the restricted tasks wait in the scheduler where we can read them.
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as cpu_client:
        future = submit(cpu_client, stats)
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
        future.cancel()
    pinned = {key: state for key, (res, state) in restrictions.items() if res == {"GPU": 1}}
    assert len(pinned) == 3
    assert all("infer_batch" in key and state == "no-worker" for key, state in pinned.items())
    unpinned = [key for key, (res, _) in restrictions.items() if not res]
    assert not any("infer_batch" in key for key in unpinned)
