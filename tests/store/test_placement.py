"""Patch geometry of every split mode (pure arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.config import PatchConfig
from codexdask.errors import SlideError
from codexdask.store.placement import patch_grid


def _cfg(**kwargs: object) -> PatchConfig:
    base: dict[str, object] = {"nucleus": "DAPI", "wholecell": ["CD45", "PanCK"]}
    base.update(kwargs)
    return PatchConfig(**base)  # type: ignore[arg-type]


def test_grid_reference_example_150x170() -> None:
    grid = patch_grid(150, 170, _cfg(patch_size=(64, 64), overlap=0.1))
    assert grid.padded_shape == (186, 186)  # the original formula over-pads (180 is enough)
    assert grid.step == (58, 58) and grid.patch_shape == (64, 64)
    assert [b[:2] for b in grid.boxes] == [(y, x) for y in (0, 58, 116) for x in (0, 58, 116)]
    frame = grid.to_frame()
    assert list(frame.columns) == ["y_start", "x_start", "height", "width"]
    assert (frame["height"] == 64).all() and len(frame) == 9


def test_grid_image_smaller_than_patch() -> None:
    grid = patch_grid(30, 40, _cfg(patch_size=(64, 64), overlap=0.1))
    assert grid.padded_shape == (70, 70) and grid.boxes == ((0, 0, 64, 64),)
    exact = patch_grid(32, 32, _cfg(patch_size=(64, 64), overlap=0.5))  # formula pads 0 here
    assert exact.padded_shape == (64, 64) and exact.n_patches == 1


def test_grid_no_overlap_exact_multiple_and_step_floor() -> None:
    grid = patch_grid(128, 192, _cfg(patch_size=(64, 64), overlap=0.0))
    assert grid.padded_shape == (128, 192) and grid.n_patches == 6
    tiny = patch_grid(5, 5, _cfg(patch_size=(2, 2), overlap=0.99))  # step floors at 1
    assert tiny.step == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_grid_patches_cover_slide_row_major(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 400, size=2))
        ph, pw = (int(v) for v in rng.integers(1, 130, size=2))
        grid = patch_grid(h, w, _cfg(patch_size=(ph, pw), overlap=float(rng.choice([0, .1, .5]))))
        cover = np.zeros(grid.padded_shape, dtype=bool)
        for y, x, bh, bw in grid.boxes:
            assert y + bh <= grid.padded_shape[0] and x + bw <= grid.padded_shape[1]
            cover[y:y + bh, x:x + bw] = True
        assert cover[:h, :w].all()
        assert list(grid.boxes) == sorted(grid.boxes)


def test_grid_full_image_halves_quarters_odd_sizes() -> None:
    full = patch_grid(45, 71, _cfg(split_mode="full_image"))
    assert full.boxes == ((0, 0, 45, 71),) and full.padded_shape == (45, 71)
    vert = patch_grid(45, 71, _cfg(split_mode="halves"))
    assert vert.boxes == ((0, 0, 45, 35), (0, 35, 45, 36)) and vert.patch_shape == (45, 36)
    horiz = patch_grid(45, 71, _cfg(split_mode="halves", split_direction="horizontal"))
    assert horiz.boxes == ((0, 0, 22, 71), (22, 0, 23, 71))
    quarters = patch_grid(45, 71, _cfg(split_mode="quarters"))
    assert quarters.boxes == ((0, 0, 22, 35), (0, 35, 22, 36), (22, 0, 23, 35), (22, 35, 23, 36))
    assert quarters.patch_shape == (23, 36) and quarters.overlap == 0.0
    with pytest.raises(SlideError, match="2 pixels wide"):
        patch_grid(10, 1, _cfg(split_mode="halves"))
