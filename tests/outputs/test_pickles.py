"""The two streamed seg_res pickles (codexdask.outputs.pickles)."""

import gzip
import math
import pickle
import pickletools
import weakref

import numpy as np
import pytest
from helpers.result_stores import make_store, masks_for, stats_for

from codexdask.errors import ConfigError, StoreError
from codexdask.layout import MATCHED_KEYS, ORIGINAL_KEYS, RESULT_STAT_COLUMNS
from codexdask.outputs import iter_seg_res, load_seg_res, write_pickle_stream, write_seg_res_pickles

COMPRESSIONS = ("none", "gzip", "bz2", "xz", "zstd")


@pytest.fixture
def store(tmp_path):
    """A 5-patch result store; patches 0, 2, 3 informative and done, 1 and 4 untouched."""
    return make_store(tmp_path)


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
