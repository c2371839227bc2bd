"""Objects larger than the halo, regrown: tiled equals one piece, object for object.

The segmenter is exact in windows for objects of any size (:mod:`helpers.large_objects`: connected
components), so every difference from the one-piece labelling would be the stitching's; the
slides carry what a small halo cannot hold: large ellipses, a ring, a U shape and a band across
the slide. The Mesmer and engine sides are in ``tests/segmenters/test_mesmer_seamless.py`` and
``tests/engine/test_regrow_engine.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.large_objects import components, components_segmenter, large_object_image
from scipy import ndimage as ndi

from codexdask.boxes import Box
from codexdask.errors import ConfigError
from codexdask.repair.masks import repair_masks
from codexdask.seamless.blocks import block_grid
from codexdask.seamless.regrow import CutParts, Objects, PatchObjects, regrow_objects
from codexdask.seamless.serial import canonical_labels, repair_blocks, segment_in_blocks
from codexdask.seamless.stitch import owned_objects

REPAIRED = ("cell_matched_mask", "nucleus_matched_mask", "cell_outside_nucleus_mask",
            "cell_matched_boundary", "nucleus_matched_boundary")


def extents(labels: np.ndarray) -> np.ndarray:
    """Largest side of each object's bounding box, by label (index 0 unused)."""
    return np.array([0] + [max(s[0].stop - s[0].start, s[1].stop - s[1].start) if s else 0
                           for s in ndi.find_objects(labels)])


@pytest.mark.parametrize(("shape", "block", "halo", "seed"), [
    ((300, 340), 48, 4, 0), ((257, 411), 64, 12, 1), ((300, 340), 100, 20, 2),
    ((411, 257), 37, 0, 3), ((200, 500), 64, 30, 4),
])
@pytest.mark.parametrize("tie_break", ["lowest-label", "aegle-cpu"])
def test_tiled_equals_one_piece_with_objects_far_larger_than_the_halo(shape, block, halo, seed,
                                                                      tie_break):
    image = large_object_image(*shape, seed=seed)
    segmenter = components_segmenter()
    one_piece = components(image[None], 0.5)[0]
    assert extents(one_piece[..., 0]).max() > 2 * halo + block  # the slide needs regrowing
    dropped, _ = segment_in_blocks(image, segmenter, 0.5, block_size=block, halo=halo,
                                   max_window=0)
    tiled, report = segment_in_blocks(image, segmenter, 0.5, block_size=block, halo=halo,
                                      max_window=max(shape))
    assert report["dropped"] == [0, 0] and report["conflicts"] == [0, 0]
    assert sum(report["regrown"]) > 0 and report["windows"] > 0
    expected = [canonical_labels(one_piece[..., c]) for c in range(2)]
    for c in range(2):
        np.testing.assert_array_equal(tiled[..., c], expected[c])
    # without regrowing, objects are lost
    assert any(not np.array_equal(dropped[..., c], expected[c]) for c in range(2))
    grid = block_grid(shape, block, halo, max(shape))
    masks, _ = repair_blocks(tiled[..., 0], tiled[..., 1], grid, tie_break)
    whole = repair_masks(expected[0], expected[1], tie_break=tie_break)
    for name in REPAIRED:
        np.testing.assert_array_equal(masks[name], whole[name], err_msg=name)


