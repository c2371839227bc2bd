"""Image-wide statistics gathered in passes over boxes of an image: a segmenter's needs.

:class:`ImageStatistics` is the form in which a segmenter declares what it needs, so that the
engine can gather it over a logical patch before any block is segmented (``docs/semantics.md``):
each pass measures boxes that cover the image once, and the partial results combine exactly.
:func:`gather_statistics` runs the passes in this process; the engine runs them as tasks.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from codexdask.boxes import Box
from codexdask.errors import InputError
from codexdask.statistics.exact import (
    DEFAULT_PERCENTILE,
    StatisticsPartial,
    combine_statistics,
    image_statistics,
    nonzero_percentiles,
    refinement_query,
)

__all__ = ["ImageStatistics", "NonZeroPercentiles", "gather_statistics"]



class ImageStatistics(abc.ABC):
    """Image-wide statistics gathered in passes over boxes of an image (a segmenter's needs).

    Instances are small, picklable and immutable. For each pass the engine takes the boxes of
    :meth:`boxes` (they cover the image once), reads the raw pixels of each box's
    :meth:`read_box`, calls :meth:`measure` on the workers, :meth:`combine` on the partial
    results and :meth:`advance` on the combination, until :attr:`done`.
    """

    #: Side of the boxes a pass measures by default.
    chunk_size: int = 1024

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the statistics are complete."""

    def boxes(self, shape: tuple[int, int]) -> list[Box]:
        """The boxes of the next pass; by default a grid of ``chunk_size`` squares."""
        size = self.chunk_size
        return [Box(y, x, min(y + size, shape[0]), min(x + size, shape[1]))
                for y in range(0, shape[0], size) for x in range(0, shape[1], size)]

    def read_box(self, box: Box, shape: tuple[int, int]) -> Box:
        """The raw pixels :meth:`measure` needs for ``box`` (by default the box itself)."""
        return box

    @abc.abstractmethod
    def measure(self, raw: np.ndarray, read_box: Box, box: Box, shape: tuple[int, int]) -> Any:
        """The partial result of the current pass over ``box``, from ``raw`` ``(h, w, C)``
        pixels of ``read_box``."""

    @abc.abstractmethod
    def combine(self, partials: Sequence[Any]) -> Any:
        """The partial result of the union of the boxes of ``partials``."""

    @abc.abstractmethod
    def advance(self, combined: Any) -> ImageStatistics:
        """The statistics after a pass whose combined result is ``combined``."""


def gather_statistics(
    stats: ImageStatistics,
    shape: tuple[int, int],
    read: Callable[[Box], np.ndarray],
    *,
    max_passes: int = 8,
) -> ImageStatistics:
    """Run every pass of ``stats`` over an image of ``shape`` in this process.

    ``read(box)`` returns the raw ``(h, w, C)`` pixels of a box.
    """
    for _ in range(max_passes):
        if stats.done:
            return stats
        partials = []
        for box in stats.boxes(shape):
            read_box = stats.read_box(box, shape)
            partials.append(stats.measure(read(read_box), read_box, box, shape))
        stats = stats.advance(stats.combine(partials))
    if not stats.done:
        raise InputError(f"{type(stats).__name__} did not finish in {max_passes} passes")
    return stats


@dataclasses.dataclass(frozen=True)
class NonZeroPercentiles(ImageStatistics):
    """A percentile of every channel's non-zero pixels, with the first pass's partial.

    Attributes
    ----------
    percentile : float
        In [0, 100].
    first, last : StatisticsPartial or None
        The combined partials of the first and of the latest pass.
    values : numpy.ndarray or None
        ``(C,)`` float64 percentiles (NaN for a channel without non-zero pixels), once done.
    """

    percentile: float = DEFAULT_PERCENTILE
    first: StatisticsPartial | None = None
    last: StatisticsPartial | None = None
    values: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return self.values is not None

    def measure(self, raw: np.ndarray, read_box: Box, box: Box, shape: tuple[int, int]) -> Any:
        query = None if self.last is None else refinement_query(self.last, self.percentile)
        return image_statistics(raw[box.slices(read_box)], query)

    def combine(self, partials: Sequence[Any]) -> Any:
        return combine_statistics(partials)

    def advance(self, combined: Any) -> NonZeroPercentiles:
        state = dataclasses.replace(self, first=self.first or combined, last=combined)
        if refinement_query(combined, self.percentile) is not None:
            return state
        return dataclasses.replace(state, values=nonzero_percentiles(combined, self.percentile))
