"""QC statistics, QC flags, informative indices and batches (pure functions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codexdask.errors import ConfigError, StoreError
from codexdask.store.selection import (
    informative_indices,
    parse_flags,
    patch_statistics,
    qc_flags,
    split_batches,
)


def test_patch_statistics_values() -> None:
    tile = np.zeros((4, 5, 2), dtype=np.uint16)
    tile[0, :, 0] = 10  # 5 of 20 pixels
    tile[..., 1] = 3
    stats = patch_statistics(tile)
    assert stats["nucleus_mean"] == pytest.approx(2.5)
    assert stats["nucleus_std"] == pytest.approx(np.std(tile[..., 0]))  # population std
    assert stats["nucleus_non_zero_perc"] == pytest.approx(0.25)  # a fraction, not a percent
    assert stats["wholecell_mean"] == 3 and stats["wholecell_std"] == 0
    assert stats["wholecell_non_zero_perc"] == 1.0


def test_informative_flag_scenario() -> None:
    stats = pd.DataFrame({
        "nucleus_non_zero_perc": [0.049, 0.05, 1.0, 1.0],
        "nucleus_mean": [50.0, 50.0, 0.99, 1.0],
    })
    flags = qc_flags(stats)
    assert flags["is_empty"].tolist() == [True, False, False, False]
    assert flags["is_noisy"].tolist() == [False, False, True, False]
    assert flags["is_informative"].tolist() == [False, True, False, True]
    dark = np.zeros((8, 8, 2), dtype=np.uint16)
    dark[..., 1] = 60000  # zero DAPI, bright whole-cell: bad, only the nucleus channel counts
    row = qc_flags(pd.DataFrame([patch_statistics(dark)]))
    assert bool(row["is_bad_patch"][0]) and not bool(row["is_informative"][0])
    loose = qc_flags(stats, non_zero_perc_threshold=0.01, mean_intensity_threshold=0.5)
    assert loose["is_informative"].all()


def test_informative_indices_follow_flags():
    meta = pd.DataFrame({"is_informative": [False, True, False, True, True]})
    assert informative_indices(meta).tolist() == [1, 3, 4]


def test_informative_indices_accept_csv_strings():
    meta = pd.DataFrame({"is_informative": ["True", "false", "TRUE"]})
    assert informative_indices(meta).tolist() == [0, 2]


def test_missing_column_is_a_store_error():
    with pytest.raises(StoreError, match="is_informative"):
        informative_indices(pd.DataFrame({"patch_id": [0]}))


def test_split_batches_keeps_order_and_remainder():
    parts = split_batches(np.array([1, 3, 4, 6, 9]), 2)
    assert [p.tolist() for p in parts] == [[1, 3], [4, 6], [9]]
    assert split_batches(np.array([], dtype=np.int64), 3) == []


def test_flags_parse_every_csv_spelling_and_refuse_others():
    values = pd.Series(["True", " false", "1", "0.0", "TRUE"])
    assert parse_flags(values, "is_empty").tolist() == [True, False, True, False, True]
    with pytest.raises(StoreError, match="'is_empty'.*'maybe'"):
        parse_flags(pd.Series(["True", "maybe"]), "is_empty")


def test_batch_size_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="batch size"):
        split_batches(np.arange(3), 0)