@pytest.mark.parametrize("max_window", [60, 120, 200])
def test_objects_beyond_the_bound_are_dropped_and_counted_never_cut(max_window):
    """Every object of the tiled result is a whole one-piece object; those within the bound are
    all there; the others are counted."""
    shape, halo = (300, 340), 8
    image = large_object_image(*shape, seed=5)
    one_piece = components(image[None], 0.5)[0]
    tiled, report = segment_in_blocks(image, components_segmenter(), 0.5, block_size=48,
                                      halo=halo, max_window=max_window)
    for c in range(2):
        expected = one_piece[..., c]
        sizes = extents(expected)
        kept = set()
        for label, box in enumerate(ndi.find_objects(tiled[..., c]), start=1):
            mask = tiled[..., c][box] == label
            source = np.unique(expected[box][mask])
            assert source.size == 1 and source[0] > 0, "a tiled object is not a one-piece object"
            np.testing.assert_array_equal(expected == source[0], np.pad(
                mask, [(s.start, n - s.stop) for s, n in zip(box, shape, strict=True)]))
            kept.add(int(source[0]))
        missing = set(range(1, int(expected.max()) + 1)) - kept
        # an object fits a window of max_window if its extent plus the margin on both sides does
        assert all(sizes[label] > max_window - 2 * halo for label in missing)
        assert (report["dropped"][c] > 0) == bool(missing)
        assert report["dropped"][c] >= (1 if missing else 0)


def seen(first_pixel: int, box: tuple[int, int, int, int]) -> Objects:
    """One part seen by a block: its box filled."""
    return Objects.of([(first_pixel, Box(*box), np.ones(Box(*box).shape, bool))])


def test_owned_objects_record_the_cut_parts_to_regrow():
    labels = np.zeros((20, 20), np.uint32)
    labels[0:3, 5:7] = 1     # touches the window's top edge, centre in the halo: not recorded
    labels[0:12, 9:11] = 2   # touches the top edge, reaches into the core: recorded
    labels[8:10, 8:10] = 3   # whole, owned: kept
    window, core = Box(10, 10, 30, 30), Box(14, 14, 26, 26)
    owned = owned_objects(labels, window, core, (60, 60))
    assert owned.n_cut == 1
    assert owned.cut.first_pixels.tolist() == [10 * 60 + 19]
    assert owned.cut.boxes.tolist() == [[10, 19, 22, 21]]
    np.testing.assert_array_equal(owned.cut.mask(0), labels[0:12, 9:11] == 2)
    assert owned.first_pixels.tolist() == [18 * 60 + 18]


def test_a_window_serves_every_cut_object_it_holds_and_grows_by_doubling():
    labels = np.zeros((200, 200), np.uint32)
    labels[20:150, 30:40] = 1     # an L: its windows grow down, then right
    labels[140:150, 30:120] = 1
    labels[60:70, 60:100] = 2     # inside the L's last window
    seen_windows = []

    def segment(window: Box) -> np.ndarray:
        seen_windows.append(window)
        return labels[window.slices()][..., None]

    whole, inside = seen(20 * 200 + 30, (20, 30, 40, 40)), seen(60 * 200 + 60, (60, 60, 70, 80))
    regrown, report = regrow_objects([whole], segment, (200, 200), margin=5, max_window=200)
    alone = report.windows
    # doubling: 30 -> 60 -> 120 -> 185 rows (the patch edge), then 20 -> 40 -> 80 -> 120 columns
    assert alone == len(seen_windows) == 7
    both = Objects.of(whole.items() + inside.items())
    regrown, report = regrow_objects([both], segment, (200, 200), margin=5, max_window=200)
    assert report.unresolved == (0,) and report.windows == alone  # object 2 came for free
    assert regrown[0].first_pixels.tolist() == [20 * 200 + 30, 60 * 200 + 60]
    for i in range(2):
        box = regrown[0].box(i)
        np.testing.assert_array_equal(regrown[0].mask(i), labels[box.slices()] == i + 1)
    # a bound too small drops the L; the parts of it that the failing window shows count once
    twice = [Objects.of(whole.items() + seen(60 * 200 + 30, (60, 30, 80, 40)).items())]
    regrown, report = regrow_objects(twice, segment, (200, 200), margin=5, max_window=100)
    assert report.unresolved == (1,) and len(regrown[0]) == 0
    assert max(max(w.shape) for w in seen_windows[-report.windows:]) <= 100


def test_parts_no_window_confirms_are_not_counted():
    """A part seen at a window edge that the grown window shows as background (a window's
    artefact) is neither kept nor counted as dropped."""
    cut = [seen(5 * 50 + 5, (5, 5, 8, 8))]
    regrown, report = regrow_objects(cut, lambda w: np.zeros(w.shape + (1,), np.uint32),
                                     (50, 50), margin=4, max_window=50)
    assert len(regrown[0]) == 0 and report.unresolved == (0,) and report.windows == 1


