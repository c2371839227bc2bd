"""Pixel boxes and padded index maps shared by Mesmer's window functions.

A :class:`Box` is a half-open rectangle of a 2-D image, in the image's own (global) pixel
coordinates. Every window function of :mod:`codexdask.mesmer` takes the box its input array
covers (``read_box``) and the box it must produce (``out_box``), and has a ``*_required_box``
companion that says which input box it needs, so a caller can read each raw window once.
"""

from __future__ import annotations

import numpy as np

from codexdask.boxes import Box
from codexdask.errors import InputError


def image_shape_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """Validate and return a ``(height, width)`` image shape."""
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise InputError(f"image_shape must be (height, width) with both >= 1, got {shape}")
    return (int(shape[0]), int(shape[1]))


def check_inside(box: Box, shape: tuple[int, int], name: str) -> None:
    """Raise InputError unless ``box`` is a non-empty box inside an image of ``shape``."""
    if box.is_empty() or not Box.whole(shape).contains(box):
        raise InputError(f"{name} {tuple(box)} must be a non-empty box inside the "
                         f"{shape[0]}x{shape[1]} image")


def check_window(array: np.ndarray, read_box: Box, needed: Box, name: str) -> None:
    """Raise InputError unless ``array`` (H, W, ...) covers ``read_box``, which holds ``needed``."""
    if array.ndim < 2 or tuple(array.shape[:2]) != read_box.shape:
        raise InputError(f"{name} has shape {array.shape[:2]} but read_box {tuple(read_box)} "
                         f"is {read_box.shape}; pass the array read over read_box")
    if not read_box.contains(needed):
        raise InputError(f"read_box {tuple(read_box)} does not hold the required box "
                         f"{tuple(needed)}; read the box the matching *_required_box returns")


def padded_source_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every position of an axis padded the way ``numpy.pad`` pads it.

    Returns an int64 array of length ``before + size + after`` whose entry ``p`` is the index
    in ``[0, size)`` that ``numpy.pad(..., mode)`` copies to padded position ``p``, or ``-1``
    for positions that ``mode="constant"`` fills with zeros. For ``"reflect"`` the map is taken
    from ``numpy.pad`` itself, so it follows numpy's own rule also when a pad is longer than the
    axis (numpy then reflects the already padded part, which is not a plain periodic mirror).
    """
    if mode == "constant":
        index = np.full(before + size + after, -1, dtype=np.int64)
        index[before:before + size] = np.arange(size)
        return index
    if mode == "reflect":
        return np.pad(np.arange(size, dtype=np.int64), (before, after), mode="reflect")
    raise InputError(f"pad mode must be 'constant' or 'reflect', got {mode!r}")


def span(index: np.ndarray) -> tuple[int, int]:
    """``(min, max + 1)`` of the non-negative entries of an index array."""
    valid = index[index >= 0]
    if valid.size == 0:
        return (0, 0)
    return (int(valid.min()), int(valid.max()) + 1)
