"""Write a slide as one chunked image of logical patches (``full_image``, ``halves``,
``quarters``), out of core.

These modes segment each logical patch as one image, so the store keeps the slide whole instead
of cutting it into patch-sized chunks: the ``image`` array ``(H, W, 2)`` (nucleus, whole-cell)
in ``chunk_size``² chunks, and one metadata row per logical patch. The slide is read one window
of ``chunk_size`` rows by as many chunk columns as ``window_bytes`` allows, so memory is bounded
by the window whatever the slide size; each window's pixels are added to the QC sums of the
patches it overlaps (:class:`codexdask.store.selection.QCSums`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zarr

from codexdask.boxes import Box
from codexdask.config import PatchConfig
from codexdask.layout import IMAGE_ARRAY
from codexdask.store.formats import Blosc, create_array
from codexdask.store.placement import PatchGrid
from codexdask.store.selection import QCSums
from codexdask.store.slide import Slide, read_window

__all__ = ["write_slide_image"]

#: Compressor of the slide's pixels (as for patches).
PIXEL_COMPRESSOR = Blosc("zstd", 3)


def write_slide_image(
    slide: Slide,
    channels: list[int],
    grid: PatchGrid,
    root: zarr.Group,
    config: PatchConfig,
    window_bytes: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, float]]:
    """Write the two-channel slide into ``root[IMAGE_ARRAY]``; the QC statistics of each patch.

    Parameters
    ----------
    slide : Slide
    channels : list of int
        Nucleus channel index, then the whole-cell markers' indices.
    grid : PatchGrid
        The logical patches (their boxes partition the slide).
    root : zarr.Group
        The store being written.
    config : PatchConfig
        ``chunk_size`` is the chunk side.
    window_bytes : int
        Upper bound on one window's pixel bytes (two output channels plus the channel being
        read); a window is at least one chunk wide.
    progress : callable, optional
        ``progress(done, total)`` in windows.

    Returns
    -------
    list of dict
        :func:`codexdask.store.selection.patch_statistics`-like statistics, one per patch.
    """
    height, width = grid.slide_shape
    size = config.chunk_size
    image = create_array(root, IMAGE_ARRAY, shape=(height, width, 2),
                         chunks=(min(size, height), min(size, width), 2), dtype=slide.dtype,
                         fill_value=0, compressor=PIXEL_COMPRESSOR)
    column_bytes = size * 3 * slide.dtype.itemsize
    span = max(size, (window_bytes // column_bytes) // size * size)
    sums = [QCSums() for _ in grid.boxes]
    boxes = [Box(y, x, y + h, x + w) for y, x, h, w in grid.boxes]
    windows = [Box(y, x, min(y + size, height), min(x + span, width))
               for y in range(0, height, size) for x in range(0, width, span)]
    for done, window in enumerate(windows, start=1):
        pixels = read_window(slide, channels, window.top, window.bottom, window.left,
                             window.right)
        image[window.slices()] = pixels
        for box, patch_sums in zip(boxes, sums, strict=True):
            part = box.intersection(window)
            if not part.is_empty():
                patch_sums.add(pixels[part.slices(window)])
        del pixels
        if progress is not None:
            progress(done, len(windows))
    return [patch_sums.statistics() for patch_sums in sums]


def image_attrs(config: PatchConfig) -> dict[str, Any]:
    """The store attributes particular to this layout."""
    return {"layout": "image", "chunk_size": int(config.chunk_size)}
