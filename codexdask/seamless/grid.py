"""Compute tiles of a logical patch: cores that partition it, and windows with a halo.

A logical patch (the whole slide in ``full_image`` mode, a half or a quarter otherwise) is
segmented tile by tile. Tile ``k`` *owns* the objects whose bounding-box centre lies in its core
and sees them whole in its window, the core grown by ``halo`` pixels on every side (clipped to
the patch). The rule and its guarantee are described in ``docs/semantics.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from codexdask.errors import ConfigError
from codexdask.geometry import Box

__all__ = ["TileGrid", "tile_grid"]


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The compute tiles of one logical patch.

    Attributes
    ----------
    shape : (int, int)
        Patch height and width ``(H, W)``.
    tile_size : int
        Side of a core (the last row and column of cores may be smaller).
    halo : int
        Pixels added around each core to form its window.
    """

    shape: tuple[int, int]
    tile_size: int
    halo: int

    @property
    def n_rows(self) -> int:
        """Rows of cores."""
        return math.ceil(self.shape[0] / self.tile_size)

    @property
    def n_cols(self) -> int:
        """Columns of cores."""
        return math.ceil(self.shape[1] / self.tile_size)

    @property
    def n_tiles(self) -> int:
        """Number of tiles, in row-major order."""
        return self.n_rows * self.n_cols

    @property
    def window_shape(self) -> tuple[int, int]:
        """The largest window's height and width (every window fits in it)."""
        return (min(self.tile_size + 2 * self.halo, self.shape[0]),
                min(self.tile_size + 2 * self.halo, self.shape[1]))

    def core(self, index: int) -> Box:
        """Core of tile ``index``; the cores partition the patch."""
        row, col = divmod(index, self.n_cols)
        y0, x0 = row * self.tile_size, col * self.tile_size
        return Box(y0, x0, min(y0 + self.tile_size, self.shape[0]),
                   min(x0 + self.tile_size, self.shape[1]))

    def window(self, index: int) -> Box:
        """Core of tile ``index`` grown by the halo, clipped to the patch."""
        return self.core(index).grow(self.halo, self.shape)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n_tiles))

    def tiles_touching(self, box: Box) -> list[int]:
        """Tiles whose window overlaps ``box``, in row-major order."""
        reach = self.halo
        rows = range(max((box.top - reach) // self.tile_size, 0),
                     min((box.bottom - 1 + reach) // self.tile_size + 1, self.n_rows))
        cols = range(max((box.left - reach) // self.tile_size, 0),
                     min((box.right - 1 + reach) // self.tile_size + 1, self.n_cols))
        return [r * self.n_cols + c for r in rows for c in cols
                if self.window(r * self.n_cols + c).overlaps(box)]


def tile_grid(shape: tuple[int, int], tile_size: int, halo: int) -> TileGrid:
    """The compute tiles of an ``(H, W)`` patch.

    Parameters
    ----------
    shape : (int, int)
        Patch height and width, both >= 1.
    tile_size : int
        Core side in pixels, >= 1.
    halo : int
        Window margin in pixels, >= 0.

    Raises
    ------
    ConfigError
        If ``tile_size`` < 1 or ``halo`` < 0.
    """
    if int(tile_size) < 1:
        raise ConfigError(f"tile_size must be a positive number of pixels, got {tile_size!r}")
    if int(halo) < 0:
        raise ConfigError(f"halo must be >= 0 pixels, got {halo!r}")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ConfigError(f"a logical patch needs at least one pixel, got shape {shape!r}")
    return TileGrid((height, width), int(tile_size), int(halo))
