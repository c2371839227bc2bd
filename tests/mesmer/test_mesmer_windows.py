"""The whole windowed flow of codexdask.mesmer equals the whole-image pipeline.

Statistics from chunks of the (resized) image, the CLAHE range from a partition, then per
window: raw box -> resize -> preprocess -> tiles -> a stand-in network -> untile. The stand-in
network is pointwise, so both paths feed it identical tiles and must blend identical maps.
"""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box
from codexdask.mesmer.normalisation import finalize_statistics
from codexdask.mesmer.preprocess import (
    clahe_extrema,
    combine_clahe_extrema,
    mesmer_preprocess,
    preprocess_plan,
)
from codexdask.mesmer.resize import resize_image, resize_required_box, resize_window, resized_shape
from codexdask.mesmer.tiling import tile_grid, tile_image, untile_image, untile_window
from codexdask.mesmer.windows import plan_window, window_inputs
from codexdask.statistics.exact import combine_statistics, image_statistics
from codexdask.synthetic import synthetic_slide


def network(tiles: np.ndarray) -> np.ndarray:
    """A pointwise stand-in for Mesmer's network: (n, 256, 256, 2) -> (n, 256, 256, 3)."""
    return np.stack([tiles[..., 0] * 0.7 + tiles[..., 1] ** 2, tiles[..., 1] - tiles[..., 0],
                     tiles.sum(axis=-1) / 3], axis=-1).astype(np.float32)


def partition(shape: tuple[int, int], step: int) -> list[Box]:
    return [Box(y, x, min(y + step, shape[0]), min(x + step, shape[1]))
            for y in range(0, shape[0], step) for x in range(0, shape[1], step)]


@pytest.mark.parametrize("image_mpp,pad_mode", [(None, "constant"), (0.377, "constant"),
                                                (0.65, "reflect"), (0.25, "constant")])
def test_windowed_flow_equals_whole_image(image_mpp, pad_mode: str) -> None:
    raw = synthetic_slide(700, 610, seed=9).two_channel()
    raw_shape = raw.shape[:2]
    shape = resized_shape(raw_shape, image_mpp)
    value_range = (raw.min(), raw.max())

    def resized(box: Box) -> np.ndarray:
        if shape == raw_shape:
            return raw[box.slices()]
        need = resize_required_box(box, raw_shape, shape)
        return resize_window(raw[need.slices()], need, box, raw_shape, shape, value_range)

    # Whole-image reference: deepcell's order of operations.
    image = raw if shape == raw_shape else resize_image(raw, shape)
    tiles, grid = tile_image(mesmer_preprocess(image), pad_mode=pad_mode)
    expected = untile_image(network(tiles), grid)[0]

    # Windowed: statistics pass, CLAHE range pass, then windows.
    stats = finalize_statistics(combine_statistics(
        [image_statistics(resized(chunk)) for chunk in partition(shape, 250)]))
    plan = preprocess_plan(shape, stats)
    parts = []
    for core in partition(shape, 300):
        need = plan.required_box(core)
        parts.append(clahe_extrema(resized(need), need, core, plan))
    plan = plan.with_clahe_range(combine_clahe_extrema(parts))
    grid = tile_grid(shape, pad_mode=pad_mode)
    for out_box in partition(shape, 384)[:4] + [Box.whole(shape)]:
        window = plan_window(out_box, grid, plan, raw_shape)
        inputs = window_inputs(raw[window.raw_box.slices()], window, plan, grid, value_range)
        assert np.array_equal(inputs, tiles[window.tiles])
        maps = untile_window(network(inputs), grid, window.tiles, out_box)
        assert np.array_equal(maps, expected[out_box.slices()]), (image_mpp, out_box)


def test_window_errors() -> None:
    raw = synthetic_slide(300, 300, seed=1).two_channel()
    stats = finalize_statistics(image_statistics(raw))
    plan = preprocess_plan((300, 300), stats)
    with pytest.raises(InputError, match="grid"):
        plan_window(Box(0, 0, 10, 10), tile_grid((200, 300)), plan)
    window = plan_window(Box(0, 0, 10, 10), tile_grid((300, 300)), plan, (400, 400))
    with pytest.raises(InputError, match="value_range"):
        window_inputs(raw, window, plan, tile_grid((300, 300)))
