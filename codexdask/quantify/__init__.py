"""Per-object quantification of a finished run: marker intensities and shapes, out of core.

- :mod:`~codexdask.quantify.run` — :func:`quantify`, the two passes on a Dask cluster;
- :mod:`~codexdask.quantify.sums` — exact per-object sums of a chunk, and how they add up;
- :mod:`~codexdask.quantify.windows`, :mod:`~codexdask.quantify.shapes` — what needs each
  object whole: its shape (as regionprops) and pixel quantiles;
- :mod:`~codexdask.quantify.ownership` — which patch measures an object in ``patches`` mode;
- :mod:`~codexdask.quantify.table`, :mod:`~codexdask.quantify.writers` — columns and files;
- :mod:`~codexdask.quantify.names` — the channels' marker names;
- :mod:`~codexdask.quantify.kernels` — the compiled kernels.
"""

from __future__ import annotations

from codexdask.quantify.run import QuantResult, quantify

__all__ = ["QuantResult", "quantify"]
