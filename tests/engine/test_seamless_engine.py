"""The engine on logical patches (full_image, halves, quarters) segmented block by block.

Every run is compared with what it must equal: the serial loop over the same blocks
(``engine.run_serial``), the one-shot segmentation of the whole patch (objects renumbered in
raster order), ``repair_masks`` of the stitched labels, and an undisturbed run after faults.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.outputs import assert_same_outputs

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine.runner import run, run_serial
from codexdask.layout import BLOCKS_DIR, DONE_ARRAY, MASK_NAMES, OWNED_ZARR, RESULT_STORE
from codexdask.outputs import load_manifest, load_seg_res, open_result_store
from codexdask.repair.masks import repair_masks
from codexdask.seamless.serial import canonical_labels
from codexdask.segmenters.watershed import WatershedSegmenter
from codexdask.store.patch_store import open_patch_store, write_patch_store
from codexdask.synthetic import synthetic_slide
from codexdask.synthetic.scores import labelling_agreement

#: Small blocks on a small slide: 20 blocks (more than one combine group), cells across block
#: edges and corners.
BLOCKS = {"block_size": 160, "halo": 48}
N_BLOCKS = 20  # 4 x 5 on the 611 x 733 slide
OPTIONS = {**BLOCKS, "save_mosaics": False, "n_overlays": 1}


def make_store(path: Path, height: int, width: int, mode: str, seed: int = 3) -> Path:
    slide = synthetic_slide(height, width, seed=seed)
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels, split_mode=mode,
                         chunk_size=128)
    return write_patch_store(slide.image, path, config, channel_names=slide.channel_names)


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("slide") / "slide.zarr", 611, 733, "full_image")


@pytest.fixture(scope="module")
def reference(slide_store, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = run(slide_store, out, SegmentConfig(**OPTIONS), client=client)
    assert result.n_computed == 1
    return out


def test_engine_equals_serial_blocks_and_one_shot(slide_store, reference):
    group = open_result_store(reference / RESULT_STORE)
    (index, masks, stats), = run_serial(slide_store, SegmentConfig(**OPTIONS))
    for name in MASK_NAMES:
        np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)
    np.testing.assert_array_equal(group["stats"][index][: len(stats)], stats)
    # The one-shot segmentation of the whole slide, numbered in raster order of first pixel.
    image = open_patch_store(slide_store).read_patch(0)
    one_shot = WatershedSegmenter().predict(image[None], 0.5)[0]
    for c, name in enumerate(("cell", "nucleus")):
        agreement = labelling_agreement(one_shot[..., c], group[name][index])
        assert agreement["n_reference"] > 500
        assert agreement["identical_fraction"] >= 0.999, agreement
        np.testing.assert_array_equal(group[name][index], canonical_labels(one_shot[..., c]))
    repaired = repair_masks(group["cell"][index], group["nucleus"][index])
    for name in ("cell_matched_mask", "nucleus_matched_mask", "cell_outside_nucleus_mask",
                 "cell_matched_boundary", "nucleus_matched_boundary"):
        np.testing.assert_array_equal(group[name][index], repaired[name], err_msg=name)


def test_run_writes_whole_slide_outputs_and_cleans_its_work_folder(reference):
    manifest = load_manifest(reference)
    assert manifest["seamless"]["blocks"] == {"total": N_BLOCKS, "computed": N_BLOCKS, **BLOCKS,
                                              "max_window": 2 * (160 + 2 * 48)}
    assert manifest["seamless"]["regrown"]["objects"] == [0, 0]
    assert manifest["seamless"]["dropped"] == [0, 0] and manifest["warnings"] == []
    assert not (reference / BLOCKS_DIR).exists()
    entries = load_seg_res(reference / "matched_seg_res_batch.pickle")
    assert len(entries) == 1 and entries[0]["cell_matched_mask"].shape == (611, 733)
    chunks = zarr.open_group(str(reference / RESULT_STORE), mode="r")["cell"].chunks
    assert chunks == (1, 160, 160)  # one chunk per core
    assert len(list((reference / "overlays").iterdir())) == 1


def test_quarters_of_an_odd_slide(tmp_path, client):
    store = make_store(tmp_path / "q.zarr", 403, 517, "quarters", seed=5)
    out = tmp_path / "out"
    run(store, out, SegmentConfig(**OPTIONS), client=client)
    group = open_result_store(out / RESULT_STORE)
    sizes = [(e["cell"].shape) for e in load_seg_res(out / "original_seg_res_batch.pickle")]
    assert sizes == [(201, 258), (201, 259), (202, 258), (202, 259)]
    for index, masks, _ in run_serial(store, SegmentConfig(**OPTIONS)):
        for name in MASK_NAMES:
            np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)


@pytest.mark.parametrize("tie_break", ["lowest-label", "aegle-cpu"])
def test_matching_in_bands_of_block_rows_equals_serial(tmp_path, client, tie_break):
    """Small blocks on a tall slide: each matching band reads 5 to 7 of the 10 block rows (with the
    blocks above one band reads them all), so the chain of band tasks, the carry between them and
    the repair from band files are exercised. (The synthetic cells are far smaller than the
    window, so the bands' worst-case geometry is tested in repair/test_bands.py.)"""
    store = make_store(tmp_path / "tall.zarr", 640, 150, "full_image", seed=7)
    options = {"block_size": 64, "halo": 24, "tie_break": tie_break, "save_mosaics": False,
               "save_pickles": False, "n_overlays": 0}
    out = tmp_path / "out"
    run(store, out, SegmentConfig(**options), client=client)
    group = open_result_store(out / RESULT_STORE)
    (index, masks, stats), = run_serial(store, SegmentConfig(**options))
    assert masks["cell_matched_mask"].max() > 100
    for name in MASK_NAMES:
        np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)
    np.testing.assert_array_equal(group["stats"][index][: len(stats)], stats)


