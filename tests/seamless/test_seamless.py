"""Tests of the seamless pieces (codexdask.seamless): block grid, ownership stitching, repair.

Every block-wise result is compared with the one-image result it must equal: the stitched labels of
a "perfect" segmenter (each window is a crop of known labels) with those labels renumbered in raster
order, and the block-wise repair with ``repair_masks`` / ``get_boundary`` of the whole image.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.boxes import Box
from codexdask.errors import ConfigError, InputError
from codexdask.repair.boundaries import get_boundary
from codexdask.repair.masks import repair_masks
from codexdask.repair.matching import combine_tallies, match_tally, region_runs, tally_region
from codexdask.seamless.blocks import block_grid
from codexdask.seamless.serial import canonical_labels, repair_blocks, stitch_blocks
from codexdask.seamless.stitch import compose, number_objects, owned_objects
from codexdask.synthetic import dense_tiling_pairs, random_disc_pairs, synthetic_slide

REPAIRED = ("cell_matched_mask", "nucleus_matched_mask", "cell_outside_nucleus_mask",
            "cell_matched_boundary", "nucleus_matched_boundary")
METRICS = ("matched_fraction", "n_cells", "n_nuclei", "n_matched", "n_repaired",
           "frac_cells_matched", "frac_nuclei_matched", "match_jaccard", "matching_stats")


# -- grid -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, block",
                         [((1, 1), 5), ((100, 37), 16), ((64, 64), 64), ((65, 7), 8)])
def test_cores_partition_the_patch(shape: tuple[int, int], block: int) -> None:
    grid = block_grid(shape, block, halo=3)
    count = np.zeros(shape, int)
    for index in grid:
        core, window = grid.core(index), grid.window(index)
        count[core.slices()] += 1
        assert window.top <= core.top and window.bottom >= core.bottom
        assert window.top == max(core.top - 3, 0) and window.right == min(core.right + 3, shape[1])
        assert window.shape[0] <= grid.window_shape[0] and window.shape[1] <= grid.window_shape[1]
    assert (count == 1).all()


def test_blocks_touching_is_every_overlapping_window() -> None:
    grid = block_grid((90, 70), 20, halo=25)
    for index in grid:
        core = grid.core(index)
        expected = [t for t in grid if grid.window(t).overlaps(core)]
        assert grid.blocks_touching(core) == expected


@pytest.mark.parametrize("block, halo", [(0, 1), (8, -1)])
def test_bad_grid(block: int, halo: int) -> None:
    with pytest.raises(ConfigError):
        block_grid((10, 10), block, halo)


# -- stitching ------------------------------------------------------------------------------------


def crop_segmenter(labels: np.ndarray, seed: int = 0):
    """Each window gets the crop of ``labels`` (H, W, C), ids shuffled per window."""
    rng = np.random.default_rng(seed)

    def segment(window: Box) -> np.ndarray:
        crop = labels[window.slices()]
        out = np.zeros(crop.shape, np.int64)
        for c in range(crop.shape[-1]):
            ids = np.unique(crop[..., c])
            ids = ids[ids > 0]
            new = rng.permutation(ids.size) + 1000  # ids unrelated to the global ones
            lut = dict(zip(ids.tolist(), new.tolist()))
            out[..., c] = np.vectorize(lambda v, lut=lut: lut.get(v, 0))(crop[..., c])
        return out

    return segment


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape, block", [((150, 230), 32), ((97, 61), 50), ((200, 200), 64)])
def test_stitching_equals_one_shot(seed: int, shape: tuple[int, int], block: int) -> None:
    cell, nucleus = random_disc_pairs(60, shape, seed=seed, radius_scale=0.25)
    labels = np.stack([cell, nucleus], axis=-1)
    extent = max(max(s.stop - s.start for s in sl) for sl in __import__("scipy").ndimage
                 .find_objects(np.concatenate([cell, nucleus])) if sl is not None)
    grid = block_grid(shape, block, halo=(extent + 1) // 2 + 1)
    stitched, report = stitch_blocks(grid, crop_segmenter(labels, seed))
    assert report == {"regrown": [0, 0], "dropped": [0, 0], "conflicts": [0, 0], "windows": 0}
    for c in range(2):
        np.testing.assert_array_equal(stitched[..., c], canonical_labels(labels[..., c]))


def test_synthetic_slide_labels_stitch_exactly() -> None:
    slide = synthetic_slide(300, 420, seed=3)
    labels = np.stack([slide.cell_labels, slide.nucleus_labels], axis=-1)
    grid = block_grid(labels.shape[:2], 96, halo=24)
    stitched, report = stitch_blocks(grid, crop_segmenter(labels))
    assert report["dropped"] == [0, 0]
    for c in range(2):
        np.testing.assert_array_equal(stitched[..., c], canonical_labels(labels[..., c]))


def test_objects_larger_than_the_halo_are_dropped_and_counted() -> None:
    labels = np.zeros((60, 60, 1), np.uint32)
    labels[5:55, 20:30, 0] = 1   # 50 px tall: larger than a 20-px core + 4-px halo allows
    labels[2:6, 2:6, 0] = 2      # small: kept
    grid = block_grid((60, 60), 20, halo=4)
    stitched, report = stitch_blocks(grid, crop_segmenter(labels))
    assert report["dropped"][0] >= 1
    assert set(np.unique(stitched)) == {0, 1}
    np.testing.assert_array_equal(stitched[..., 0] > 0, labels[..., 0] == 2)


def test_owned_objects_rules() -> None:
    labels = np.zeros((10, 10), np.uint32)
    labels[0:2, 0:2] = 7    # centre (0.5, 0.5) in the core, touches the window's top edge
    labels[4:6, 4:6] = 3    # centre in the core
    labels[8:10, 8:10] = 5  # centre outside the core
    window, core = Box(10, 10, 20, 20), Box(10, 10, 17, 17)
    owned = owned_objects(labels, window, core, (40, 40))
    assert owned.n_cut == 1  # object 7 reaches the window edge, which is not the patch edge
    assert sorted(np.unique(owned.labels)) == [0, 1]
    assert owned.first_pixels.tolist() == [14 * 40 + 14]
    # At the patch edge the same object is whole.
    owned = owned_objects(labels, Box(0, 0, 10, 10), Box(0, 0, 7, 7), (40, 40))
    assert owned.n_cut == 0 and owned.first_pixels.tolist() == [0, 4 * 40 + 4]
    with pytest.raises(InputError):
        owned_objects(labels[:5], window, core, (40, 40))


def test_numbering_and_conflicts() -> None:
    tables = number_objects([np.array([5, 40]), np.array([], np.int64), np.array([2, 41])])
    assert [t.tolist() for t in tables] == [[0, 2, 3], [0], [0, 1, 4]]
    a = np.array([[1, 1], [0, 0]], np.uint32)
    b = np.array([[0, 1], [1, 1]], np.uint32)
    out, clashes = compose(Box(0, 0, 2, 2), [(Box(0, 0, 2, 2), a, np.array([0, 9], np.uint32)),
                                             (Box(0, 0, 2, 2), b, np.array([0, 4], np.uint32))])
    assert clashes == 1 and out.tolist() == [[9, 4], [4, 4]]


def test_canonical_labels() -> None:
    labels = np.array([[0, 9, 9], [3, 0, 12], [3, 0, 0]], np.int64)
    assert canonical_labels(labels).tolist() == [[0, 1, 1], [2, 0, 3], [2, 0, 0]]
    assert canonical_labels(np.zeros((2, 2), np.uint32)).tolist() == [[0, 0], [0, 0]]


# -- block-wise repair -----------------------------------------------------------------------------


def assert_blockwise_repair_equal(cell: np.ndarray, nucleus: np.ndarray, block: int,
                                  mode: str) -> None:
    grid = block_grid(cell.shape, block, halo=0)
    masks, metrics = repair_blocks(cell, nucleus, grid, tie_break=mode)
    expected = repair_masks(cell, nucleus, tie_break=mode)
    np.testing.assert_array_equal(masks["cell_boundary"], get_boundary(cell))
    np.testing.assert_array_equal(masks["nucleus_boundary"], get_boundary(nucleus))
    for name in REPAIRED:
        np.testing.assert_array_equal(masks[name], expected[name], err_msg=name)
    for name in METRICS:
        assert metrics[name] == expected[name] or (
            np.isnan(metrics[name]) and np.isnan(expected[name])), name


@pytest.mark.parametrize("mode", ["lowest-label", "aegle-cpu"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [7, 33, 100])
def test_blockwise_repair_equals_repair_masks_on_discs(mode: str, seed: int, block: int) -> None:
    cell, nucleus = random_disc_pairs(80, (120, 170), seed=seed, radius_scale=0.3)
    assert_blockwise_repair_equal(cell, nucleus, block, mode)


@pytest.mark.parametrize("mode", ["lowest-label", "aegle-cpu"])
@pytest.mark.parametrize("seed", range(3))
def test_blockwise_repair_equals_repair_masks_dense(mode: str, seed: int) -> None:
    cell, nucleus = dense_tiling_pairs((131, 97), cell_size=9, seed=seed)
    assert_blockwise_repair_equal(cell, nucleus, 16, mode)


def test_blockwise_repair_edge_cases() -> None:
    empty = np.zeros((20, 30), np.uint32)
    assert_blockwise_repair_equal(empty, empty, 8, "lowest-label")
    whole = np.ones((20, 30), np.uint32)
    assert_blockwise_repair_equal(whole, whole * 4, 8, "aegle-cpu")
    assert_blockwise_repair_equal(whole[:1], whole[:1], 1, "lowest-label")


def test_tallies_add_up() -> None:
    cell, nucleus = random_disc_pairs(40, (80, 80), seed=5, radius_scale=0.3)
    from codexdask.repair.boundaries import boundary_pixels

    edge = boundary_pixels(cell)
    whole = tally_region(region_runs(cell, nucleus, edge), with_order=True)
    parts = [tally_region(region_runs(np.ascontiguousarray(cell[r]), np.ascontiguousarray(
        nucleus[r]), edge[r], origin=(r.start, 0), image_width=80), with_order=True)
        for r in (slice(0, 31), slice(31, 32), slice(32, 80))]
    combined = combine_tallies(parts)
    for field in ("cell_labels", "nucleus_labels", "nucleus_sizes", "pair_cell", "pair_nucleus",
                  "pair_overlap"):
        np.testing.assert_array_equal(getattr(combined, field), getattr(whole, field), field)
    for a, b in zip(combined.order, whole.order):
        np.testing.assert_array_equal(a, b)
    assert match_tally(combined, aegle_order=True).new_id.tolist() == \
        match_tally(whole, aegle_order=True).new_id.tolist()


# -- a real segmenter, block by block --------------------------------------------------------------


@pytest.mark.parametrize("shape, block, seed, dtype", [
    ((700, 900), 256, 0, "uint16"),
    ((513, 777), 128, 2, "uint16"),   # odd sizes, small blocks: many cells across block corners
    ((601, 599), 300, 4, "float32"),  # float pixels: the levels take three passes
    ((400, 530), 160, 5, "uint8"),
])
def test_watershed_blocks_equal_one_shot(shape: tuple[int, int], block: int, seed: int,
                                        dtype: str) -> None:
    from codexdask.seamless.serial import segment_in_blocks
    from codexdask.segmenters.watershed import WatershedSegmenter
    from codexdask.synthetic.scores import labelling_agreement

    image = synthetic_slide(*shape, seed=seed).two_channel()
    if dtype == "uint8":
        image = (image // 16).clip(0, 255)
    image = image.astype(dtype)
    segmenter = WatershedSegmenter()
    one_shot = segmenter.predict(image[None], 0.5)[0]
    in_blocks, report = segment_in_blocks(image, segmenter, 0.5, block_size=block)
    assert report == {"regrown": [0, 0], "dropped": [0, 0], "conflicts": [0, 0], "windows": 0}
    for c in range(2):
        agreement = labelling_agreement(one_shot[..., c], in_blocks[..., c])
        assert agreement["n_reference"] > 100
        assert agreement["identical_fraction"] >= 0.999, agreement
        assert agreement["pixel_agreement"] >= 0.9999, agreement
        # Exact here: the same objects, numbered in raster order of first pixel.
        np.testing.assert_array_equal(in_blocks[..., c], canonical_labels(one_shot[..., c]))
