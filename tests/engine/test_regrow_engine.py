"""The engine on slides with objects far larger than the halo: regrown, equal to one piece.

Runs on a real ``LocalCluster`` with the exact-in-windows segmenter of
:mod:`helpers.large_objects` (connected components) in every logical-patch split mode, against
the serial loop (``run_serial``, bit for bit, every mask) and the one-piece labelling of each
patch; a run that fails while regrowing is resumed without segmenting any block again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.large_objects import components, components_segmenter, large_object_image
from helpers.outputs import assert_same_outputs

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine.runner import run, run_serial
from codexdask.layout import MASK_NAMES, RESULT_STORE
from codexdask.outputs import open_result_store
from codexdask.repair.masks import repair_masks
from codexdask.seamless.blocks import block_grid
from codexdask.seamless.serial import canonical_labels
from codexdask.segmenters.base import CallableSegmenter
from codexdask.store.patch_store import open_patch_store, write_patch_store

SHAPE = (333, 371)
OPTIONS = {"block_size": 64, "halo": 6, "max_window": 400, "save_mosaics": False,
           "n_overlays": 0}


def large_object_store(path: Path, mode: str) -> Path:
    image = large_object_image(*SHAPE, seed=11)
    config = PatchConfig(nucleus="DAPI", wholecell=["MEM"], split_mode=mode, chunk_size=64,
                         non_zero_perc_threshold=0.0)
    return write_patch_store(image.transpose(2, 0, 1), path, config,
                             channel_names=["DAPI", "MEM"])


@pytest.fixture(scope="module")
def full_image_store(tmp_path_factory):
    return large_object_store(tmp_path_factory.mktemp("slide") / "slide.zarr", "full_image")


@pytest.mark.parametrize(("mode", "tie_break"), [
    ("full_image", "lowest-label"), ("full_image", "aegle-cpu"), ("halves", "lowest-label"),
    ("quarters", "aegle-cpu"),
])
def test_engine_regrows_large_objects_and_equals_one_piece(tmp_path, client, mode, tie_break):
    store = large_object_store(tmp_path / "slide.zarr", mode)
    config = SegmentConfig(**OPTIONS, tie_break=tie_break)
    result = run(store, tmp_path / "out", config, client=client,
                 segmenter=components_segmenter())
    seamless = result.manifest["seamless"]
    assert seamless["dropped"] == [0, 0] and seamless["conflicts"] == [0, 0]
    assert sum(seamless["regrown"]["objects"]) > 0 and seamless["regrown"]["windows"] > 0
    assert seamless["regrown"]["max_window"] == OPTIONS["max_window"]
    group = open_result_store(tmp_path / "out" / RESULT_STORE)
    patch_store = open_patch_store(store)
    serial = run_serial(store, config, segmenter=components_segmenter())
    for index, masks, stats in serial:
        for name in MASK_NAMES:
            np.testing.assert_array_equal(group[name][index], masks[name], err_msg=name)
        np.testing.assert_array_equal(group["stats"][index][: len(stats)], stats)
        height, width = patch_store.patch_box(index).shape
        one_piece = components(patch_store.read_patch(index)[None], 0.5)[0]
        expected = [canonical_labels(one_piece[..., c]) for c in range(2)]
        for c, name in enumerate(("cell", "nucleus")):
            np.testing.assert_array_equal(group[name][index][:height, :width], expected[c])
        repaired = repair_masks(expected[0], expected[1], tie_break=tie_break)
        for name in ("cell_matched_mask", "nucleus_matched_mask"):
            np.testing.assert_array_equal(group[name][index][:height, :width], repaired[name])


class FailingRegrowth(CallableSegmenter):
    """Connected components that fail on any window larger than a block's (a grown window) while
    ``fail`` is set, and count the windows they segment in ``markers``."""

    def __init__(self, markers: str, fail: bool):
        super().__init__(components, name="components")
        self.markers, self.fail = markers, fail

    def infer_windows(self, windows, image_mpp, statistics):
        for window in windows:
            box = window.window
            (Path(self.markers) / "-".join(map(str, box))).touch()
            if self.fail and max(box.shape) > OPTIONS["block_size"] + 2 * OPTIONS["halo"]:
                raise RuntimeError("regrowing failed on purpose")
        return super().infer_windows(windows, image_mpp, statistics)


def test_resume_after_a_failure_while_regrowing(full_image_store, tmp_path, client):
    reference = tmp_path / "reference"
    run(full_image_store, reference, SegmentConfig(**OPTIONS), client=client,
        segmenter=components_segmenter())
    out, first, second = tmp_path / "out", tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with pytest.raises(RuntimeError, match="on purpose"):
        run(full_image_store, out, SegmentConfig(**OPTIONS), client=client,
            segmenter=FailingRegrowth(str(first), fail=True))
    result = run(full_image_store, out, SegmentConfig(**OPTIONS, resume=True), client=client,
                 segmenter=FailingRegrowth(str(second), fail=False))
    assert result.manifest["seamless"]["blocks"]["computed"] == 0  # every block was stored
    grid = block_grid(SHAPE, OPTIONS["block_size"], OPTIONS["halo"])
    block_windows = {"-".join(map(str, grid.window(b))) for b in grid}
    segmented = {p.name for p in second.iterdir()}
    assert segmented and not segmented & block_windows  # only regrowing's windows again
    assert_same_outputs(out, reference, n_informative=1)


def test_max_window_is_resolved_once_and_checked_against_worker_memory(full_image_store):
    from codexdask.engine.plan import grown_window_notes, resolve_blocks
    from codexdask.segmenters.watershed import WatershedSegmenter

    patch_store = open_patch_store(full_image_store)
    segmenter = WatershedSegmenter()
    auto = resolve_blocks(SegmentConfig(block_size=100, halo=10), segmenter, 0.5, patch_store)
    assert (auto.size, auto.halo, auto.max_window) == (100, 10, 240)
    off = resolve_blocks(SegmentConfig(max_window=0), segmenter, 0.5, patch_store)
    assert off.max_window == 0 and off.grid(SHAPE).max_window == 0
    one_piece = resolve_blocks(SegmentConfig(block_size="none"), segmenter, 0.5, patch_store)
    assert one_piece.max_window == 0
    need = segmenter.memory_per_patch((4000, 4000), 0.5).host_bytes
    assert grown_window_notes(segmenter, 4000, 0.5, need) == []
    (note,) = grown_window_notes(segmenter, 4000, 0.5, need - 1)
    assert "max_window=4000" in note and "--max-window" in note
