"""The command line: sub-commands end to end, exit codes, and the README's CLI reference."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from codexdask.cli import build_parser, main
from codexdask.config import SegmentConfig, config_keys
from codexdask.synthetic import synthetic_slide

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    slide = synthetic_slide(160, 320, seed=4, empty_fraction=0.0)
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    tifffile.imwrite(path, slide.image, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": slide.channel_names},
                               "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path


def test_patch_then_segment(slide_file, tmp_path, capsys):
    store = tmp_path / "slide.zarr"
    assert main(["patch", str(slide_file), "--out", str(store), "--nucleus", "DAPI",
                 "--wholecell", "CD45,PanCK,NaKATPase", "--patch-size", "160", "160",
                 "--overlap", "0"]) == 0
    assert (store / "patches_metadata.csv").is_file()
    out = tmp_path / "run"
    assert main(["segment", str(store), "--out", str(out), "--n-workers", "1",
                 "--no-mosaics", "--pickle-compression", "bz2"]) == 0
    printed = capsys.readouterr().out
    assert "2 informative" in printed
    assert (out / "matched_seg_res_batch.pickle.bz2").is_file()
    assert (out / "run_manifest.json").is_file()
    # A second run into the same directory is refused with exit code 2 and a hint.
    assert main(["segment", str(store), "--out", str(out), "--n-workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_config_file_is_read_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("backend: watershed\nbatch_size: 5\ntie_break: aegle-cpu\n")
    args = build_parser().parse_args(["segment", "s.zarr", "--out", "o", "--config", str(config),
                                      "--batch-size", "2"])
    from codexdask.cli import segment_config

    settings = segment_config(args)
    assert settings.batch_size == 2
    assert settings.tie_break == "aegle-cpu"


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.zarr", "--out", "o"], "codexdask patch"),
    (["patch", "missing.tif", "--out", "x.zarr"], "missing.tif"),
    (["segment", "s.zarr", "--out", "o", "--image-mpp", "0"], "image_mpp must be > 0"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1


def test_every_segment_config_key_has_a_flag():
    segment = build_parser()._subparsers._group_actions[0].choices["segment"]
    flags = {action.dest for action in segment._actions}
    assert set(config_keys(SegmentConfig)) <= flags


def test_readme_cli_reference_matches_the_parser():
    """Every flag of every sub-command appears in the README's CLI reference, and vice versa."""
    text = README.read_text()
    section = text.split("## Command-line reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"(--[a-z][a-z0-9-]+)", section))
    parser = build_parser()
    actual = {"--verbose"}
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            actual |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
    assert actual == documented - {"--help"}


def test_readme_config_reference_lists_every_key():
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)`", section, flags=re.M))
    from codexdask.config import PatchConfig

    assert documented == set(config_keys(SegmentConfig)) | set(config_keys(PatchConfig))


def test_doctor_prints_versions(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "numpy" in text and np.__version__ in text
