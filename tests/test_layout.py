"""The vocabulary: names of files, arrays and columns (codexdask.layout)."""

import pytest

from codexdask.errors import ConfigError
from codexdask.layout import (
    MASK_NAMES,
    MATCHED_KEYS,
    MATCHED_PICKLE,
    ORIGINAL_KEYS,
    ORIGINAL_PICKLE,
    QC_STAT_COLUMNS,
    RESULT_STAT_COLUMNS,
    RUN_OUTPUTS,
    pickle_compression,
    pickle_suffix,
)


def test_constants_follow_the_interface():
    assert MASK_NAMES == ORIGINAL_KEYS + MATCHED_KEYS
    assert MATCHED_KEYS == ("cell_matched_mask", "nucleus_matched_mask",
                            "cell_outside_nucleus_mask", "cell_matched_boundary",
                            "nucleus_matched_boundary")
    assert RESULT_STAT_COLUMNS == ("matched_fraction", "n_cells", "n_nuclei", "n_matched",
                                   "n_repaired", "frac_cells_matched", "frac_nuclei_matched",
                                   "match_jaccard", "infer_s", "postprocess_s", "repair_s")


def test_pickle_suffix_aliases():
    assert [pickle_suffix(c) for c in ("NONE", "gz", "bzip2", "lzma", "zst", "Zstandard")] == [
        "", ".gz", ".bz2", ".xz", ".zst", ".zst"]


def test_the_two_stat_column_sets_are_distinct():
    assert not set(QC_STAT_COLUMNS) & set(RESULT_STAT_COLUMNS)
    assert QC_STAT_COLUMNS[0] == "nucleus_mean" and RESULT_STAT_COLUMNS[0] == "matched_fraction"


def test_run_outputs_name_every_pickle_spelling():
    for name in (ORIGINAL_PICKLE, MATCHED_PICKLE):
        assert {name + pickle_suffix(c) for c in ("none", "gz", "bz2", "xz", "zst")} <= set(
            RUN_OUTPUTS)


def test_unknown_compression_is_a_config_error():
    with pytest.raises(ConfigError, match="pickle_compression must be one of"):
        pickle_compression("rar")
