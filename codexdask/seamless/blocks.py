"""Compute blocks of a logical patch: cores that partition it, and windows with a halo.

A logical patch (the whole slide in ``full_image`` mode, a half or a quarter otherwise) is
segmented block by block. Block ``k`` *owns* the objects whose bounding-box centre lies in its core
and sees them whole in its window, the core grown by ``halo`` pixels on every side (clipped to
the patch); an owned object larger than that is segmented again in a window of at most
``max_window`` pixels a side. The rules and their guarantee are described in
``docs/semantics.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

from codexdask.boxes import Box
from codexdask.errors import ConfigError

__all__ = ["BlockGrid", "Blocks", "LogicalPatch", "block_grid", "largest_window",
           "logical_patches"]


@dataclasses.dataclass(frozen=True)
class BlockGrid:
    """The compute blocks of one logical patch.

    Attributes
    ----------
    shape : (int, int)
        Patch height and width ``(H, W)``.
    block_size : int
        Side of a core (the last row and column of cores may be smaller).
    halo : int
        Pixels added around each core to form its window.
    max_window : int
        Largest side of a window grown for an object larger than the halo allows (0: none).
    """

    shape: tuple[int, int]
    block_size: int
    halo: int
    max_window: int = 0

    @property
    def n_rows(self) -> int:
        """Rows of cores."""
        return math.ceil(self.shape[0] / self.block_size)

    @property
    def n_cols(self) -> int:
        """Columns of cores."""
        return math.ceil(self.shape[1] / self.block_size)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, in row-major order."""
        return self.n_rows * self.n_cols

    @property
    def window_shape(self) -> tuple[int, int]:
        """The largest window's height and width (every window fits in it)."""
        return (min(self.block_size + 2 * self.halo, self.shape[0]),
                min(self.block_size + 2 * self.halo, self.shape[1]))

    def core(self, index: int) -> Box:
        """Core of block ``index``; the cores partition the patch."""
        row, col = divmod(index, self.n_cols)
        y0, x0 = row * self.block_size, col * self.block_size
        return Box(y0, x0, min(y0 + self.block_size, self.shape[0]),
                   min(x0 + self.block_size, self.shape[1]))

    def window(self, index: int) -> Box:
        """Core of block ``index`` grown by the halo, clipped to the patch."""
        return self.core(index).grow(self.halo, self.shape)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n_blocks))

    def blocks_touching(self, box: Box) -> list[int]:
        """Blocks whose window overlaps ``box``, in row-major order."""
        reach = self.halo
        rows = range(max((box.top - reach) // self.block_size, 0),
                     min((box.bottom - 1 + reach) // self.block_size + 1, self.n_rows))
        cols = range(max((box.left - reach) // self.block_size, 0),
                     min((box.right - 1 + reach) // self.block_size + 1, self.n_cols))
        return [r * self.n_cols + c for r in rows for c in cols
                if self.window(r * self.n_cols + c).overlaps(box)]


def block_grid(shape: tuple[int, int], block_size: int, halo: int,
               max_window: int = 0) -> BlockGrid:
    """The compute blocks of an ``(H, W)`` patch.

    Parameters
    ----------
    shape : (int, int)
        Patch height and width, both >= 1.
    block_size : int
        Core side in pixels, >= 1.
    halo : int
        Window margin in pixels, >= 0.
    max_window : int
        Largest side of a grown window in pixels, >= 0 (0: objects larger than the halo allows
        are dropped and counted).

    Raises
    ------
    ConfigError
        If ``block_size`` < 1, ``halo`` < 0 or ``max_window`` < 0.
    """
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be a positive number of pixels, got {block_size!r}")
    if int(halo) < 0:
        raise ConfigError(f"halo must be >= 0 pixels, got {halo!r}")
    if int(max_window) < 0:
        raise ConfigError(f"max_window must be >= 0 pixels, got {max_window!r}")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ConfigError(f"a logical patch needs at least one pixel, got shape {shape!r}")
    return BlockGrid((height, width), int(block_size), int(halo), int(max_window))


@dataclasses.dataclass(frozen=True)
class Blocks:
    """How a run cuts its logical patches: the block side and the halo, in pixels.

    Attributes
    ----------
    size : int
        Side of a block's core (>= 1).
    halo : int
        Pixels of context around each core (>= 0).
    max_window : int
        Largest side of a window grown for an object larger than the halo allows (>= 0; 0:
        such objects are dropped and counted).
    """

    size: int
    halo: int
    max_window: int = 0

    def grid(self, shape: tuple[int, int]) -> BlockGrid:
        """The blocks of an ``(H, W)`` patch."""
        return block_grid(shape, self.size, self.halo, self.max_window)

    def chunk(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The result store's chunk of an ``(H, W)`` patch: one block's core, at most the patch."""
        return (min(self.size, int(shape[0])), min(self.size, int(shape[1])))

    def as_dict(self) -> dict[str, int]:
        """``{"block_size": size, "halo": halo, "max_window": max_window}`` (manifest and
        result-store attributes)."""
        return {"block_size": int(self.size), "halo": int(self.halo),
                "max_window": int(self.max_window)}


@dataclasses.dataclass(frozen=True)
class LogicalPatch:
    """One logical patch of a run and its compute blocks.

    Attributes
    ----------
    index : int
        Its row in the patch store.
    box : Box
        Where it lies on the slide.
    grid : BlockGrid
        Its blocks, in patch coordinates.
    first_block : int
        Run-wide id of its block 0 (the blocks of all patches are numbered one after the other).
    """

    index: int
    box: Box
    grid: BlockGrid
    first_block: int

    @property
    def shape(self) -> tuple[int, int]:
        """Patch height and width."""
        return self.grid.shape

    def block_id(self, block: int) -> int:
        """Run-wide id of the patch's block ``block``."""
        return self.first_block + block


def largest_window(patches: Sequence[LogicalPatch]) -> tuple[int, int]:
    """The largest window shape of ``patches`` (every window fits in it; ``(1, 1)`` for none)."""
    return max((p.grid.window_shape for p in patches), key=lambda s: s[0] * s[1],
               default=(1, 1))


def logical_patches(boxes: Sequence[Box], blocks: Blocks) -> tuple[LogicalPatch, ...]:
    """Every patch (``boxes`` in store order) with its blocks; block ids run over all patches."""
    patches, first = [], 0
    for index, box in enumerate(boxes):
        grid = blocks.grid(box.shape)
        patches.append(LogicalPatch(index, box, grid, first))
        first += grid.n_blocks
    return tuple(patches)
