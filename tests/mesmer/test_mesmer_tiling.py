"""Mesmer's network tiles of codexdask.mesmer.tiling: the grid, and windows equal to the whole.

Parity with deepcell's ``_tile_input`` / ``_untile_output`` is in test_mesmer_deepcell_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box
from codexdask.mesmer.tiling import (
    tile_grid,
    tile_image,
    tile_inputs,
    tile_window,
    tiles_covering,
    tiles_required_box,
    untile_image,
    untile_window,
)


@pytest.mark.parametrize("side,count,before,after", [
    (256, 1, 0, 0), (300, 2, 74, 74), (512, 3, 64, 64), (1024, 5, 0, 0), (2048, 11, 64, 64),
    (257, 2, 96, 95),
])
def test_grid_follows_deepcell_rules(side: int, count: int, before: int, after: int) -> None:
    grid = tile_grid((side, side))
    assert len(grid.starts_y) == count and grid.n_tiles == count * count
    assert grid.pad_before == (before, before) and grid.pad_after == (after, after)
    assert grid.starts_y[-1] + 256 == side + before + after  # last tile ends at the padded end
    assert all(b - a == 192 for a, b in zip(grid.starts_y[:-1], grid.starts_y[1:]))
    assert grid.blend == (count > 1)


def reference_tiles(image: np.ndarray, grid, mode: str) -> np.ndarray:
    """Tiles cut from numpy.pad's padded image at the grid's starts."""
    pads = [(grid.pad_before[0], grid.pad_after[0]), (grid.pad_before[1], grid.pad_after[1]),
            (0, 0)]
    padded = np.pad(image, pads, mode=mode)
    th, tw = grid.tile_shape
    return np.stack([padded[y:y + th, x:x + tw] for y in grid.starts_y for x in grid.starts_x])


@pytest.mark.parametrize("shape", [(256, 256), (300, 700), (513, 260), (1, 1), (100, 300),
                                   (256, 100)])
@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_tiles_are_cut_from_the_padded_image(shape: tuple[int, int], mode: str) -> None:
    image = np.random.default_rng(0).random(shape + (2,), dtype=np.float32)
    tiles, grid = tile_image(image, pad_mode=mode)
    assert tiles.dtype == np.float32 and tiles.shape[0] == grid.n_tiles
    assert np.array_equal(tiles, reference_tiles(image, grid, grid.pad_mode))
    if grid.small:
        assert grid.pad_mode == "reflect" and grid.n_tiles == 1  # deepcell reflects small images
        assert np.array_equal(untile_image(tiles, grid)[0], image)


def test_overwrite_mode_when_one_tile_spans_an_axis() -> None:
    image = np.zeros((256, 700, 1), np.float32)
    tiles, grid = tile_image(image)
    assert not grid.blend and grid.n_tiles == 4
    outputs = np.stack([np.full((256, 256, 1), i, np.float32) for i in range(4)])
    merged = untile_image(outputs, grid)[0, 0, :, 0]
    # No blending: each pixel holds the last tile (in deepcell's order) that covers it.
    starts = np.array(grid.starts_x) - grid.pad_before[1]
    x = np.arange(700)[:, None]
    covering = (starts[None, :] <= x) & (x < starts[None, :] + 256)
    expected = 3 - np.argmax(covering[:, ::-1], axis=1)
    assert np.array_equal(merged, expected.astype(np.float32))
    assert set(np.unique(merged)) == {0.0, 1.0, 2.0, 3.0}


def test_blend_window_is_flat_inside_and_ramps_over_overlaps() -> None:
    grid = tile_grid((1024, 1024))
    corner, middle = tile_window(grid, 0)[..., 0], tile_window(grid, 12)[..., 0]
    assert corner[0, 0] == 1.0 and corner[-1, -1] < 0.01 and middle[128, 128] == 1.0
    assert np.all(np.diff(middle[:64, 128]) > 0) and middle[0, 128] > 0


def random_box(rng: np.random.Generator, shape: tuple[int, int]) -> Box:
    top, left = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
    if rng.random() < 0.2:
        return Box.whole(shape)
    return Box(top, left, int(rng.integers(top + 1, shape[0] + 1)),
               int(rng.integers(left + 1, shape[1] + 1)))


def test_windows_equal_the_whole_image() -> None:
    rng = np.random.default_rng(5)
    checked = 0
    for trial in range(16):
        shape = (int(rng.integers(1, 1300)), int(rng.integers(1, 1300)))
        if trial < 4:
            shape = [(256, 700), (255, 255), (1024, 1024), (100, 300)][trial]
        mode = "reflect" if trial % 3 == 0 else "constant"
        image = rng.random(shape + (2,), dtype=np.float32)
        tiles, grid = tile_image(image, pad_mode=mode)
        outputs = rng.random(tiles.shape[:3] + (3,), dtype=np.float32)
        merged = untile_image(outputs, grid)[0]
        for _ in range(5):
            box = random_box(rng, shape)
            indices = tiles_covering(grid, box)
            need = tiles_required_box(grid, indices)
            assert np.array_equal(tile_inputs(image[need.slices()], need, grid, indices),
                                  tiles[indices])
            shuffled = rng.permutation(indices)
            window = untile_window(outputs[shuffled], grid, shuffled, box)
            assert np.array_equal(window, merged[box.slices()]), (shape, mode, box)
            checked += 1
    assert checked == 80


def test_batches_and_errors() -> None:
    batch = np.random.default_rng(1).random((3, 300, 400, 2), dtype=np.float32)
    tiles, grid = tile_image(batch)
    assert tiles.shape[0] == 3 * grid.n_tiles
    merged = untile_image(tiles[..., :1], grid)
    assert merged.shape == (3, 300, 400, 1)
    single = untile_image(tile_image(batch[1])[0][..., :1], grid)[0]
    assert np.array_equal(merged[1], single)
    box = Box(0, 0, 300, 400)
    with pytest.raises(InputError, match="missing tiles"):
        untile_window(tiles[:2], grid, [0, 1], box)
    with pytest.raises(InputError, match="pad_mode"):
        tile_grid((300, 300), pad_mode="edge")
    with pytest.raises(InputError, match="required box"):
        tile_inputs(batch[0][:10], Box(0, 0, 10, 400), grid, [0])
