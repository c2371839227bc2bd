"""Half-open pixel rectangles: the one coordinate type every stage shares (pure arithmetic)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Box"]


class Box(NamedTuple):
    """Half-open pixel rectangle ``[top, bottom) x [left, right)`` of a 2-D image."""

    top: int
    left: int
    bottom: int
    right: int

    @classmethod
    def whole(cls, shape: tuple[int, int]) -> Box:
        """The box of a whole ``(height, width)`` image."""
        return cls(0, 0, int(shape[0]), int(shape[1]))

    @classmethod
    def from_ranges(cls, rows: tuple[int, int], cols: tuple[int, int]) -> Box:
        """Build a box from a ``(start, stop)`` row range and column range."""
        return cls(int(rows[0]), int(cols[0]), int(rows[1]), int(cols[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the box."""
        return (self.bottom - self.top, self.right - self.left)

    @property
    def rows(self) -> tuple[int, int]:
        return (self.top, self.bottom)

    @property
    def cols(self) -> tuple[int, int]:
        return (self.left, self.right)

    def is_empty(self) -> bool:
        return self.bottom <= self.top or self.right <= self.left

    def contains(self, other: Box) -> bool:
        """True when ``other`` lies inside this box."""
        return (self.top <= other.top and self.left <= other.left
                and other.bottom <= self.bottom and other.right <= self.right)

    def union(self, other: Box) -> Box:
        """Smallest box holding both boxes."""
        return Box(min(self.top, other.top), min(self.left, other.left),
                   max(self.bottom, other.bottom), max(self.right, other.right))

    def intersection(self, other: Box) -> Box:
        """Overlap of both boxes (possibly empty: check :meth:`is_empty`)."""
        return Box(max(self.top, other.top), max(self.left, other.left),
                   min(self.bottom, other.bottom), min(self.right, other.right))

    def slices(self, within: Box | None = None) -> tuple[slice, slice]:
        """Slices selecting this box from an array that covers ``within`` (default: the image)."""
        top, left = (0, 0) if within is None else (within.top, within.left)
        return (slice(self.top - top, self.bottom - top),
                slice(self.left - left, self.right - left))

    def grow(self, margin: int, shape: tuple[int, int]) -> Box:
        """This box grown by ``margin`` pixels on every side, clipped to a ``shape`` image."""
        height, width = int(shape[0]), int(shape[1])
        return Box(max(self.top - margin, 0), max(self.left - margin, 0),
                   min(self.bottom + margin, height), min(self.right + margin, width))

    def shift(self, dy: int, dx: int) -> Box:
        """This box moved by ``dy`` rows and ``dx`` columns."""
        return Box(self.top + dy, self.left + dx, self.bottom + dy, self.right + dx)

    def overlaps(self, other: Box) -> bool:
        """True when the two boxes share at least one pixel."""
        return not self.intersection(other).is_empty()
