"""Zarr v3 stores by default, v2 on request, and the v2 stores of earlier releases still work.

``data/codexdask-0.5.0-zarr2-stores.tar.gz`` was written by codexdask 0.5.0 on zarr 2.18.7: the
patch store of ``synthetic_slide(240, 330, seed=3)`` (``patches`` mode, 128² patches, 10 %
overlap) and an interrupted watershed run of it (``done`` cleared for its last three informative
patches, no manifest), so a resume must compute exactly those three.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import LocalCluster

from codexdask.cli import main
from codexdask.config import PatchConfig
from codexdask.layout import MASK_NAMES, RESULT_STORE
from codexdask.store.patch_store import write_patch_store
from codexdask.synthetic import synthetic_slide

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "codexdask-0.5.0-zarr2-stores.tar.gz"
QUIET = ["--no-pickles", "--n-overlays", "0"]


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as local:
        yield local.scheduler_address


def zarr_format(path: Path) -> int:
    return zarr.open_group(str(path), mode="r").metadata.zarr_format


def masks(out: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(out / RESULT_STORE), mode="r")
    return {name: group[name][:] for name in (*MASK_NAMES, "done")}


def assert_same_masks(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def v3_run(tmp_path: Path, scheduler: str) -> Path:
    """The fixture's slide patched and segmented afresh, in the default format."""
    slide = synthetic_slide(240, 330, seed=3)
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                         split_mode="patches", patch_size=(128, 128), overlap=0.1)
    store = write_patch_store(slide.image, tmp_path / "v3.zarr", config,
                              channel_names=slide.channel_names)
    assert zarr_format(store) == 3
    assert main(["segment", str(store), "--out", str(tmp_path / "v3_run"), "--scheduler",
                 scheduler, *QUIET]) == 0
    return tmp_path / "v3_run"


def test_a_zarr2_run_of_release_050_is_resumed_in_its_format(tmp_path, scheduler, capsys):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    store, out = tmp_path / "v2_patches.zarr", tmp_path / "v2_run"
    result = zarr.open_group(str(out / RESULT_STORE), mode="r+")
    assert result.metadata.zarr_format == 2 and zarr_format(store) == 2
    # the run recorded where its store was; it has moved with the archive
    result.attrs["codexdask"] = {**result.attrs["codexdask"], "patch_store": str(store)}
    before = masks(out)
    assert main(["segment", str(store), "--out", str(out), "--scheduler", scheduler, "--resume",
                 *QUIET]) == 0
    assert "3 computed now" in capsys.readouterr().out
    assert zarr_format(out / RESULT_STORE) == 2  # a resumed run keeps its format...
    assert zarr_format(out / "mosaics" / "slide.ome.zarr") == 2  # ...and so do its mosaics
    resumed = masks(out)
    assert resumed["done"].sum() == before["done"].sum() + 3
    kept = before["done"]
    for name in MASK_NAMES:  # what was done before is untouched
        np.testing.assert_array_equal(resumed[name][kept], before[name][kept])
    fresh = v3_run(tmp_path, scheduler)
    assert_same_masks(resumed, masks(fresh))
    # a new run on the old patch store is written in Zarr v3 and gives the same masks
    assert main(["segment", str(store), "--out", str(tmp_path / "new"), "--scheduler",
                 scheduler, *QUIET]) == 0
    assert zarr_format(tmp_path / "new" / RESULT_STORE) == 3
    assert_same_masks(masks(tmp_path / "new"), masks(fresh))


def test_zarr_format_2_on_request_gives_the_same_arrays(tmp_path, scheduler):
    slide_npy = tmp_path / "slide.npy"
    slide = synthetic_slide(240, 330, seed=3)
    np.save(slide_npy, slide.image)
    store = tmp_path / "v2.zarr"
    names = [f"channel_{slide.channel_names.index(name)}" for name in ("DAPI",
                                                                        *slide.membrane_channels)]
    assert main(["patch", str(slide_npy), "--out", str(store), "--nucleus", names[0],
                 "--wholecell", ",".join(names[1:]),
                 "--patch-size", "128", "128", "--zarr-format", "2"]) == 0
    assert zarr_format(store) == 2
    out = tmp_path / "v2_run"
    assert main(["segment", str(store), "--out", str(out), "--scheduler", scheduler,
                 "--zarr-format", "2", *QUIET]) == 0
    assert zarr_format(out / RESULT_STORE) == 2
    assert not list(out.rglob("zarr.json"))  # nothing of it in v3
    mosaic = zarr.open_group(str(out / "mosaics" / "slide.ome.zarr"), mode="r")
    assert mosaic.attrs["multiscales"][0]["version"] == "0.4"
    fresh = v3_run(tmp_path, scheduler)
    assert_same_masks(masks(out), masks(fresh))
    v3_mosaic = zarr.open_group(str(fresh / "mosaics" / "slide.ome.zarr"), mode="r")
    assert v3_mosaic.attrs["ome"]["version"] == "0.5"
    for path in ("0", "labels/cells/0", "labels/nuclei_matched/0"):
        np.testing.assert_array_equal(mosaic[path][:], v3_mosaic[path][:], err_msg=path)
