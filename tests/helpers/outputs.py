"""Comparing the outputs of two runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from codexdask.layout import (
    DONE_ARRAY,
    MASK_NAMES,
    MATCHED_PICKLE,
    METADATA_FILE,
    ORIGINAL_PICKLE,
    RESULT_STAT_COLUMNS,
    RESULT_STORE,
    STATS_ARRAY,
    TIMING_COLUMNS,
)
from codexdask.outputs import load_manifest


def assert_same_outputs(out: Path, expected: Path, n_informative: int) -> None:
    """Masks, done, stats, CSV (timing columns excepted) and pickles of two runs are identical."""
    got, want = (zarr.open_group(str(d / RESULT_STORE), mode="r") for d in (out, expected))
    for name in MASK_NAMES:
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
    np.testing.assert_array_equal(got[DONE_ARRAY][:], want[DONE_ARRAY][:])
    keep = [k for k, column in enumerate(RESULT_STAT_COLUMNS) if column not in TIMING_COLUMNS]
    np.testing.assert_array_equal(got[STATS_ARRAY][:][:, keep], want[STATS_ARRAY][:][:, keep])
    csv, csv_want = (pd.read_csv(d / METADATA_FILE).drop(columns=list(TIMING_COLUMNS))
                     for d in (out, expected))
    pd.testing.assert_frame_equal(csv, csv_want)
    for name in (ORIGINAL_PICKLE, MATCHED_PICKLE):
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    assert load_manifest(out)["n_informative"] == n_informative
