"""The two-channel segmentation input: the nucleus channel, and the whole-cell channel formed as the
pixel-wise maximum of the membrane markers (``docs/semantics.md``, "The segmentation input").

Pure numpy, defined once: the patch writer (:mod:`codexdask.store.slide`) and the synthetic slides
(:mod:`codexdask.synthetic`) both form their whole-cell channel here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from codexdask.errors import ConfigError

__all__ = ["wholecell_channel"]

K = TypeVar("K")


def wholecell_channel(
    markers: Sequence[K], read: Callable[[K], np.ndarray], out: np.ndarray
) -> np.ndarray:
    """Fill ``out`` with the whole-cell channel formed from ``markers``.

    One marker is used as it is. Several are combined by their pixel-wise maximum, starting from
    zeros of ``out``'s dtype (the nucleus channel's): no scaling, no sum. Markers are read one
    at a time, so memory holds ``out`` plus one marker.

    Parameters
    ----------
    markers : sequence
        Marker keys (channel indices, names...), at least one.
    read : callable
        ``read(key)`` returns that marker's pixels, ``(h, w)``.
    out : numpy.ndarray
        ``(h, w)`` output buffer, overwritten.

    Returns
    -------
    numpy.ndarray
        ``out``.

    Raises
    ------
    ConfigError
        If ``markers`` is empty.

    Examples
    --------
    >>> import numpy as np
    >>> planes = {"CD45": np.array([[1, 5]]), "PanCK": np.array([[3, 2]])}
    >>> wholecell_channel(["CD45", "PanCK"], planes.__getitem__, np.empty((1, 2), np.int64))
    array([[3, 5]])
    """
    if len(markers) == 0:
        raise ConfigError("name at least one whole-cell marker, e.g. --wholecell CD45")
    if len(markers) == 1:
        out[...] = read(markers[0])
        return out
    out[...] = 0
    for key in markers:
        np.maximum(out, read(key), out=out)
    return out
