"""Result store, pickles, metadata CSV, manifest and whole-slide mosaics (codexdask.outputs)."""

import gzip
import json
import math
import pickle
import pickletools
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from codexdask.errors import ConfigError, InputError, OutputExistsError, StoreError
from codexdask.layout import (
    MASK_NAMES,
    MATCHED_KEYS,
    ORIGINAL_KEYS,
    RESULT_STAT_COLUMNS,
    pickle_suffix,
)
from codexdask.outputs import (
    atomic_path,
    create_result_store,
    iter_seg_res,
    load_seg_res,
    open_result_store,
    pyramid_shapes,
    read_stats_table,
    write_manifest,
    write_metadata_csv,
    write_mosaics,
    write_patch_result,
    write_pickle_stream,
    write_seg_res_pickles,
)

COMPRESSIONS = ("none", "gzip", "bz2", "xz", "zstd")


# ---------------------------------------------------------------------------------------------
# helpers


def masks_for(seed: int, shape=(8, 10)) -> dict[str, np.ndarray]:
    """Nine random-ish uint32 masks of ``shape`` (values differ per mask and seed)."""
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 5 + k, size=shape).astype(np.uint32)
            for k, name in enumerate(MASK_NAMES)}


def stats_for(n_cells: int, n_nuclei: int, n_matched: int, jaccard: float) -> np.ndarray:
    values = {
        "matched_fraction": (n_matched + 1) / (n_cells + n_nuclei - n_matched + 1),
        "n_cells": n_cells, "n_nuclei": n_nuclei, "n_matched": n_matched, "n_repaired": 1,
        "frac_cells_matched": n_matched / n_cells if n_cells else math.nan,
        "frac_nuclei_matched": n_matched / n_nuclei if n_nuclei else math.nan,
        "match_jaccard": jaccard, "infer_s": 0.5, "postprocess_s": 0.25, "repair_s": 0.125,
    }
    return np.array([values[c] for c in RESULT_STAT_COLUMNS], dtype=np.float64)


@pytest.fixture
def store(tmp_path):
    """A 5-patch result store; patches 0, 2, 3 informative and done, 1 and 4 untouched."""
    group = create_result_store(tmp_path / "masks.zarr", 5, (8, 10),
                                patch_store=tmp_path / "slide.zarr")
    write_patch_result(group, 0, masks_for(0), stats_for(3, 2, 2, 2 / 3))
    write_patch_result(group, 2, masks_for(2), stats_for(0, 0, 0, math.nan))
    write_patch_result(group, 3, masks_for(3), stats_for(4, 4, 1, 1 / 7))
    return group


# ---------------------------------------------------------------------------------------------
# constants and atomic writes


