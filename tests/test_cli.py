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
    (["segment", "s.zarr", "--out", "o", "--tile-size", "512"], "renamed 'block_size'"),
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
    from codexdask.config import PatchConfig, QuantifyConfig

    assert documented == (set(config_keys(SegmentConfig)) | set(config_keys(PatchConfig))
                          | set(config_keys(QuantifyConfig)))


def test_every_quantify_config_key_has_a_flag():
    from codexdask.config import QuantifyConfig

    quantify = build_parser()._subparsers._group_actions[0].choices["quantify"]
    assert set(config_keys(QuantifyConfig)) <= {action.dest for action in quantify._actions}


def test_doctor_prints_versions(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "numpy" in text and np.__version__ in text


def test_convert_model_then_doctor_then_segment(tmp_path, capsys, monkeypatch):
    """``codexdask convert-model`` on a Keras H5 export (no TensorFlow needed), then the file is
    what ``doctor`` reports and what ``segment --backend mesmer --model-path`` runs on."""
    pytest.importorskip("torch")
    from helpers.keras_h5 import write_keras_h5

    from codexdask.mesmer import convert, network

    monkeypatch.delenv(convert.TENSORFLOW_PYTHON_ENV, raising=False)
    monkeypatch.setattr(convert, "_PACKAGE_ROOT", tmp_path / "no-checkout")
    if convert.tensorflow_environment() is not None:
        pytest.skip("TensorFlow is importable here: the self-check would run")
    net = network.random_network(seed=5)
    h5 = tmp_path / "mesmer.h5"
    write_keras_h5(h5, {name: t.numpy() for name, t in net.state_dict().items()})
    out = tmp_path / "mesmer.safetensors"
    assert main(["convert-model", str(h5), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "self-check not run" in printed

    assert main(["doctor", "--model-path", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mesmer weights ok" in text and "mesmer runtime torch (installed)" in text

    slide = synthetic_slide(96, 128, seed=2, empty_fraction=0.0)
    source = tmp_path / "slide.npy"
    np.save(source, slide.image)
    store = tmp_path / "slide.zarr"
    assert main(["patch", str(source), "--out", str(store), "--nucleus", "DAPI",
                 "--wholecell", ",".join(slide.membrane_channels), "--antibodies",
                 str(_antibodies(tmp_path, slide.channel_names)), "--patch-size", "96",
                 "128"]) == 0
    assert main(["segment", str(store), "--out", str(tmp_path / "out"), "--backend", "mesmer",
                 "--model-path", str(out), "--precision", "bf16", "--tiles-per-call", "2",
                 "--n-workers", "1", "--no-mosaics", "--n-overlays", "0"]) == 0
    manifest = (tmp_path / "out" / "run_manifest.json").read_text()
    assert '"precision": "bf16"' in manifest


def _antibodies(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "antibodies.tsv"
    path.write_text("antibody_name\n" + "\n".join(names) + "\n")
    return path


def test_precision_is_checked(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["segment", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o"),
              "--precision", "fp8"])
    assert info.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text("backend: mesmer\nprecision: fp8\n")
    assert main(["segment", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o"), "--config",
                 str(config)]) == 2
    assert "precision must be one of fp32, tf32, bf16, fp16" in capsys.readouterr().err
