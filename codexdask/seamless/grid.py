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

__all__ = ["Box", "TileGrid", "tile_grid"]


@dataclasses.dataclass(frozen=True)
class Box:
    """A half-open rectangle ``[y0, y1) x [x0, x1)`` of pixel coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def size(self) -> int:
        """Number of pixels."""
        return max(self.y1 - self.y0, 0) * max(self.x1 - self.x0, 0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))`` for indexing an array in the same coordinates."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def within(self, outer: Box) -> tuple[slice, slice]:
        """Slices selecting this box inside an array that covers ``outer``."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0),
                slice(self.x0 - outer.x0, self.x1 - outer.x0))

    def grow(self, margin: int, bounds: tuple[int, int]) -> Box:
        """This box grown by ``margin`` pixels on every side, clipped to ``[0, bounds)``."""
        return Box(max(self.y0 - margin, 0), max(self.x0 - margin, 0),
                   min(self.y1 + margin, bounds[0]), min(self.x1 + margin, bounds[1]))

    def intersect(self, other: Box) -> Box | None:
        """The common part of two boxes, or ``None`` when they do not overlap."""
        box = Box(max(self.y0, other.y0), max(self.x0, other.x0),
                  min(self.y1, other.y1), min(self.x1, other.x1))
        return box if box.y0 < box.y1 and box.x0 < box.x1 else None

    def shift(self, dy: int, dx: int) -> Box:
        """This box moved by ``(dy, dx)``."""
        return Box(self.y0 + dy, self.x0 + dx, self.y1 + dy, self.x1 + dx)


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
        rows = range(max((box.y0 - reach) // self.tile_size, 0),
                     min((box.y1 - 1 + reach) // self.tile_size + 1, self.n_rows))
        cols = range(max((box.x0 - reach) // self.tile_size, 0),
                     min((box.x1 - 1 + reach) // self.tile_size + 1, self.n_cols))
        return [r * self.n_cols + c for r in rows for c in cols
                if self.window(r * self.n_cols + c).intersect(box) is not None]


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