def test_constants_follow_the_interface():
    assert MASK_NAMES == ORIGINAL_KEYS + MATCHED_KEYS
    assert MATCHED_KEYS == ("cell_matched_mask", "nucleus_matched_mask",
                            "cell_outside_nucleus_mask", "cell_matched_boundary",
                            "nucleus_matched_boundary")
    assert RESULT_STAT_COLUMNS == ("matched_fraction", "n_cells", "n_nuclei", "n_matched",
                                   "n_repaired", "frac_cells_matched", "frac_nuclei_matched",
                                   "match_jaccard", "infer_s", "postprocess_s", "repair_s")


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    final = tmp_path / "a.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.tmp-")
        tmp.write_text("one")
        assert not final.exists()
    assert final.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("two")
        raise RuntimeError("boom")
    assert final.read_text() == "one"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_atomic_path_directories(tmp_path):
    final = tmp_path / "d"
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(OutputExistsError), atomic_path(final) as tmp:
        tmp.mkdir()
    assert (final / "x").exists()
    with atomic_path(final, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ---------------------------------------------------------------------------------------------
# result store


def test_create_result_store_layout(tmp_path):
    group = create_result_store(tmp_path / "masks.zarr", 3, (8, 10), patch_store="rel/slide.zarr")
    for name in MASK_NAMES:
        array = group[name]
        assert (array.shape, array.chunks, array.dtype) == ((3, 8, 10), (1, 8, 10), np.uint32)
        assert array.fill_value == 0
        assert array.compressor.cname == "zstd" and array.compressor.shuffle == 2  # bitshuffle
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


def test_empty_masks_store_no_chunks(tmp_path):
    group = create_result_store(tmp_path / "m.zarr", 2, (8, 10), patch_store="x")
    zeros = {name: np.zeros((8, 10), np.uint32) for name in MASK_NAMES}
    write_patch_result(group, 1, zeros, stats_for(0, 0, 0, math.nan))
    assert not (tmp_path / "m.zarr" / "cell" / "1.0.0").exists()  # write_empty_chunks=False
    assert (tmp_path / "m.zarr" / "stats" / "1.0").exists()
    assert bool(group["done"][1])


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


# ---------------------------------------------------------------------------------------------
# pickles


def expected_matching_stats(c: int, n: int, m: int) -> dict:
    def block(total):
        pct = (lambda k: 100.0 * k / total) if total else (lambda k: 0)
        return {"total": (total, 100.0), "matched": (m, pct(m)),
                "unmatched": (total - m, pct(total - m))}

    return {"nucleus": block(n), "whole_cell": block(c)}


def assert_entries_equal(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == np.uint32 and got[key].shape == value.shape
                np.testing.assert_array_equal(got[key], value)
            elif isinstance(value, float) and math.isnan(value):
                assert isinstance(got[key], float) and math.isnan(got[key])
            else:
                assert got[key] == value and type(got[key]) is type(value), key


def expected_lists(indices=(0, 2, 3)):
    counts = {0: (3, 2, 2, 2 / 3), 2: (0, 0, 0, math.nan), 3: (4, 4, 1, 1 / 7)}
    original, matched = [], []
    for i in indices:
        masks = masks_for(i)
        c, n, m, jac = counts[i]
        stats = dict(zip(RESULT_STAT_COLUMNS, stats_for(c, n, m, jac).tolist(), strict=True))
        original.append({k: masks[k] for k in ORIGINAL_KEYS})
        matched.append({
            **{k: masks[k] for k in MATCHED_KEYS},
            "matched_fraction": stats["matched_fraction"],
            "matching_stats": expected_matching_stats(c, n, m),
            "n_cells": c, "n_nuclei": n, "n_matched": m, "n_repaired": 1,
            "frac_cells_matched": stats["frac_cells_matched"],
            "frac_nuclei_matched": stats["frac_nuclei_matched"],
            "match_jaccard": jac,
        })
    return original, matched


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_seg_res_pickles_round_trip(tmp_path, store, compression):
    paths = write_seg_res_pickles(store, [0, 2, 3], tmp_path / "out", compression=compression,
                                  level=1 if compression != "none" else None)
    suffix = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}[compression]
    assert [p.name for p in paths] == [f"original_seg_res_batch.pickle{suffix}",
                                       f"matched_seg_res_batch.pickle{suffix}"]
    original, matched = expected_lists()
    assert_entries_equal(load_seg_res(paths[0]), original)
    assert_entries_equal(load_seg_res(paths[1]), matched)
    # the suffix may be omitted, and the file is a plain pickle of one list
    assert_entries_equal(load_seg_res(tmp_path / "out" / "matched_seg_res_batch.pickle"), matched)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_plain_pickle_load_and_protocol(tmp_path, store):
    original_path, _ = write_seg_res_pickles(store, [3, 0], tmp_path)
    with open(original_path, "rb") as fh:
        data = fh.read()
    loaded = pickle.loads(data)
    assert isinstance(loaded, list)
    assert_entries_equal(loaded, [expected_lists((3,))[0][0], expected_lists((0,))[0][0]])
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops[:2] == ["PROTO", "EMPTY_LIST"] and ops[-1] == "STOP"
    assert ops.count("APPEND") == 2
    assert not {"MEMOIZE", "BINGET", "LONG_BINGET"} & set(ops)  # fast mode: no memo


def test_pickles_crop_to_sizes(tmp_path, store):
    write_seg_res_pickles(store, [0, 3], tmp_path, compression="gzip", sizes=[(5, 7), (8, 10)])
    entries = load_seg_res(tmp_path / "matched_seg_res_batch.pickle.gz")
    assert entries[0]["cell_matched_mask"].shape == (5, 7)
    np.testing.assert_array_equal(entries[0]["cell_matched_mask"],
                                  masks_for(0)["cell_matched_mask"][:5, :7])
    assert entries[1]["nucleus_matched_boundary"].shape == (8, 10)


def test_pickles_empty_and_not_done(tmp_path, store):
    paths = write_seg_res_pickles(store, [], tmp_path, compression="zstd")
    assert load_seg_res(paths[0]) == [] and load_seg_res(paths[1]) == []
    with pytest.raises(StoreError, match="resume"):
        write_seg_res_pickles(store, [0, 1], tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    with pytest.raises(ConfigError, match="compression"):  # a setting: errors.py's rule
        write_seg_res_pickles(store, [0], tmp_path, compression="lz4")
    with pytest.raises(StoreError, match="no segmentation pickle"):
        load_seg_res(tmp_path / "absent.pickle")


def test_pickle_suffix_aliases():
    assert [pickle_suffix(c) for c in ("NONE", "gz", "bzip2", "lzma", "zst", "Zstandard")] == [
        "", ".gz", ".bz2", ".xz", ".zst", ".zst"]


def test_write_pickle_stream_holds_one_entry_at_a_time(tmp_path):
    previous_alive = []

    def entries():
        ref = None
        for k in range(4):
            if ref is not None:
                previous_alive.append(ref() is not None)
            array = np.full((64, 64), k, dtype=np.uint32)
            ref = weakref.ref(array)
            yield {"cell": array, "k": k}
            del array

    path = write_pickle_stream(tmp_path / "s.pickle.gz", entries(), compression="gzip")
    assert previous_alive == [False, False, False]  # entry k was freed before k + 1 was made
    with gzip.open(path, "rb") as fh:
        loaded = pickle.load(fh)
    assert [e["k"] for e in loaded] == [0, 1, 2, 3]
    assert all((e["cell"] == e["k"]).all() for e in loaded)


def test_iter_seg_res_yields_lazily(store):
    entries = iter_seg_res(store, [0, 3], "original")
    first = next(entries)
    assert set(first) == set(ORIGINAL_KEYS)
    np.testing.assert_array_equal(first["cell"], masks_for(0)["cell"])
    with pytest.raises(ConfigError):  # a choice of kind is a setting: errors.py's rule
        next(iter_seg_res(store, [0], "repaired"))


# ---------------------------------------------------------------------------------------------
# metadata CSV and manifest


def test_metadata_csv_adds_stats_nan_for_non_informative(tmp_path, store):
    metadata = pd.DataFrame({
        "patch_id": range(5), "x_start": [0, 10, 20, 30, 40], "y_start": 0,
        "is_informative": [True, False, True, True, False],
        "matched_fraction": 9.0,  # stale column from an earlier run: replaced
    })
    table = write_metadata_csv(metadata, read_stats_table(store), tmp_path / "patches_metadata.csv")
    back = pd.read_csv(tmp_path / "patches_metadata.csv")
    assert list(back.columns) == ["patch_id", "x_start", "y_start", "is_informative",
                                  *RESULT_STAT_COLUMNS]
    assert back.loc[[1, 4], list(RESULT_STAT_COLUMNS)].isna().all().all()
    assert back.loc[0, "matched_fraction"] == pytest.approx(3 / 4)
    assert back.loc[0, "n_cells"] == 3 and back.loc[3, "n_matched"] == 1
    assert "n_cells" in (tmp_path / "patches_metadata.csv").read_text().splitlines()[0]
    assert ",3," in (tmp_path / "patches_metadata.csv").read_text().splitlines()[1]  # integer
    assert table.shape == (5, 4 + len(RESULT_STAT_COLUMNS))
    write_metadata_csv(metadata.drop(columns="matched_fraction"), None, tmp_path / "plain.csv")
    assert list(pd.read_csv(tmp_path / "plain.csv").columns) == ["patch_id", "x_start",
                                                                 "y_start", "is_informative"]
    with pytest.raises(InputError, match="rows"):
        write_metadata_csv(metadata.iloc[:3], read_stats_table(store), tmp_path / "bad.csv")


def test_manifest_is_json_with_str_fallback(tmp_path):
    path = write_manifest(tmp_path, {"out": tmp_path, "n": 3, "plan": {"reason": "x"}})
    assert path.name == "run_manifest.json"
    assert json.loads(path.read_text()) == {"out": str(tmp_path), "n": 3, "plan": {"reason": "x"}}
    assert [p.name for p in tmp_path.iterdir()] == ["run_manifest.json"]


# ---------------------------------------------------------------------------------------------
# mosaics


def test_pyramid_shapes_follow_the_reference_rule():
    assert pyramid_shapes(1200, 1200) == [(1200, 1200), (600, 600), (300, 300)]
    assert pyramid_shapes(1000, 3000) == [(1000, 3000), (500, 1500)]
    assert pyramid_shapes(1025, 513) == [(1025, 513), (513, 257)]
    assert pyramid_shapes(511, 5000) == [(511, 5000)]


def fake_patch_store(tmp_path, boxes, informative, patch_shape, padded_shape, seed=0):
    """A patch-store stand-in: zarr patches (N, H, W, 2) uint16, metadata, attrs."""
    n = len(boxes)
    rng = np.random.default_rng(seed)
    patches = zarr.open_array(str(tmp_path / "patches.zarr"), mode="w",
                              shape=(n, *patch_shape, 2), chunks=(1, *patch_shape, 2),
                              dtype=np.uint16)
    patches[:] = rng.integers(1, 1000, size=(n, *patch_shape, 2), dtype=np.uint16)
    metadata = pd.DataFrame(boxes, columns=["y_start", "x_start", "height", "width"])
    metadata["is_informative"] = informative
    attrs = {"padded_shape": list(padded_shape), "slide_shape": list(padded_shape),
             "image_mpp": 0.5, "nucleus_channel": "DAPI", "wholecell_channels": ["CD45"]}
    return SimpleNamespace(patches=patches, metadata=metadata, attrs=attrs)


def reference_mosaic(patch_store, masks, keys):
    """In-memory version of the mosaics' running-offset merge for ``keys`` sharing one offset."""
    canvas = {k: np.zeros(tuple(patch_store.attrs["padded_shape"]), np.uint32) for k in keys}
    offset = 1
    for i, (y, x, h, w, flag) in enumerate(patch_store.metadata.itertuples(index=False)):
        if not flag:
            continue
        crops = {k: masks[i][k][:h, :w] for k in keys}
        for k in keys:
            region = canvas[k][y : y + h, x : x + w]
            write = (region == 0) & (crops[k] > 0)
            region[write] = crops[k][write] + offset - 1
        offset += max(int(c.max()) for c in crops.values())
    return canvas


@pytest.fixture
def small_mosaic(tmp_path):
    """4 patches of 4x6 on an 8x10 canvas; patch 1 overlaps patch 0 (columns 4-5), patch 2 is
    not informative, patch 3 has a true height of 3 (its row 3 carries a label to be cropped)."""
    boxes = [(0, 0, 4, 6), (0, 4, 4, 6), (4, 0, 3, 6), (4, 4, 3, 6)]
    patch_store = fake_patch_store(tmp_path, boxes, [True, True, False, True], (4, 6), (8, 10))
    group = create_result_store(tmp_path / "masks.zarr", 4, (4, 6), patch_store="x")
    z = np.zeros((4, 6), np.uint32)
    masks = [{name: z.copy() for name in MASK_NAMES} for _ in range(4)]
    # patch 0: cells 1, 2; nuclei 1..3; matched pairs 1 and 2, nucleus 2 vanished (max 1 < 2)
    masks[0]["cell"][0:2, 0:3] = 1
    masks[0]["cell"][2:4, 3:6] = 2
    masks[0]["nucleus"][0, 0], masks[0]["nucleus"][3, 4], masks[0]["nucleus"][3, 5] = 1, 2, 3
    masks[0]["cell_matched_mask"][0:2, 0:3] = 1
    masks[0]["cell_matched_mask"][2:4, 3:6] = 2
    masks[0]["nucleus_matched_mask"][0, 0] = 1
    # patch 1 (placed at x=4): cell 1 covers its columns 0-1 = canvas columns 4-5
    masks[1]["cell"][0:4, 0:2] = 1
    masks[1]["cell"][1:3, 4:6] = 2
    masks[1]["nucleus"][1, 1] = 1
    masks[1]["cell_matched_mask"][0:4, 0:2] = 1
    masks[1]["nucleus_matched_mask"][1, 1] = 1
    # patch 2 is not informative: its (stale) labels must not appear
    masks[2]["cell"][:] = 7
    # patch 3: label 1 inside, label 9 in the cropped-away row 3
    masks[3]["cell"][0, 0], masks[3]["cell"][3, 0] = 1, 9
    masks[3]["cell_matched_mask"][0, 0:2] = 1
    masks[3]["nucleus_matched_mask"][0, 1] = 1
    for i in range(4):
        write_patch_result(group, i, masks[i], stats_for(1, 1, 1, 1.0))
    return patch_store, group, masks


def test_mosaic_labels_offsets_overlap_and_placement(tmp_path, small_mosaic):
    patch_store, group, masks = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path / "out", exp_id="run1")
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    cells = root["labels/cells/0"][0]
    nuclei = root["labels/nuclei/0"][0]
    cells_m = root["labels/cells_matched/0"][0]
    nuclei_m = root["labels/nuclei_matched/0"][0]
    # placement and the running offset: patch 0 labels 1, 2; patch 1 shifted by 2; patch 3 by 4
    assert cells[0, 0] == 1 and cells[3, 3] == 2
    assert cells[0, 4] == 3 and cells[1, 8] == 4  # patch 1 labels 1, 2 -> 3, 4
    assert cells[2, 4] == 2  # overlap: patch 0 came first and wins
    assert cells[4, 4] == 5  # patch 3 label 1 -> 1 + (5 - 1); label 9 was cropped
    assert cells[7].max() == 0 and not np.isin(9 + 4, cells)
    assert cells[4:7, 0:4].max() == 0  # non-informative patch 2 carries no labels
    # IDs unique across patches: each label value lives in one patch's box only
    assert sorted(np.unique(cells)) == [0, 1, 2, 3, 4, 5]
    # nuclei: independent offsets (patch 0 had 3 nuclei)
    assert nuclei[0, 0] == 1 and nuclei[1, 5] == 4
    # matched pairs share offsets: patch 0 max(cell 2, nucleus 1) = 2 -> patch 1 pair is 3
    assert cells_m[1, 5] == 3 and nuclei_m[1, 5] == 3
    assert cells_m[4, 5] == 4 and nuclei_m[4, 5] == 4  # patch 3 pair: 1 + (4 - 1)
    for value in np.unique(nuclei_m[nuclei_m > 0]):
        assert set(np.unique(cells_m[nuclei_m == value])) == {value}  # nucleus inside its cell
    # the whole canvases equal an in-memory merge
    for label, key in (("cells", "cell"), ("nuclei", "nucleus")):
        np.testing.assert_array_equal(root[f"labels/{label}/0"][0],
                                      reference_mosaic(patch_store, masks, [key])[key])
    shared = reference_mosaic(patch_store, masks, ["cell_matched_mask", "nucleus_matched_mask"])
    np.testing.assert_array_equal(cells_m, shared["cell_matched_mask"])
    np.testing.assert_array_equal(nuclei_m, shared["nucleus_matched_mask"])
    # the image: every patch (informative or not) at its place, channels first
    image = root["0"][:]
    assert image.shape == (2, 8, 10) and image.dtype == np.uint16
    # (the random test patches disagree on their overlap; check the columns only one covers)
    for i, (y, x, h, _, _) in enumerate(patch_store.metadata.itertuples(index=False)):
        local = slice(0, 4) if x == 0 else slice(2, 6)
        np.testing.assert_array_equal(image[:, y : y + h, x + local.start : x + local.stop],
                                      np.moveaxis(patch_store.patches[i, :h, local], -1, 0))
    assert image[:, 7].max() == 0  # below the true height of patches 2 and 3


def test_mosaic_ome_zarr_metadata(tmp_path, small_mosaic):
    patch_store, group, _ = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path, image_mpp=0.25)
    assert paths["ome_zarr"] == tmp_path / "mosaics" / "slide.ome.zarr"
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    (ms,) = root.attrs["multiscales"]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0"]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.25, 0.25]}]
    assert [c["label"] for c in root.attrs["omero"]["channels"]] == ["DAPI", "CD45"]
    labels = root["labels"]
    assert labels.attrs["labels"] == ["cells", "nuclei", "cells_matched", "nuclei_matched"]
    for name in labels.attrs["labels"]:
        label = labels[name]
        assert label.attrs["image-label"]["source"] == {"image": "../../"}
        assert label.attrs["image-label"]["version"] == "0.4"
        (lms,) = label.attrs["multiscales"]
        assert len(lms["datasets"]) == len(ms["datasets"])
        array = label[lms["datasets"][0]["path"]]
        assert array.dtype == np.uint32 and array.shape == (1, 8, 10)
        assert array._dimension_separator == "/"