def test_without_regrowing_large_objects_are_dropped_and_said_so(slide_store, tmp_path, client):
    out = tmp_path / "out"
    result = run(slide_store, out, SegmentConfig(block_size=96, halo=2, max_window=0,
                                                 save_mosaics=False, save_pickles=False,
                                                 n_overlays=0),
                 client=client)
    dropped = result.manifest["seamless"]["dropped"]
    assert dropped[0] > 0 and dropped[1] > 0
    assert result.manifest["seamless"]["regrown"]["windows"] == 0
    assert any("raise --max-window" in warning for warning in result.manifest["warnings"])


# --------------------------------------------------------------------------------------------
# Faults at block granularity (segmenters defined here so that workers can import them)


def blocks_stored(out: Path) -> int:
    try:
        owned = zarr.open_group(str(out / BLOCKS_DIR / OWNED_ZARR), mode="r")
        return int(owned[DONE_ARRAY][:].sum())
    except (KeyError, FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError):
        return 0


class FailingWatershed(WatershedSegmenter):
    """Watershed that fails the block at ``bad_top`` (its window's top row) while a marker file
    is absent, after some other blocks were stored; it counts the windows it infers."""

    def __init__(self, markers: str, out: str, bad_top: int | None = None, crash: bool = False):
        super().__init__()
        self.markers, self.out, self.bad_top, self.crash = markers, out, bad_top, crash

    def infer_windows(self, windows, image_mpp, statistics):
        for window in windows:
            box = window.window
            (Path(self.markers) / f"{box.top}-{box.left}").touch()
            if self.crash and blocks_stored(Path(self.out)) >= 3:
                try:  # exactly once, whichever worker gets here first
                    os.close(os.open(Path(self.markers) / "crashed", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            if box.top == self.bad_top:
                time.sleep(1.0)  # let other blocks finish first
                raise RuntimeError("a block failed on purpose")
        return super().infer_windows(windows, image_mpp, statistics)


def test_resume_recomputes_only_unfinished_blocks(slide_store, reference, tmp_path, client):
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(RuntimeError, match="on purpose"):
        run(slide_store, out, SegmentConfig(**OPTIONS), client=client,
            segmenter=FailingWatershed(str(markers), str(out), bad_top=272))
    while any(client.processing().values()):  # the other blocks run to their end
        time.sleep(0.1)
    stored = blocks_stored(out)
    assert 0 < stored < N_BLOCKS
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    result = run(slide_store, out, SegmentConfig(**OPTIONS, resume=True), client=client,
                 segmenter=FailingWatershed(str(resumed), str(out)))
    assert result.manifest["seamless"]["blocks"]["computed"] == N_BLOCKS - stored
    assert len(list(resumed.iterdir())) == N_BLOCKS - stored  # windows inferred again
    assert_same_outputs(out, reference, n_informative=1)


def test_worker_killed_mid_run_loses_only_its_blocks(slide_store, reference, tmp_path, client):
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    run(slide_store, out, SegmentConfig(**OPTIONS), client=client,
        segmenter=FailingWatershed(str(markers), str(out), crash=True))
    assert (markers / "crashed").exists(), "no worker crashed: the test tested nothing"
    client.wait_for_workers(2, timeout=60)
    assert_same_outputs(out, reference, n_informative=1)


def test_block_flags_of_some_blocks(tmp_path):
    from codexdask.boxes import Box
    from codexdask.engine.work_folder import RunPaths, blocks_done, create_work_folder
    from codexdask.seamless.blocks import LogicalPatch, block_grid

    # two patches of 6 blocks: the second's block ids start at 6
    patches = [LogicalPatch(i, Box(0, 0, 300, 200), block_grid((300, 200), 100, 10), 6 * i)
               for i in (0, 1)]
    create_work_folder(tmp_path, 12, (120, 120), 100)
    flags = np.zeros(12, dtype=bool)
    flags[[1, 7, 8, 11]] = True
    zarr.open_group(str(tmp_path / "owned.zarr"), mode="r+")["done"][:] = flags
    paths = RunPaths("", "", str(tmp_path))
    assert blocks_done(paths, patches[1]).tolist() == flags[6:].tolist()
    assert blocks_done(paths, patches[1], [5, 0, 2]).tolist() == [True, False, True]
    assert blocks_done(paths, patches[0], [1, 2]).tolist() == [True, False]


def test_block_reports_add_up_through_summaries():
    from codexdask.engine.block_tasks import BlockReport, BlocksSummary, summarise_blocks, total
    from codexdask.engine.stages import StageSeconds

    reports = [BlockReport(t, (5, 4), (t % 2, 1), 100, StageSeconds(0.5 * t, 1.0, 0.25, 2.0))
               for t in range(5)]
    direct = summarise_blocks(reports)
    tree = summarise_blocks(summarise_blocks(reports[:2]),
                            summarise_blocks(reports[2:3], reports[3:]))
    assert direct == tree == BlocksSummary(5, StageSeconds(5.0, 5.0, 1.25, 10.0))
    assert direct.stages.infer == 10.0
    assert summarise_blocks() == BlocksSummary(0, StageSeconds())
    assert total(0.5, 1.25, 2) == 3.75


def test_progress_lets_go_of_each_block(client):
    import io

    from codexdask.engine.block_tasks import BlockReport
    from codexdask.engine.logical import follow_blocks
    from codexdask.engine.stages import StageSeconds

    report = [BlockReport(0, (1, 1), (0, 0), 2_000_000, StageSeconds())]
    futures = [client.submit(lambda r: r, report, pure=False) for _ in range(3)]
    stream = io.StringIO()
    follow_blocks(futures, 3, 6_000_000, stream=stream, every_s=0.0)
    assert futures == []  # emptied: the results can be released on the workers
    assert "blocks: 3 of 3 done, 6.0 of 6.0 MP" in stream.getvalue()
