"""Segmenters: Mesmer (PyTorch or TensorFlow weights) and an offline watershed, one contract."""

from codexdask.segmenters.base import CallableSegmenter, MemoryEstimate, Segmenter, TiledSegmenter
from codexdask.segmenters.registry import available_segmenters, get_segmenter, register_segmenter

__all__ = [
    "CallableSegmenter",
    "MemoryEstimate",
    "Segmenter",
    "TiledSegmenter",
    "available_segmenters",
    "get_segmenter",
    "register_segmenter",
]