def test_mosaic_ome_tiffs(tmp_path, small_mosaic):
    patch_store, group, _ = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path, exp_id="run1")
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    for label, name in (("cells", "cell"), ("nuclei", "nucleus"),
                        ("cells_matched", "cell_matched_mask"),
                        ("nuclei_matched", "nucleus_matched_mask")):
        path = paths[name]
        assert path == tmp_path / "mosaics" / f"run1.{name}.segmentations.ome.tiff"
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome and tif.is_bigtiff
            series = tif.series[0]
            assert len(series.levels) == 1
            data = series.asarray()
            assert data.dtype == np.uint32
            np.testing.assert_array_equal(data.reshape(8, 10), root[f"labels/{label}/0"][0])
            assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
            assert f'Name="{name}"' in tif.ome_metadata
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert tif.pages[0].is_tiled


def test_mosaic_pyramid_levels(tmp_path):
    """1200 x 1200 canvas -> 600 -> 300, in both formats; levels are 2x strides of level 0."""
    boxes = [(0, 0, 600, 600), (0, 600, 600, 600), (600, 0, 600, 600), (600, 600, 600, 600)]
    patch_store = fake_patch_store(tmp_path, boxes, [True, False, True, True], (600, 600),
                                   (1200, 1200))
    group = create_result_store(tmp_path / "masks.zarr", 4, (600, 600), patch_store="x")
    rng = np.random.default_rng(1)
    for i in (0, 2, 3):
        masks = {name: np.zeros((600, 600), np.uint32) for name in MASK_NAMES}
        for k in range(1, 6):
            y, x = rng.integers(0, 560, size=2)
            for name in ("cell", "cell_matched_mask"):
                masks[name][y : y + 40, x : x + 40] = k
            for name in ("nucleus", "nucleus_matched_mask"):
                masks[name][y + 10 : y + 30, x + 10 : x + 30] = k
        write_patch_result(group, i, masks, stats_for(5, 5, 5, 1.0))
    paths = write_mosaics(group, patch_store, tmp_path)
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    assert [root[str(k)].shape for k in range(3)] == [(2, 1200, 1200), (2, 600, 600),
                                                      (2, 300, 300)]
    np.testing.assert_array_equal(root["2"][:], root["0"][:, ::4, ::4])
    cells0 = root["labels/cells/0"][0]
    assert cells0.max() == 15  # 3 informative patches x 5 labels, unique IDs
    for k in (1, 2):
        np.testing.assert_array_equal(root[f"labels/cells/{k}"][0], cells0[:: 2**k, :: 2**k])
    with tifffile.TiffFile(paths["cell"]) as tif:
        levels = tif.series[0].levels
        assert [lvl.shape[-2:] for lvl in levels] == [(1200, 1200), (600, 600), (300, 300)]
        assert all(lvl.dtype == np.uint32 for lvl in levels)
        for k, lvl in enumerate(levels):
            np.testing.assert_array_equal(lvl.asarray().reshape(lvl.shape[-2:]),
                                          cells0[:: 2**k, :: 2**k])


def test_mosaics_need_finished_patches_and_replace_old_ones(tmp_path, small_mosaic):
    patch_store, group, _ = small_mosaic
    write_mosaics(group, patch_store, tmp_path)
    (tmp_path / "mosaics" / "stale.txt").write_text("old")
    write_mosaics(group, patch_store, tmp_path)
    assert not (tmp_path / "mosaics" / "stale.txt").exists()
    group["done"][3] = False
    with pytest.raises(StoreError, match="resume"):
        write_mosaics(group, patch_store, tmp_path / "again")
    assert not (tmp_path / "again" / "mosaics").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
