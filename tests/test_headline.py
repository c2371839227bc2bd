"""``bench/headline.py`` at a small size on the CPU: patch, then a seamless Mesmer segment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import headline  # noqa: E402


@pytest.mark.timeout(600)
def test_headline_runs_small_on_cpu(tmp_path, capsys):
    report = headline.main(["--size", "520", "610", "--device", "cpu", "--n-workers", "1",
                            "--work-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")  # JSON last
    assert report["slide"] == [520, 610] and report["megapixels"] == 520 * 610 / 1e6
    assert report["end_to_end_s"] == report["patch_s"] + report["segment_s"]
    stages = report["stages"]
    assert stages["megapixels"] == pytest.approx(report["megapixels"])
    assert stages["prepare_s"] > 0 and 0 < stages["network_s"] <= stages["pinned_s"]
    assert report["network_tiles"] >= 9 and report["network_tiles_per_s"] > 0  # 3 x 3 tiles
    assert report["gpu_busy_fraction"] is None  # nothing pinned without a GPU
    assert report["cells"] > 0
    assert list(tmp_path.iterdir()) == []  # the work folder is removed
