"""Mesmer's own machinery: weights, network runtimes, pre- and post-processing pieces.

The segmenter adapter that wires these into the engine's two-stage contract is
:mod:`codexdask.segmenters.mesmer`.
"""
