"""Mesmer on logical patches: compute blocks with halos, stitched, equal the one-shot result.

One-shot is the same segmenter's ``predict`` of the whole image. The fast tests replace the
network by a pointwise stand-in (maps made from each pixel's preprocessed values: nuclei-sized
objects), so they check everything around the network exactly and in seconds: the statistics
passes, the global tile and CLAHE grids, the resize windows, deep watershed on windows, ownership
and stitching. The slow tests run the random-weight PyTorch network, on 1-3 Mpx slides and
through the engine on a real ``LocalCluster``. Its maps are random features, not cells: objects
up to ~330 px across (the halo is sized from the one-shot result's largest object), an interior
mask over ~90 % of the pixels, and blank regions predicted like tissue. There a watershed flood is
not local (an object's extent depends on markers hundreds of pixels away), so its slides are
tissue everywhere; the window maps themselves are checked to be the whole image's, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tissue_batch
from helpers.large_objects import as_domes, large_object_image
from scipy import ndimage as ndi

from codexdask.boxes import Box
from codexdask.errors import StateError
from codexdask.mesmer.normalisation import whole_image_statistics
from codexdask.mesmer.preprocess import clahe_extrema, preprocess_plan
from codexdask.mesmer.resize import resize_image, resized_shape
from codexdask.repair.masks import repair_masks
from codexdask.seamless.blocks import block_grid
from codexdask.seamless.serial import canonical_labels, repair_blocks, segment_in_blocks
from codexdask.segmenters import mesmer as mesmer_module
from codexdask.segmenters.base import WindowInput
from codexdask.segmenters.mesmer import MesmerSegmenter
from codexdask.segmenters.mesmer_stats import MesmerImageStatistics
from codexdask.statistics.passes import gather_statistics
from codexdask.synthetic.scores import labelling_agreement

REPAIRED = ("cell_matched_mask", "nucleus_matched_mask", "cell_outside_nucleus_mask",
            "cell_matched_boundary", "nucleus_matched_boundary")


class PointwiseNetwork:
    """Stands in for Mesmer's network: maps from each pixel's preprocessed (nucleus, membrane)."""

    name = "torch"
    device = "cpu"

    def __init__(self) -> None:
        self.tiles_seen = 0

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.tiles_seen += len(tiles)
        nucleus, membrane = tiles[..., 0], tiles[..., 1]
        return np.stack([nucleus ** 2, np.sqrt(nucleus) * (1 - membrane), nucleus ** 2, nucleus],
                        axis=-1).astype(np.float32)


@pytest.fixture
def pointwise(monkeypatch) -> PointwiseNetwork:
    fake = PointwiseNetwork()
    monkeypatch.setattr(mesmer_module, "load_runtime", lambda *args, **kwargs: fake)
    return fake


def slide(height: int, width: int, seed: int = 3, blank: bool = True) -> np.ndarray:
    """Tissue-like ``(H, W, 2)`` uint16, with an empty (all-zero) rectangle if ``blank``."""
    image = tissue_batch(1, height, width, seed=seed)[0]
    if blank:
        image[height // 5: height // 2, width // 2: width * 4 // 5] = 0
    return image


def assert_blockwise_equals_one_shot(image: np.ndarray, segmenter: MesmerSegmenter,
                                 image_mpp: float, block_size: int, halo: int | None = None,
                                 exact: bool = True, one_shot: np.ndarray | None = None
                                 ) -> dict[str, float]:
    """Block-wise vs ``predict`` of the whole image (``one_shot`` if given): objects, pixels,
    repair.
    Returns the worst agreement figures (and prints them)."""
    if one_shot is None:
        one_shot = segmenter.predict(image[None], image_mpp)[0]
    in_blocks, report = segment_in_blocks(image, segmenter, image_mpp, block_size=block_size,
                                          halo=halo)
    assert report == {"regrown": [0, 0], "dropped": [0, 0], "conflicts": [0, 0], "windows": 0}
    worst = {"identical_fraction": 1.0, "pixel_agreement": 1.0}
    for c, name in enumerate(("whole-cell", "nucleus")):
        agreement = labelling_agreement(one_shot[..., c], in_blocks[..., c])
        print(f"{name} mpp {image_mpp} block {block_size}: {agreement}")
        assert agreement["n_reference"] > 20
        assert agreement["identical_fraction"] >= 0.999, agreement
        assert agreement["pixel_agreement"] >= 0.9999, agreement
        for key in worst:
            worst[key] = min(worst[key], agreement[key])
        if exact:
            np.testing.assert_array_equal(in_blocks[..., c], canonical_labels(one_shot[..., c]))
    grid = block_grid(in_blocks.shape[:2], block_size,
                     segmenter.halo(image_mpp) if halo is None else halo)
    masks, _ = repair_blocks(in_blocks[..., 0], in_blocks[..., 1], grid)
    expected = repair_masks(in_blocks[..., 0], in_blocks[..., 1])
    for name in REPAIRED:
        np.testing.assert_array_equal(masks[name], expected[name], err_msg=name)
    return worst


# -- statistics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_mpp", [0.5, 0.377, 0.65])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_statistics_from_boxes_equal_the_whole_image(monkeypatch, image_mpp, dtype):
    monkeypatch.setattr(MesmerImageStatistics, "chunk_size", 96)  # many boxes
    image = slide(331, 277).astype(dtype)
    shape = image.shape[:2]
    passes = []

    def read(box: Box) -> np.ndarray:
        passes.append(box)
        return image[box.slices()]

    stats = gather_statistics(MesmerSegmenter().statistics(image_mpp), shape, read)
    model = resized_shape(shape, image_mpp)
    resized = image if image_mpp == 0.5 else resize_image(image, model)
    whole = whole_image_statistics(resized)
    for field in ("clip_value", "clipped_minimum", "clipped_maximum", "nonzero"):
        np.testing.assert_array_equal(getattr(stats.stats, field), getattr(whole, field))
    plan = preprocess_plan(model, whole)
    box = Box.whole(model)
    np.testing.assert_array_equal(stats.clahe_range, clahe_extrema(resized, box, box, plan))
    if image_mpp != 0.5:
        assert stats.value_range == (image.min(), image.max())
    assert stats.plan(shape).clahe_range is not None
    # Passes: raw range (resizing), 1 (16-bit) or 2 (32-bit) percentile passes, CLAHE range.
    boxes = math.ceil(model[0] / 96) * math.ceil(model[1] / 96)
    expected = (boxes * (1 + (dtype == np.float32)) + boxes
                + (math.ceil(shape[0] / 96) * math.ceil(shape[1] / 96) if image_mpp != 0.5 else 0))
    assert len(passes) == expected


def test_statistics_follow_the_preprocessing_options():
    image = slide(200, 150)
    segmenter = MesmerSegmenter(preprocess_kwargs={"threshold": False, "normalize": False})
    stats = gather_statistics(segmenter.statistics(0.5), image.shape[:2],
                              lambda box: image[box.slices()])
    assert np.isnan(stats.stats.clip_value).all() and stats.clahe_range is None
    assert not stats.plan(image.shape[:2]).normalize
    blank = np.zeros((90, 80, 2), np.uint16)  # constant channels: no CLAHE pass needed
    stats = gather_statistics(MesmerSegmenter().statistics(0.5), blank.shape[:2],
                              lambda box: blank[box.slices()])
    np.testing.assert_array_equal(stats.clahe_range, np.zeros((2, 2)))


# -- block-wise == one-shot, network stand-in ------------------------------------------------------


@pytest.mark.parametrize(("shape", "image_mpp", "block_size"), [
    ((500, 630), 0.5, 128), ((517, 431), 0.377, 170), ((389, 601), 0.65, 96),
    ((300, 700), 0.5, 256),
])
def test_blockwise_equals_one_shot(pointwise, shape, image_mpp, block_size):
    segmenter = MesmerSegmenter(tiles_per_call=16)
    assert_blockwise_equals_one_shot(slide(*shape), segmenter, image_mpp, block_size)


@pytest.mark.parametrize("options", [{"pad_mode": "reflect"},
                                     {"preprocess_kwargs": {"kernel_size": 37}},
                                     {"preprocess_kwargs": {"percentile": 95.0}}])
def test_blockwise_equals_one_shot_with_other_options(pointwise, options):
    segmenter = MesmerSegmenter(tiles_per_call=16, **options)
    image = slide(400, 450, seed=8).astype(np.float32)
    assert_blockwise_equals_one_shot(image, segmenter, 0.5, 128)


@pytest.mark.parametrize(("shape", "image_mpp", "block_size", "halo"), [
    ((333, 371), 0.5, 128, 16), ((333, 371), 0.5, 128, 32), ((300, 340), 0.65, 96, 16),
])
def test_objects_larger_than_the_halo_are_regrown_as_one_piece_gives_them(
        pointwise, shape, image_mpp, block_size, halo):
    """Grown windows lie off the block grid and have any size; their maps must still be the whole
    patch's (statistics, tile and CLAHE grids), so that regrown objects equal one piece's."""
    image = as_domes(large_object_image(*shape, seed=11))
    segmenter = MesmerSegmenter(tiles_per_call=16)
    one_shot = segmenter.predict(image[None], image_mpp)[0]
    dropped, _ = segment_in_blocks(image, segmenter, image_mpp, block_size=block_size, halo=halo,
                                   max_window=0)
    regrown, report = segment_in_blocks(image, segmenter, image_mpp, block_size=block_size,
                                        halo=halo, max_window=2 * (block_size + 2 * halo))
    assert sum(report["regrown"]) > 0 and report["dropped"] == [0, 0]
    assert report["conflicts"] == [0, 0]
    expected = [canonical_labels(one_shot[..., c]) for c in range(2)]
    for c in range(2):
        np.testing.assert_array_equal(regrown[..., c], expected[c])
    assert any(not np.array_equal(dropped[..., c], expected[c]) for c in range(2))


def test_windows_share_their_network_tiles(pointwise):
    image = slide(300, 520)
    shape = image.shape[:2]
    segmenter = MesmerSegmenter(tiles_per_call=16)
    stats = gather_statistics(segmenter.statistics(0.5), shape, lambda box: image[box.slices()])
    grid = block_grid(shape, 256, segmenter.halo(0.5))
    inputs = []
    for index in grid:
        window = grid.window(index)
        read = segmenter.read_box(window, shape, 0.5)
        assert Box.whole(shape).contains(read) and read.contains(window)
        inputs.append(WindowInput(image[read.slices()], read, window, shape))
    alone = 0
    for item in inputs:
        before = pointwise.tiles_seen
        segmenter.infer_windows([item], 0.5, stats)
        alone += pointwise.tiles_seen - before
    before = pointwise.tiles_seen
    together = segmenter.infer_windows(inputs, 0.5, stats)
    assert pointwise.tiles_seen - before < alone  # shared tiles ran once
    reversed_order = segmenter.infer_windows(inputs[::-1], 0.5, stats)[::-1]
    for first, second in zip(together, reversed_order, strict=True):
        np.testing.assert_array_equal(first.maps, second.maps)


def test_windows_need_the_patch_statistics(pointwise):
    image = slide(100, 100)
    whole = Box.whole((100, 100))
    with pytest.raises(StateError, match="statistics"):
        MesmerSegmenter().infer_windows([WindowInput(image, whole, whole, (100, 100))], 0.5,
                                        None)
    unfinished = MesmerSegmenter().statistics(0.377)
    with pytest.raises(StateError, match="statistics"):
        MesmerSegmenter().infer_windows([WindowInput(image, whole, whole, (100, 100))], 0.377,
                                        unfinished)


def test_default_block_size_and_halo():
    segmenter = MesmerSegmenter()
    assert (segmenter.block_size(0.5), segmenter.halo(0.5)) == (2048, 96)
    assert (segmenter.block_size(0.25), segmenter.halo(0.25)) == (4096, 192)
    assert (segmenter.block_size(1.0), segmenter.halo(1.0)) == (1024, 48)


# -- block-wise == one-shot, the random-weight network (slow) --------------------------------------


@pytest.fixture(scope="module")
def torch_segmenter(tmp_path_factory):
    pytest.importorskip("torch")
    from codexdask.mesmer import network
    from codexdask.mesmer.convert import save_network

    path = tmp_path_factory.mktemp("weights") / "mesmer.safetensors"
    save_network(network.random_network(seed=0), path)
    return MesmerSegmenter(model_path=path, tiles_per_call=8, device="cpu")


def halo_for(one_shot: np.ndarray, image_mpp: float) -> int:
    """A halo that holds the one-shot result's largest object (half its extent, as the owning
    block holds its centre) plus 16 µm of context: the random network's objects are not cells
    (up to ~330 px across), so the default halo cannot be assumed to hold them."""
    extent = max((max(s.stop - s.start for s in box) for c in range(2)
                  for box in ndi.find_objects(one_shot[..., c]) if box is not None), default=0)
    return math.ceil(extent / 2) + math.ceil(16.0 / image_mpp)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("image_mpp", [0.5, 0.377, 0.65])
def test_random_network_window_maps_are_the_whole_images(torch_segmenter, image_mpp):
    """The network part of the windows: maps of every window equal the whole image's there."""
    image = slide(611, 533, seed=2)
    shape = image.shape[:2]
    whole = torch_segmenter.infer(image[None], image_mpp).windows[0]
    stats = gather_statistics(torch_segmenter.statistics(image_mpp), shape,
                              lambda box: image[box.slices()])
    grid = block_grid(shape, 256, 64)
    inputs = []
    for index in grid:
        window = grid.window(index)
        read = torch_segmenter.read_box(window, shape, image_mpp)
        inputs.append(WindowInput(image[read.slices()], read, window, shape))
    for maps in torch_segmenter.infer_windows(inputs, image_mpp, stats):
        np.testing.assert_array_equal(maps.maps, whole.maps[maps.model_box.slices()])


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("shape", "image_mpp", "block_size"), [
    ((1000, 1000), 0.5, 512), ((1111, 1307), 0.377, 384), ((1201, 907), 0.65, 256),
    ((1500, 2000), 0.5, 512),
])
def test_random_network_blockwise_equals_one_shot(torch_segmenter, shape, image_mpp, block_size):
    image = slide(*shape, seed=shape[0], blank=False)
    one_shot = torch_segmenter.predict(image[None], image_mpp)[0]
    halo = halo_for(one_shot, image_mpp)
    print(f"{shape} mpp {image_mpp}: halo {halo} px")
    assert_blockwise_equals_one_shot(image, torch_segmenter, image_mpp, block_size, halo,
                                 exact=False, one_shot=one_shot)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("shape", "image_mpp", "block_size"), [
    ((1000, 1000), 0.5, 256), ((1111, 1307), 0.377, 384),
])
def test_random_network_default_halo_regrows_what_it_cuts(torch_segmenter, shape, image_mpp,
                                                         block_size):
    """The default halo and the random network's objects of up to ~340 px: without regrowing
    whole-cell objects are lost (measured: 98.8 % / 99.8 % identical, 93 % / 98 % of the pixels
    agreeing); with it, as one piece."""
    image = slide(*shape, seed=shape[0], blank=False)
    one_shot = torch_segmenter.predict(image[None], image_mpp)[0]
    halo = torch_segmenter.halo(image_mpp)
    windows = 2 * (block_size + 2 * halo)
    lost, report = segment_in_blocks(image, torch_segmenter, image_mpp, block_size=block_size,
                                     max_window=0)
    assert report["dropped"][0] > 0
    assert labelling_agreement(one_shot[..., 0], lost[..., 0])["identical_fraction"] < 0.999
    regrown, report = segment_in_blocks(image, torch_segmenter, image_mpp,
                                        block_size=block_size, max_window=windows)
    print(f"{shape} mpp {image_mpp}: {report}")
    assert report["regrown"][0] > 0 and report["dropped"] == [0, 0]
    for c in range(2):
        agreement = labelling_agreement(one_shot[..., c], regrown[..., c])
        assert agreement["identical_fraction"] >= 0.997, agreement
        assert agreement["pixel_agreement"] >= 0.9999, agreement


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_engine_equals_one_shot(torch_segmenter, tmp_path, client):
    """``codexdask.engine.runner.run`` on a ``full_image`` store, a real LocalCluster, the PyTorch
    runtime: stitched labels against the one-shot ``predict``, repair against ``repair_masks``."""
    import torch

    from codexdask.config import PatchConfig, SegmentConfig
    from codexdask.engine.runner import run
    from codexdask.outputs import open_result_store
    from codexdask.store.patch_store import open_patch_store, write_patch_store

    image = slide(700, 900, seed=11, blank=False)
    store = write_patch_store(
        image.transpose(2, 0, 1), tmp_path / "slide.zarr",
        PatchConfig(nucleus="DAPI", wholecell=["CD45"], split_mode="full_image", chunk_size=128,
                    image_mpp=0.5), channel_names=["DAPI", "CD45"])
    patch = open_patch_store(store).read_patch(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the single-threaded workers: the same float rounding
    try:
        one_shot = torch_segmenter.predict(patch[None], 0.5)[0]
    finally:
        torch.set_num_threads(threads)
    config = SegmentConfig(backend="mesmer", model_path=torch_segmenter.model_path,
                           tiles_per_call=8, block_size=256, halo=halo_for(one_shot, 0.5),
                           save_mosaics=False, n_overlays=0)
    result = run(store, tmp_path / "out", config, client=client)
    assert result.n_computed == 1
    assert result.manifest["seamless"]["dropped"] == [0, 0]
    group = open_result_store(tmp_path / "out" / "masks.zarr")
    for c, name in enumerate(("cell", "nucleus")):
        agreement = labelling_agreement(one_shot[..., c], group[name][0])
        print(f"engine {name}: {agreement}")
        assert agreement["identical_fraction"] >= 0.999 and agreement["pixel_agreement"] >= 0.9999
    repaired = repair_masks(group["cell"][0], group["nucleus"][0])
    for name in REPAIRED:
        np.testing.assert_array_equal(group[name][0], repaired[name], err_msg=name)

