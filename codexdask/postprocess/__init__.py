"""Fast, exact post-processing of Mesmer-style network outputs (numba kernels).

:func:`deep_watershed` gives the same labels as deepcell-toolbox's ``deep_watershed``; the
building blocks below give the same results as their scikit-image (or deepcell-toolbox)
counterparts for the arguments each docstring lists, and release the GIL.

- :func:`h_maxima`, :func:`reconstruction` - grayscale reconstruction by dilation (hybrid
  raster / queue algorithm instead of scikit-image's full sort);
- :func:`gaussian_filter` - scipy's Gaussian smoothing, about 3x faster;
- :func:`label` - connected components;
- :func:`watershed` - marker flood with scikit-image's heap order and tie-breaking;
- :func:`remove_small_objects`, :func:`fill_holes`, :func:`erode_edges`,
  :func:`relabel_sequential` - label clean-up;
- :func:`warm_up` - compile the kernels, or load them from numba's cache, once per process.
"""

from __future__ import annotations

from codexdask.postprocess.flood import watershed
from codexdask.postprocess.labels import (
    erode_edges,
    fill_holes,
    label,
    relabel_sequential,
    remove_small_objects,
)
from codexdask.postprocess.maps_to_labels import STAGES, deep_watershed, warm_up
from codexdask.postprocess.maxima import h_maxima, reconstruction
from codexdask.postprocess.smoothing import gaussian_filter

__all__ = [
    "STAGES",
    "deep_watershed",
    "erode_edges",
    "fill_holes",
    "gaussian_filter",
    "h_maxima",
    "label",
    "reconstruction",
    "relabel_sequential",
    "remove_small_objects",
    "warm_up",
    "watershed",
]
