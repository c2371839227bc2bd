"""Bad input: one test per line of the README's table "Errors you can get, and what they mean".

Each item must give a :class:`~codexdask.errors.CodexDaskError` whose one-line message says how to
fix it, exit status 2 from the command line, and no output that looks complete (no
``run_manifest.json``, no summary file, no patch store). Where another test file already checks
the error in depth, the item is repeated here briefly, end to end through ``codexdask.cli.main``:

============================================  ================================================
item                                          in depth
============================================  ================================================
missing / non-codexdask store                 test_patches.py::test_open_missing_store,
                                              ::test_open_not_codexdask, test_cli.py
wrong ndim, channel count, dtype              test_patches.py::test_open_wrong_ndim, ...
NaN/inf pixels in a slide                     test_patches.py::test_nan_pixels_refused
metadata columns / row count                  test_patches.py::test_open_metadata_*
unknown key, image_mpp, overlap, split_mode   test_config.py
channel names, truncated slide                test_slide.py, test_patches.py
output directory holding another run          test_engine.py, test_cli.py
unreachable scheduler                         test_cluster.py
Mesmer model_path                             test_mesmer.py (loading in the process itself)
============================================  ================================================

``test_refused_before_any_output`` requires the stronger property that the error comes before any
output or task: the engine checks these inputs before it creates the result store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from distributed import Client, LocalCluster
from helpers.patch_stores import make_store

from codexdask.cli import main
from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine import cluster
from codexdask.engine.runner import run
from codexdask.errors import ClusterError, CodexDaskError, InputError, ModelLoadError
from codexdask.layout import MANIFEST, METADATA_FILE, RESULT_STORE
from codexdask.store.patch_store import write_patch_store
from codexdask.synthetic import synthetic_slide

SUMMARY_FILES = (MANIFEST, "patches_metadata.csv", "matched_seg_res_batch.pickle",
                 "original_seg_res_batch.pickle")


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    """Three informative 96² patches (uint16)."""
    return make_store(tmp_path_factory.mktemp("good") / "s.zarr", n_patches=3, empty=())


@pytest.fixture
def store(good_store, tmp_path) -> Path:
    """A private copy of ``good_store`` that a test may damage."""
    return Path(shutil.copytree(good_store, tmp_path / "s.zarr"))


@pytest.fixture(scope="module")
def scheduler():
    """Address of a small in-process cluster reachable over TCP (``--scheduler``)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> Path:
    slide = synthetic_slide(96, 192, seed=2, empty_fraction=0.0)
    return write_ome(tmp_path_factory.mktemp("slide") / "slide.ome.tif", slide.image,
                     slide.channel_names)


