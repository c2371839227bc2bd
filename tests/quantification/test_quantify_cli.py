"""``codexdask quantify`` and ``segment --quantify`` from the command line; bad input is one clear
line, exit status 2, and nothing that looks complete."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers.quant_slides import CHANNELS, cell_slide, segmented_run, write_slide

from codexdask.cli import main
from codexdask.config import SegmentConfig
from codexdask.engine.runner import run
from codexdask.layout import (
    CELLS_H5AD,
    MANIFEST,
    QUANT_DIR,
    QUANT_MANIFEST,
    compartment_csv_name,
)
from codexdask.synthetic import synthetic_slide

SHAPE = (150, 170)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, client) -> Path:
    return segmented_run(tmp_path_factory.mktemp("run"), cell_slide(*SHAPE, seed=1), client)


def fresh_copy(finished: Path, tmp_path: Path) -> Path:
    """The run and its slide and store, copied (the store records the slide's path)."""
    shutil.copytree(finished.parent, tmp_path / "copy")
    return tmp_path / "copy" / finished.name


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_quantify_command_with_markers_and_duplicate_names(finished, tmp_path, capsys):
    markers = tmp_path / "markers.csv"
    names = ["DNA", "CD45", "DNA", "CD8", "PanCK"]
    pd.DataFrame({"cycle": 1, "marker_name": names}).to_csv(markers, sep=";", index=False)
    out = tmp_path / "q"
    assert main(["quantify", str(finished), "--out", str(out), "--markers", str(markers),
                 "--stats", "median,max", "--n-workers", "1"]) == 0
    assert "quantified:" in capsys.readouterr().out
    cells = pd.read_csv(out / compartment_csv_name("cell"))
    assert list(cells.columns[:6]) == ["CellID", "DNA_1", "CD45", "DNA_2", "CD8", "PanCK"]
    assert "DNA_1_median" in cells.columns and "PanCK_max" in cells.columns
    assert (out / QUANT_MANIFEST).is_file() and (out / CELLS_H5AD).is_file()


def test_segment_then_quantify_on_one_cluster(tmp_path, capsys):
    slide = synthetic_slide(256, 256, seed=2)
    path = write_slide(tmp_path / "slide.ome.tif", slide.image, list(slide.channel_names))
    store = tmp_path / "slide.zarr"
    assert main(["patch", str(path), "--out", str(store), "--nucleus", slide.nucleus_channel,
                 "--wholecell", ",".join(slide.membrane_channels),
                 "--patch-size", "128", "128"]) == 0
    out = tmp_path / "out"
    assert main(["segment", str(store), "--out", str(out), "--quantify", "--n-workers", "1",
                 "--no-pickles", "--no-mosaics", "--n-overlays", "0"]) == 0
    printed = capsys.readouterr().out
    assert "matched pairs" in printed and "quantified:" in printed
    cells = pd.read_csv(out / QUANT_DIR / compartment_csv_name("cell"))
    assert len(cells) > 0 and list(cells.columns[1:7]) == list(slide.channel_names)


def test_results_without_a_finished_segmentation(finished, tmp_path, capsys):
    run_dir = fresh_copy(finished, tmp_path)
    (run_dir / MANIFEST).unlink()
    assert main(["quantify", str(run_dir)]) == 2
    assert "holds no finished segmentation" in one_line_error(capsys)
    assert not (run_dir / QUANT_DIR).exists()


def test_missing_slide(finished, tmp_path, capsys):
    assert main(["quantify", str(finished), "--slide", str(tmp_path / "gone.ome.tif"),
                 "--out", str(tmp_path / "q")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert not (tmp_path / "q").exists()


def test_slide_of_another_shape(finished, tmp_path, capsys):
    other = write_slide(tmp_path / "other.ome.tif", cell_slide(SHAPE[0], SHAPE[1] - 1))
    assert main(["quantify", str(finished), "--slide", str(other),
                 "--out", str(tmp_path / "q")]) == 2
    assert "150 x 169 pixels but the run segmented a slide of 150 x 170" in one_line_error(capsys)
    assert not (tmp_path / "q").exists()


def test_names_that_do_not_fit_the_channels(finished, tmp_path, capsys):
    markers = tmp_path / "markers.csv"
    pd.DataFrame({"marker_name": CHANNELS[:3]}).to_csv(markers, index=False)
    assert main(["quantify", str(finished), "--markers", str(markers),
                 "--out", str(tmp_path / "q")]) == 2
    assert "names 3 channels but" in one_line_error(capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nDAPI\n")
    assert main(["quantify", str(finished), "--markers", str(bad),
                 "--out", str(tmp_path / "q")]) == 2
    assert "no 'marker_name' column" in one_line_error(capsys)


def test_metadata_naming_another_number_of_channels(finished, tmp_path, capsys):
    """An OME-TIFF whose OME-XML names 4 channels over 5 planes: the names cannot be trusted."""
    image = cell_slide(*SHAPE, seed=1)
    good = write_slide(tmp_path / "good.ome.tif", image)
    with tifffile.TiffFile(good) as tif:
        xml = tif.ome_metadata
    four = re.sub(r'<Channel ID="Channel:0:4".*?</Channel>', "", xml, flags=re.S)
    bad = tmp_path / "bad.ome.tif"
    tifffile.imwrite(bad, image, photometric="minisblack", description=four, metadata=None)
    assert main(["quantify", str(finished), "--slide", str(bad),
                 "--out", str(tmp_path / "q")]) == 2
    assert "names 4 channels but its pixels hold 5" in one_line_error(capsys)
    assert not (tmp_path / "q").exists()
    markers = tmp_path / "markers.csv"
    pd.DataFrame({"marker_name": CHANNELS}).to_csv(markers, index=False)
    assert main(["quantify", str(finished), "--slide", str(bad), "--markers", str(markers),
                 "--out", str(tmp_path / "q"), "--n-workers", "1"]) == 0
    assert (tmp_path / "q" / QUANT_MANIFEST).is_file()


def test_unknown_statistic_and_both_name_files(finished, capsys):
    assert main(["quantify", str(finished), "--stats", "mode"]) == 2
    assert "unknown statistic 'mode'" in one_line_error(capsys)
    assert main(["quantify", str(finished), "--markers", "a.csv", "--antibodies", "b.tsv"]) == 2
    assert "not both" in one_line_error(capsys)


def test_existing_quantification_is_not_replaced_silently(finished, tmp_path, capsys, client):
    run_dir = fresh_copy(finished, tmp_path)
    from codexdask.quantification import quantify

    quantify(run_dir, client=client)
    table = (run_dir / QUANT_DIR / compartment_csv_name("cell")).read_bytes()
    assert main(["quantify", str(run_dir)]) == 2
    assert "already holds a quantification" in one_line_error(capsys)
    assert (run_dir / QUANT_DIR / compartment_csv_name("cell")).read_bytes() == table
    # other settings cannot resume a quantification left unfinished
    (run_dir / QUANT_DIR / QUANT_MANIFEST).unlink()
    (run_dir / QUANT_DIR / "work").mkdir()
    (run_dir / QUANT_DIR / "work" / "settings.json").write_text("{}")
    assert main(["quantify", str(run_dir), "--resume"]) == 2
    assert "used other settings" in one_line_error(capsys)


def test_an_in_memory_store_needs_the_slide(tmp_path, client, capsys):
    image = cell_slide(*SHAPE, seed=3)
    from codexdask.config import PatchConfig
    from codexdask.store.patch_store import write_patch_store

    store = write_patch_store(image, tmp_path / "s.zarr", PatchConfig(
        nucleus="DAPI", wholecell=["CD45"], split_mode="full_image", chunk_size=64),
        channel_names=CHANNELS)
    from helpers.large_objects import components_segmenter

    run(store, tmp_path / "out", SegmentConfig(block_size=64, halo=12, save_mosaics=False,
                                               save_pickles=False, n_overlays=0),
        client=client, segmenter=components_segmenter())
    assert main(["quantify", str(tmp_path / "out")]) == 2
    assert "pass the slide with --slide" in one_line_error(capsys)
    slide = write_slide(tmp_path / "slide.ome.tif", image)
    assert main(["quantify", str(tmp_path / "out"), "--slide", str(slide),
                 "--n-workers", "1"]) == 0
    assert np.isfinite(pd.read_csv(tmp_path / "out" / QUANT_DIR / "cell.csv")["CD8"]).all()
