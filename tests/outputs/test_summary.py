"""patches_metadata.csv and run_manifest.json (codexdask.outputs.summary)."""

import json

import pandas as pd
import pytest
from helpers.result_stores import make_store

from codexdask.errors import InputError
from codexdask.layout import RESULT_STAT_COLUMNS
from codexdask.outputs import read_stats_table, write_manifest, write_metadata_csv


@pytest.fixture
def store(tmp_path):
    """A 5-patch result store; patches 0, 2, 3 informative and done, 1 and 4 untouched."""
    return make_store(tmp_path)


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