def write_ome(path: Path, image: np.ndarray, names: list[str]) -> Path:
    tifffile.imwrite(path, image, ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})
    return path


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; assert exit status 2 and a one-line error; return that line.

    The error is the last line of stderr; lines before it may be the dashboard link of a run
    that reached the cluster, or log records of libraries (tifffile logs what it cannot parse).
    """
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    prefix = f"codexdask {argv[0]}: error: "
    assert lines and lines[-1].startswith(prefix), lines
    assert sum(line.startswith("codexdask") for line in lines) == 1, lines
    return lines[-1]


def assert_nothing_complete(out: Path) -> None:
    """No file that marks or summarises a finished run."""
    for name in SUMMARY_FILES:
        assert not (out / name).exists(), name


def patch_args(slide: Path, out: Path, *extra: str) -> list[str]:
    return ["patch", str(slide), "--out", str(out), "--nucleus", "DAPI", "--wholecell",
            "CD45,PanCK", "--patch-size", "96", "96", "--overlap", "0", *extra]


def replace_patches(store: Path, data: np.ndarray) -> None:
    root = zarr.open_group(str(store), mode="a")
    del root["patches"]
    root.create_array("patches", data=data)


def float_store_with_nan(path: Path) -> Path:
    """A float32 store whose second patch holds a NaN and third an inf (both informative)."""
    slide = synthetic_slide(96, 288, seed=3, empty_fraction=0.0)
    write_patch_store(slide.image.astype(np.float32), path,
                      PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                                  patch_size=(96, 96), overlap=0.0),
                      channel_names=slide.channel_names)
    patches = zarr.open_group(str(path), mode="a")["patches"]
    patches[1, 40, 50, 0] = np.nan
    patches[2, 10, 20, 1] = np.inf
    return path


# --------------------------------------------------------------------------------------------
# the patch store


def test_missing_store(tmp_path, capsys):
    out = tmp_path / "out"
    err = cli(["segment", tmp_path / "missing.zarr", "--out", out], capsys)
    assert "does not exist" in err and "codexdask patch" in err
    assert not out.exists()


def test_not_a_codexdask_store(tmp_path, capsys):
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("patches", shape=(2, 8, 8, 2), dtype=np.uint16)
    err = cli(["segment", tmp_path / "plain.zarr", "--out", tmp_path / "out"], capsys)
    assert "not a codexdask patch store" in err and "codexdask patch" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", [(3, 96, 96), (3, 96, 96, 3)], ids=["ndim", "channels"])
def test_wrong_ndim_or_channel_count(store, tmp_path, capsys, shape):
    replace_patches(store, np.zeros(shape, np.uint16))
    err = cli(["segment", store, "--out", tmp_path / "out"], capsys)
    assert f"shape {shape}" in err and "expected (N, H, W, 2)" in err
    assert not (tmp_path / "out").exists()


def test_non_numeric_dtype(store, tmp_path, capsys):
    replace_patches(store, np.zeros((3, 96, 96, 2), bool))
    err = cli(["segment", store, "--out", tmp_path / "out"], capsys)
    assert "dtype bool" in err and "numeric slide" in err
    assert not (tmp_path / "out").exists()


def test_nan_pixels_in_slide(tmp_path, capsys):
    slide = synthetic_slide(96, 192, seed=2, empty_fraction=0.0)
    image = slide.image.astype(np.float32)
    image[0, 50, 130] = np.nan
    path = write_ome(tmp_path / "nan.ome.tif", image, slide.channel_names)
    err = cli(patch_args(path, tmp_path / "p.zarr"), capsys)
    assert "NaN or infinite pixels" in err and "row 50, column 130" in err
    assert "nan_to_num" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.ome.tif"]  # not even a tmp store


def test_nan_pixels_in_store(tmp_path, scheduler, capsys):
    store = float_store_with_nan(tmp_path / "nan.zarr")
    out = tmp_path / "out"
    err = cli(["segment", store, "--out", out, "--scheduler", scheduler, "--no-mosaics"], capsys)
    assert "NaN or inf" in err
    assert_nothing_complete(out)


def test_metadata_missing_columns(store, tmp_path, capsys):
    meta = pd.read_csv(store / METADATA_FILE).drop(columns=["is_informative"])
    meta.to_csv(store / METADATA_FILE, index=False)
    err = cli(["segment", store, "--out", tmp_path / "out"], capsys)
    assert "lacks the columns is_informative" in err and "re-create" in err
    assert not (tmp_path / "out").exists()


def test_metadata_row_count(store, tmp_path, capsys):
    pd.read_csv(store / METADATA_FILE).iloc[:2].to_csv(store / METADATA_FILE, index=False)
    err = cli(["segment", store, "--out", tmp_path / "out"], capsys)
    assert "2 rows but the store holds 3 patches" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# configuration


def test_unknown_config_key_suggests_closest(good_store, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("batch_sise: 2\n")
    err = cli(["segment", good_store, "--out", tmp_path / "out", "--config", config], capsys)
    assert "unknown configuration key 'batch_sise'" in err and "did you mean 'batch_size'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["patch", "segment"])
def test_image_mpp_not_positive(good_store, slide_file, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = (patch_args(slide_file, out, "--image-mpp", "-0.5") if command == "patch"
            else ["segment", good_store, "--out", out, "--image-mpp", "0"])
    err = cli(argv, capsys)
    assert "image_mpp must be > 0" in err and "e.g. 0.5" in err
    assert not out.exists()


def test_overlap_outside_unit_interval(slide_file, tmp_path, capsys):
    err = cli(patch_args(slide_file, tmp_path / "p.zarr", "--overlap", "1"), capsys)
    assert "overlap must lie in [0, 1)" in err and "--overlap 0.1" in err
    assert not (tmp_path / "p.zarr").exists()


def test_unknown_split_mode(slide_file, tmp_path, capsys):
    config = tmp_path / "patch.yaml"
    config.write_text("split_mode: halfs\n")
    err = cli(patch_args(slide_file, tmp_path / "p.zarr", "--config", config), capsys)
    assert "did you mean 'halves'" in err
    # As a flag, argparse refuses it itself (its usage error also exits with status 2).
    with pytest.raises(SystemExit) as exc:
        main(patch_args(slide_file, tmp_path / "p.zarr", "--split-mode", "halfs"))
    assert exc.value.code == 2
    assert "invalid choice: 'halfs'" in capsys.readouterr().err
    assert not (tmp_path / "p.zarr").exists()


def test_unknown_backend(good_store, tmp_path, capsys):
    err = cli(["segment", good_store, "--out", tmp_path / "out", "--backend", "watershd"], capsys)
    assert "unknown segmenter backend 'watershd'" in err and "watershed" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# the slide


def test_channel_names_not_in_slide(slide_file, tmp_path, capsys):
    argv = patch_args(slide_file, tmp_path / "p.zarr")
    argv[argv.index("CD45,PanCK")] = "CD4,PanCK"
    err = cli(argv, capsys)
    assert "'CD4'" in err and "CD45" in err
    assert not (tmp_path / "p.zarr").exists()


def test_truncated_slide(slide_file, tmp_path, capsys):
    truncated = tmp_path / "cut.ome.tif"
    data = slide_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    err = cli(patch_args(truncated, tmp_path / "p.zarr"), capsys)
    assert "truncated or unreadable" in err
    assert not (tmp_path / "p.zarr").exists()


# --------------------------------------------------------------------------------------------
# the run


def test_output_directory_holding_another_run(good_store, tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    flags = ["--scheduler", scheduler, "--no-mosaics", "--n-overlays", "0"]
    assert main(["segment", str(good_store), "--out", str(out), *flags]) == 0
    manifest = (out / MANIFEST).read_bytes()
    err = cli(["segment", good_store, "--out", out, *flags], capsys)
    assert "already holds a codexdask run" in err and "--resume" in err and "--overwrite" in err
    assert (out / MANIFEST).read_bytes() == manifest  # the other run is left alone
    assert main(["segment", str(good_store), "--out", str(out), "--resume", *flags]) == 0
    assert "0 computed now" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["n_computed"] == 0


def test_unreachable_scheduler(good_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "out"
    err = cli(["segment", good_store, "--out", out, "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert "could not reach a Dask scheduler at 'tcp://127.0.0.1:1'" in err
    assert "dask scheduler" in err
    assert_nothing_complete(out)


def test_tls_scheduler_without_certificates(good_store, tmp_path, capsys):
    out = tmp_path / "out"
    err = cli(["segment", good_store, "--out", out, "--scheduler", "tls://127.0.0.1:1"], capsys)
    assert "uses TLS" in err and "distributed.comm.tls.ca-file" in err
    assert_nothing_complete(out)


@pytest.mark.parametrize("kind", ["missing", "not-a-savedmodel"])
def test_mesmer_model_path(good_store, tmp_path, scheduler, capsys, kind):
    model = tmp_path / "model"
    if kind == "not-a-savedmodel":
        model.mkdir()
        (model / "weights.h5").write_bytes(b"not a model")
    out = tmp_path / "out"
    err = cli(["segment", good_store, "--out", out, "--backend", "mesmer", "--model-path", model,
               "--scheduler", scheduler, "--no-mosaics"], capsys)
    assert str(model) in err and "saved_model.pb" in err
    assert ("does not exist" if kind == "missing" else "no saved_model.pb inside") in err
    assert_nothing_complete(out)


# --------------------------------------------------------------------------------------------
# the stronger property: refused before any output is created or any task computed


def _unreachable(store: Path, out: Path, tmp_path: Path, client: Client) -> None:
    run(store, out, SegmentConfig(scheduler="tcp://127.0.0.1:1"))


def _nan_store(store: Path, out: Path, tmp_path: Path, client: Client) -> None:
    run(float_store_with_nan(tmp_path / "nan.zarr"), out, SegmentConfig(), client=client)


def _mesmer_missing(store: Path, out: Path, tmp_path: Path, client: Client) -> None:
    run(store, out, SegmentConfig(backend="mesmer", model_path=str(tmp_path / "nowhere")),
        client=client)


def _mesmer_not_savedmodel(store: Path, out: Path, tmp_path: Path, client: Client) -> None:
    run(store, out, SegmentConfig(backend="mesmer", model_path=str(tmp_path)), client=client)


@pytest.mark.parametrize("case, error", [
    pytest.param(_unreachable, ClusterError, id="unreachable-scheduler"),
    pytest.param(_nan_store, InputError, id="nan-in-store"),
    pytest.param(_mesmer_missing, ModelLoadError, id="mesmer-missing"),
    pytest.param(_mesmer_not_savedmodel, ModelLoadError, id="mesmer-not-savedmodel"),
])
def test_refused_before_any_output(good_store, tmp_path, scheduler, monkeypatch, case, error):
    """The error comes before the result store exists, so no task ran and a retry with the
    input fixed is not refused as 'already holds a codexdask run'."""
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "out"
    with Client(scheduler) as client, pytest.raises(error):
        case(good_store, out, tmp_path, client)
    assert issubclass(error, CodexDaskError)
    assert not (out / RESULT_STORE).exists()
