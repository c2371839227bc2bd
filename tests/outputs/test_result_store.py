"""The result store masks.zarr (codexdask.outputs.result_store)."""

import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.result_stores import make_store, masks_for, stats_for

from codexdask.errors import InputError, OutputExistsError, StoreError
from codexdask.layout import MASK_NAMES, RESULT_STAT_COLUMNS
from codexdask.outputs import (
    create_result_store,
    open_result_store,
    read_stats_table,
    write_patch_result,
)


@pytest.fixture
def store(tmp_path):
    """A 5-patch result store; patches 0, 2, 3 informative and done, 1 and 4 untouched."""
    return make_store(tmp_path)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_create_result_store_layout(tmp_path, zarr_format):
    group = create_result_store(tmp_path / "masks.zarr", 3, (8, 10), patch_store="rel/slide.zarr",
                                zarr_format=zarr_format)
    assert group.metadata.zarr_format == zarr_format
    for name in MASK_NAMES:
        array = group[name]
        assert (array.shape, array.chunks, array.dtype) == ((3, 8, 10), (1, 8, 10), np.uint32)
        assert array.fill_value == 0 and array.shards is None  # one patch is one chunk
        (codec,) = array.compressors
        assert str(codec.cname).endswith("zstd")
        assert str(codec.shuffle) in ("1", "BloscShuffle.shuffle")  # byte shuffle (v2, v3)
    assert (group["done"].shape, group["done"].chunks, group["done"].dtype) == ((3,), (1,), bool)
    stats = group["stats"]
    n_columns = len(RESULT_STAT_COLUMNS)
    assert (stats.shape, stats.chunks) == ((3, n_columns), (1, n_columns))
    assert np.isnan(stats[:]).all() and not group["done"][:].any()
    info = group.attrs["codexdask"]
    assert info["kind"] == "result-store" and info["version"] == 1
    assert info["n_patches"] == 3 and info["patch_shape"] == [8, 10]
    assert Path(info["patch_store"]).is_absolute() and info["patch_store"].endswith("slide.zarr")
    with pytest.raises(OutputExistsError):
        create_result_store(tmp_path / "masks.zarr", 3, (8, 10), patch_store="x")
    assert create_result_store(tmp_path / "masks.zarr", 2, (4, 4), patch_store="x",
                               overwrite=True)["cell"].shape == (2, 4, 4)


def test_open_result_store_refuses_missing_and_foreign(tmp_path, store):
    assert open_result_store(tmp_path / "masks.zarr")["cell"].shape == (5, 8, 10)
    with pytest.raises(StoreError, match="no result store"):
        open_result_store(tmp_path / "absent.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not written by codexdask"):
        open_result_store(tmp_path / "other.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError):
        open_result_store(tmp_path / "plain")


def test_write_patch_result_round_trip_and_stats_table(tmp_path, store):
    expected = masks_for(3)
    for name in MASK_NAMES:
        np.testing.assert_array_equal(store[name][3], expected[name])
    np.testing.assert_array_equal(store["cell"][1], 0)  # never written -> fill value
    table = read_stats_table(store)
    assert list(table.columns) == [*RESULT_STAT_COLUMNS, "done"]
    assert table["done"].tolist() == [True, False, True, True, False]
    np.testing.assert_array_equal(table.loc[0, list(RESULT_STAT_COLUMNS)].to_numpy(dtype=float),
                                  stats_for(3, 2, 2, 2 / 3))
    assert table.loc[[1, 4], list(RESULT_STAT_COLUMNS)].isna().all().all()


def test_stats_row_without_done_reads_as_nan(store):
    store["stats"][1] = stats_for(1, 1, 1, 1.0)  # a crash after the stats, before done
    assert read_stats_table(store).loc[1, list(RESULT_STAT_COLUMNS)].isna().all()


def test_write_patch_result_accepts_a_mapping_and_casts(store):
    masks = {name: mask.astype(np.int64) for name, mask in masks_for(7).items()}
    write_patch_result(store, 4, masks, {"n_cells": 5, "infer_s": 1.5})
    assert store["cell"].dtype == np.uint32
    np.testing.assert_array_equal(store["cell"][4], masks["cell"])
    row = read_stats_table(store).loc[4]
    assert row["n_cells"] == 5 and row["infer_s"] == 1.5 and np.isnan(row["matched_fraction"])


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_only_written_patches_are_stored(tmp_path, zarr_format):
    """Patches never written (not informative) cost no file; a written patch of zeros is stored
    (a few bytes) and replaces what was there."""
    group = create_result_store(tmp_path / "m.zarr", 3, (8, 10), patch_store="x",
                                zarr_format=zarr_format)
    write_patch_result(group, 1, masks_for(4), stats_for(1, 1, 1, 1.0))
    zeros = {name: np.zeros((8, 10), np.uint32) for name in MASK_NAMES}
    write_patch_result(group, 1, zeros, stats_for(0, 0, 0, math.nan))
    metadata = {"zarr.json", ".zarray", ".zattrs"}

    def chunk_files(name):
        return [p for p in (tmp_path / "m.zarr" / name).rglob("*")
                if p.is_file() and p.name not in metadata]
    for name in MASK_NAMES:
        assert len(chunk_files(name)) == 1, name
        assert not group[name][1].any() and not group[name][0].any()
        assert sum(p.stat().st_size for p in chunk_files(name)) < 200
    assert len(chunk_files("stats")) == 1 and len(chunk_files("done")) == 1
    assert bool(group["done"][1]) and not group["done"][0]


def test_large_patches_are_sharded_one_shard_per_patch(tmp_path):
    """A patch larger than INNER_CHUNK is one shard (one writer, one file) of inner chunks, so a
    reader of a window decodes only the chunks it needs; v2 keeps one chunk per patch."""
    group = create_result_store(tmp_path / "m.zarr", 3, (1200, 2048), patch_store="x")
    assert group["cell"].shards == (1, 1200, 2048) and group["cell"].chunks == (1, 400, 512)
    write_patch_result(group, 2, masks_for(3, shape=(1200, 2048)), stats_for(1, 1, 1, 1.0))
    files = [p for p in (tmp_path / "m.zarr" / "cell").rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path / "m.zarr" / "cell").as_posix() for p in files) == \
        ["c/2/0/0", "zarr.json"]
    np.testing.assert_array_equal(group["cell"][2], masks_for(3, shape=(1200, 2048))["cell"])
    v2 = create_result_store(tmp_path / "v2.zarr", 3, (1200, 2048), patch_store="x",
                             zarr_format=2)
    assert v2["cell"].chunks == (1, 1200, 2048)


def test_write_patch_result_rejects_bad_input(store):
    masks = masks_for(1)
    with pytest.raises(InputError, match="missing"):
        write_patch_result(store, 1, {k: v for k, v in masks.items() if k != "cell"},
                           stats_for(1, 1, 1, 1.0))
    with pytest.raises(InputError, match="shape"):
        write_patch_result(store, 1, {**masks, "nucleus": np.zeros((8, 9), np.uint32)},
                           stats_for(1, 1, 1, 1.0))
    with pytest.raises(InputError, match="uint32"):
        write_patch_result(store, 1, {**masks, "cell": -np.ones((8, 10), np.int64)},
                           stats_for(1, 1, 1, 1.0))
    with pytest.raises(InputError, match="stats"):
        write_patch_result(store, 1, masks, np.zeros(3))
    with pytest.raises(InputError, match="unknown"):
        write_patch_result(store, 1, masks, {"n_cell": 1})
    assert not store["done"][1]  # nothing was marked done
