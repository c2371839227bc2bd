"""Overlay pictures (codexdask.outputs.overlays)."""

import imageio.v3 as iio
import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.outputs.overlays import (
    CELL_COLOUR,
    NUCLEUS_COLOUR,
    overlay_rgb,
    scale_channel,
    write_overlay_png,
)


def two_channel(shape=(20, 30)):
    """Nucleus bright in the left half, whole-cell bright in the bottom half."""
    image = np.zeros((*shape, 2), dtype=np.uint16)
    image[:, : shape[1] // 2, 0] = 4000
    image[shape[0] // 2 :, :, 1] = 1000
    return image


def test_scale_channel_is_robust():
    values = np.arange(1000, dtype=np.float64).reshape(25, 40)
    values[0, 0] = 1e9  # one hot pixel must not darken everything else
    scaled = scale_channel(values)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert scaled[12, 20] == pytest.approx(500 / (values.size * 0.995 - 10), rel=0.05)
    assert not scale_channel(np.full((5, 5), 7)).any()  # constant -> black
    sparse = np.zeros((100, 100))
    sparse[0, 0] = 5.0  # percentiles both 0: falls back to min..max
    assert scale_channel(sparse)[0, 0] == 1.0


def test_overlay_colours_channels_and_boundaries():
    image = two_channel()
    cell_boundary = np.zeros((20, 30), np.uint32)
    cell_boundary[5, 2:8] = 3
    nucleus_boundary = np.zeros((20, 30), np.int64)
    nucleus_boundary[5, 6:10] = 1  # overlaps the cell outline at columns 6-7
    rgb = overlay_rgb(image, cell_boundary, nucleus_boundary)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 255)  # nucleus only -> blue
    assert tuple(rgb[19, 29]) == (0, 255, 0)  # whole-cell only -> green
    assert tuple(rgb[19, 0]) == (0, 255, 255)  # both
    assert tuple(rgb[0, 29]) == (0, 0, 0)
    assert tuple(rgb[5, 2]) == CELL_COLOUR
    assert tuple(rgb[5, 7]) == NUCLEUS_COLOUR  # nucleus outlines are drawn on top
    assert tuple(rgb[5, 9]) == NUCLEUS_COLOUR
    plain = overlay_rgb(image)
    np.testing.assert_array_equal(plain[6:], rgb[6:])  # outlines change only their pixels
    assert tuple(plain[5, 2]) == (0, 0, 255)


def test_overlay_rejects_bad_shapes():
    with pytest.raises(InputError, match="H, W, 2"):
        overlay_rgb(np.zeros((20, 30, 3)))
    with pytest.raises(InputError, match="cell_boundary"):
        overlay_rgb(two_channel(), np.zeros((20, 29), np.uint32))


def test_write_overlay_png_round_trip(tmp_path):
    image = two_channel()
    masks = {"cell_boundary": np.eye(20, 30, dtype=np.uint32),
             "cell_matched_boundary": np.zeros((20, 30), np.uint32)}
    path = write_overlay_png(tmp_path / "overlays" / "patch_0001.png", image, masks)
    assert path.exists() and path.parent.name == "overlays"
    back = iio.imread(path)
    np.testing.assert_array_equal(back, overlay_rgb(image, masks["cell_boundary"]))
    assert tuple(back[3, 3]) == CELL_COLOUR
    matched = write_overlay_png(tmp_path / "m.png", image, masks,
                                cell_key="cell_matched_boundary")
    assert tuple(iio.imread(matched)[3, 3]) == (0, 0, 255)  # empty matched outline: not drawn
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["patch_0001.png"]
