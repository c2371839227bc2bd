"""Code written against the seed's description runs unchanged on codexdask.compat."""

import pickle

import numpy as np
import pandas as pd
import pytest
import tifffile
import zstandard
from distributed import Client, LocalCluster
from helpers.patch_stores import EMPTY_PATCHES, make_store

from codexdask.compat import (
    CodexPatches,
    _separate_batch,
    get_boundary,
    patch_config,
    repair_masks_batch,
    run_cell_segmentation,
    segment,
)
from codexdask.engine.runner import run_serial
from codexdask.synthetic import synthetic_slide

# The reference's nested configuration; keys outside the segmentation phase are ignored.
SEED_CONFIG = {
    "exp_id": "demo",
    "data": {"image_mpp": 0.5, "generate_channel_stats": False},
    "channels": {"nuclear_channel": "DAPI", "wholecell_channel": ["CD45", "PanCK", "NaKATPase"]},
    "patching": {"split_mode": "patches", "patch_height": 96, "patch_width": 96, "overlap": 0.0},
    "patch_qc": {"non_zero_perc_threshold": 0.05, "mean_intensity_threshold": 1},
    "segmentation": {
        "backend": "watershed",
        "save_segmentation_pickle": True,
        "save_segmentation_images": False,
        "segmentation_pickle_compression": "zstd",
        "segmentation_pickle_compression_level": 5,
        "repair": {"use_gpu": False},
        "segmentation_analysis": {},
    },
    "evaluation": {"compute_metrics": False},
}


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as dask_client:
        yield dask_client


def test_seed_style_pipeline_runs_unchanged(tmp_path, client):
    store = make_store(tmp_path / "slide.zarr")
    codex_patches = CodexPatches(store, tmp_path / "out", SEED_CONFIG)

    # -- the seed's code, as described --
    run_cell_segmentation(codex_patches, SEED_CONFIG, None, client=client)
    metadata = codex_patches.patches_metadata
    repaired = codex_patches.repaired_seg_res_batch
    original = codex_patches.seg_res_batch
    # -----------------------------------

    assert codex_patches.valid_patches.shape == (5, 96, 96, 2)
    assert len(repaired) == len(original) == 5
    assert metadata.loc[list(EMPTY_PATCHES), "matched_fraction"].isna().all()
    informative = metadata[metadata["is_informative"]]
    assert informative["matched_fraction"].tolist() == [e["matched_fraction"] for e in repaired]
    serial = list(run_serial(store))
    for entry, (_, masks, _) in zip(repaired, serial):
        np.testing.assert_array_equal(entry["cell_matched_mask"], masks["cell_matched_mask"])
    for name in ("matched", "original"):
        with open(tmp_path / "out" / f"{name}_seg_res_batch.pickle.zst", "rb") as f:
            data = pickle.loads(zstandard.ZstdDecompressor().stream_reader(f).read())
        assert len(data) == 5
    csv = pd.read_csv(tmp_path / "out" / "patches_metadata.csv")
    assert csv["matched_fraction"].isna().sum() == 2


def test_segment_separate_boundary_and_repair_functions():
    slide = synthetic_slide(128, 128, seed=5, empty_fraction=0.0)
    valid_patches = slide.two_channel()[np.newaxis]
    seg_res_batch = segment(valid_patches, SEED_CONFIG)
    assert set(seg_res_batch[0]) == {"cell", "nucleus", "cell_boundary", "nucleus_boundary"}
    np.testing.assert_array_equal(seg_res_batch[0]["cell_boundary"],
                                  get_boundary(seg_res_batch[0]["cell"]))
    stacked = np.stack([seg_res_batch[0]["cell"], seg_res_batch[0]["nucleus"]], axis=-1)[None]
    cells, nuclei = _separate_batch(stacked)
    np.testing.assert_array_equal(cells[0], seg_res_batch[0]["cell"])
    np.testing.assert_array_equal(nuclei[0], seg_res_batch[0]["nucleus"])
    repaired = repair_masks_batch(seg_res_batch, use_gpu=False, gpu_batch_size=None)
    assert repaired[0]["n_matched"] > 0
    assert repaired[0]["cell_matched_mask"].dtype == np.uint32


def test_from_slide_accepts_nuclear_channel_synonym(tmp_path):
    slide = synthetic_slide(96, 192, seed=2, empty_fraction=0.0)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, slide.image, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": slide.channel_names}})
    codex_patches = CodexPatches.from_slide(path, SEED_CONFIG, tmp_path / "out")
    assert codex_patches.store.attrs["nucleus_channel"] == "DAPI"
    assert len(codex_patches.get_patches_metadata()) == 2
    assert patch_config({"channels": {"nucleus_channel": "H3"}}).nucleus == "H3"


def test_no_informative_patch_returns_none_with_warning(tmp_path, client):
    store = make_store(tmp_path / "empty.zarr", n_patches=2, empty=(0, 1))
    codex_patches = CodexPatches(store, tmp_path / "out", SEED_CONFIG)
    with pytest.warns(UserWarning, match="no informative"):
        assert run_cell_segmentation(codex_patches, SEED_CONFIG, client=client) is None
    assert codex_patches.seg_res_batch is None
