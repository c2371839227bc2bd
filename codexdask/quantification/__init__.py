"""Per-object quantification of a finished run: marker intensities and shapes, out of core.

- :mod:`~codexdask.quantification.run` — :func:`quantify`, the two passes on a Dask cluster;
- :mod:`~codexdask.quantification.sums` — exact per-object sums of a chunk, and how they add up;
- :mod:`~codexdask.quantification.windows`, :mod:`~codexdask.quantification.shapes` — what
  needs each object whole: its shape (as regionprops) and pixel quantiles;
- :mod:`~codexdask.quantification.ownership` — which patch measures an object in ``patches`` mode;
- :mod:`~codexdask.quantification.table`, :mod:`~codexdask.quantification.writers` — columns
  and files;
- :mod:`~codexdask.quantification.names` — the channels' marker names;
- :mod:`~codexdask.quantification.kernels`, :mod:`~codexdask.quantification.hull` — the
  compiled kernels.
"""

from __future__ import annotations

from codexdask.quantification.run import QuantResult, quantify

__all__ = ["QuantResult", "quantify"]