def test_parts_that_share_pixels_are_one_cluster():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:8] = ring[5:35, 32:35] = ring[5:8, 5:35] = ring[32:35, 5:35] = True
    left = Objects.of([(5 * 40 + 5, Box(5, 5, 35, 20), ring[5:35, 5:20])])     # one block's part
    right = Objects.of([(5 * 40 + 15, Box(5, 15, 35, 35), ring[5:35, 15:35])])  # another's
    inner = Objects.of([(10 * 40 + 10, Box(10, 10, 30, 30), np.pad(np.ones((2, 2), bool), 9))])
    nucleus = Objects.of([(5 * 40 + 5, Box(5, 5, 35, 20), ring[5:35, 5:20])])
    parts = CutParts.of([(0, left), (0, inner), (0, right), (1, nucleus)])
    clusters = parts.clusters()
    # the ring's two parts share pixels; the object inside its box does not; nor the nucleus
    assert [c.parts.first_pixels.tolist() for c in clusters] == [
        [5 * 40 + 5, 5 * 40 + 15], [10 * 40 + 10], [5 * 40 + 5]]
    assert [c.compartments.tolist() for c in clusters] == [[0, 0], [0], [1]]
    assert [len(o) for o in clusters[0].by_compartment(2)] == [2, 0]
    assert CutParts.of([]).clusters() == []


def test_new_objects_are_numbered_once():
    firsts = [[np.array([3, 50], np.int64)], [np.array([7], np.int64)]]
    regrown = Objects.of([(50, Box(0, 0, 1, 1), np.ones((1, 1), bool)),
                          (90, Box(1, 0, 2, 1), np.ones((1, 1), bool))])
    again = Objects.of([(90, Box(1, 0, 2, 1), np.ones((1, 1), bool))])
    objects = PatchObjects.of(firsts, {4: [regrown, Objects.of([])], 9: [again, Objects.of([])]})
    assert objects.new[4][0].tolist() == [False, True] and objects.new[9][0].tolist() == [False]
    assert [p.tolist() for p in objects.numbered_first_pixels(0)] == [[3, 50], [90]]
    ids = objects.regrown_ids(0, np.array([0, 3], np.uint32))
    assert ids[4].tolist() == [0, 3] and ids[9].tolist() == [0]


def test_bad_max_window():
    with pytest.raises(ConfigError, match="max_window"):
        block_grid((10, 10), 4, 1, -1)


def test_watershed_parts_cut_at_window_edges_are_checked_not_counted():
    """The watershed segmenter's cells (up to ~115 px here) outgrow a 52-px halo on 64-px blocks:
    parts its windows cut and no block kept are recorded; regrowing shows them to be window-edge
    artefacts of objects kept whole elsewhere, so nothing is dropped and the result is the one
    piece's (without regrowing they would be reported as dropped)."""
    from codexdask.segmenters.watershed import WatershedSegmenter
    from codexdask.synthetic import synthetic_slide

    image = synthetic_slide(500, 620, seed=1, cell_radius=90).two_channel()
    segmenter = WatershedSegmenter()
    one_piece = segmenter.predict(image[None], 0.5)[0]
    off, report_off = segment_in_blocks(image, segmenter, 0.5, block_size=64, halo=52,
                                        max_window=0)
    on, report_on = segment_in_blocks(image, segmenter, 0.5, block_size=64, halo=52,
                                      max_window=2 * (64 + 2 * 52))
    assert sum(report_off["dropped"]) > 0
    assert report_on["windows"] > 0 and report_on["dropped"] == [0, 0]
    assert report_on["conflicts"] == [0, 0]
    for c in range(2):
        np.testing.assert_array_equal(on[..., c], canonical_labels(one_piece[..., c]))
        np.testing.assert_array_equal(off[..., c], on[..., c])
