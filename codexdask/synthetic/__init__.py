"""Seeded synthetic data: CODEX-like slides with ground truth, and label pairs for the repair.

Three generators, all deterministic for a given ``seed`` (a :class:`numpy.random.Generator`):

:func:`synthetic_slide`
    A multi-channel ``(C, H, W)`` uint16 slide that looks like a CODEX acquisition at 0.5 µm/px:
    patches of tissue made of touching cells (a jittered-grid Voronoi tessellation, each cell
    limited to a maximum radius), one elliptic nucleus strictly inside every cell, a DAPI channel
    of blurred, textured nuclei, membrane markers that outline subsets of cells (their pixel-wise
    maximum outlines every cell), two non-membrane markers, per-cell intensity variation and an
    uneven illumination field, background and noise inside the tissue, and tissue-free regions
    whose pixels are almost all exactly zero (so patch QC flags them).
:func:`random_disc_pairs`
    The repair stress case: random centres, a cell disc and a concentric nucleus disc per centre,
    each object painting only still-empty pixels (gapped labels, vanished objects, ties).
:func:`dense_tiling_pairs`
    Dense touching cells without background, with nuclei inside, some cells with two nuclei,
    some without, and some nuclei straddling a cell border.
"""

from __future__ import annotations

from codexdask.synthetic.pairs import dense_tiling_pairs, random_disc_pairs
from codexdask.synthetic.tissue import (
    CHANNEL_NAMES,
    MEMBRANE_CHANNELS,
    NUCLEUS_CHANNEL,
    SyntheticSlide,
    synthetic_slide,
)

__all__ = [
    "CHANNEL_NAMES",
    "MEMBRANE_CHANNELS",
    "NUCLEUS_CHANNEL",
    "SyntheticSlide",
    "dense_tiling_pairs",
    "random_disc_pairs",
    "synthetic_slide",
]
