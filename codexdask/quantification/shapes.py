"""Shape columns of whole objects in a window, as :func:`skimage.measure.regionprops` gives them.

:func:`measure_shapes` runs the kernels of :mod:`codexdask.quantification.kernels` over the
objects a window holds whole and turns their exact moments into the table's columns: areas and
centroids exactly as regionprops, axes, eccentricity, orientation and perimeter to rounding
(``docs/quantification.md``).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from skimage.measure import moments_central

from codexdask.quantification.hull import convex_areas
from codexdask.quantification.kernels import shape_sums

__all__ = ["SHAPE_COLUMNS", "measure_shapes"]

#: Shape columns, mcquant's names (``Perimeter`` and ``ConvexArea`` added), in table order.
SHAPE_COLUMNS = ("X_centroid", "Y_centroid", "Area", "MajorAxisLength", "MinorAxisLength",
                 "Eccentricity", "Solidity", "Extent", "Orientation", "Perimeter", "ConvexArea")


def measure_shapes(
    labels: np.ndarray, ids: np.ndarray, boxes: np.ndarray, origin: tuple[int, int]
) -> pd.DataFrame:
    """The shape of each object ``ids`` of a window that holds them whole.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` uint32 window.
    ids : numpy.ndarray
        ``(K,)`` uint32 labels to measure.
    boxes : numpy.ndarray
        ``(K, 4)`` int64 ``(top, left, bottom, right)`` of each object in the window.
    origin : (int, int)
        Slide coordinates of the window's top-left pixel (added to centroids).

    Returns
    -------
    pandas.DataFrame
        ``K`` rows, :data:`SHAPE_COLUMNS` (float64; ``Area`` and ``ConvexArea`` int64).
        ``Orientation`` is in radians, as regionprops and mcquant give it.
    """
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    boxes = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 4)
    labels = np.ascontiguousarray(labels, dtype=np.uint32)
    moments, perimeter = shape_sums(labels, ids, boxes)
    convex = convex_areas(labels, ids, boxes)
    n = moments[:, 0].astype(np.float64)
    # n × the central moments, exactly (Python integers: no overflow for any object size).
    count, sy, sx, syy, sxx, sxy = (moments[:, i].astype(object) for i in range(6))
    n_mu20, n_mu02, n_mu11 = count * syy - sy * sy, count * sxx - sx * sx, count * sxy - sy * sx
    with np.errstate(invalid="ignore", divide="ignore"):  # objects without pixels: NaN
        a, b, c = (np.asarray([float(v) for v in values], np.float64) / (n * n)
                   for values in (n_mu02, -n_mu11, n_mu20))
    tensor = np.nan_to_num(np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2))
    eigen = np.clip(np.linalg.eigvalsh(tensor), 0, None)[:, ::-1] if len(ids) else np.zeros((0, 2))
    major, minor = eigen[:, 0], eigen[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(major == 0, 0.0,
                                np.sqrt(1 - minor / np.where(major == 0, 1, major)))
        orientation = 0.5 * np.arctan2(-2 * b, c - a)
    # A symmetric object (mu11 == 0 with mu20 < mu02, or mu20 == mu02, exactly) has an
    # orientation of +-pi/2 or +-pi/4 by the sign of a rounding error in regionprops: there,
    # its own arithmetic decides.
    symmetric = ((n_mu11 == 0) & (n_mu20 < n_mu02)) | (n_mu20 == n_mu02)
    for k in np.flatnonzero(symmetric.astype(bool) & (moments[:, 0] > 0)):
        orientation[k] = _regionprops_orientation(labels, ids[k], boxes[k], moments[k])
    area = moments[:, 0]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return pd.DataFrame({
        # One rounding of the exact coordinate sum, as numpy's mean of the coordinates.
        "X_centroid": ((origin[1] + boxes[:, 1]) * moments[:, 0] + moments[:, 2]) / n,
        "Y_centroid": ((origin[0] + boxes[:, 0]) * moments[:, 0] + moments[:, 1]) / n,
        "Area": area,
        "MajorAxisLength": 4 * np.sqrt(major),
        "MinorAxisLength": 4 * np.sqrt(minor),
        "Eccentricity": eccentricity,
        "Solidity": area / convex,
        "Extent": area / box_area,
        "Orientation": orientation,
        "Perimeter": perimeter,
        "ConvexArea": convex,
    })


def _regionprops_orientation(labels: np.ndarray, label: int, box: np.ndarray,
                             moments: np.ndarray) -> float:
    """regionprops' ``orientation`` of one object, by regionprops' own floating-point steps."""
    top, left, bottom, right = (int(v) for v in box)
    image = (labels[top:bottom, left:right] == label).astype(np.uint8)
    return _orientation_of(image.shape, image.tobytes())


@functools.lru_cache(maxsize=4096)
def _orientation_of(shape: tuple[int, int], pixels: bytes) -> float:
    """regionprops' orientation of a binary crop (small symmetric shapes repeat: cached)."""
    image = np.frombuffer(pixels, np.uint8).reshape(shape)
    rows, cols = np.nonzero(image)
    centroid = (rows.sum() / len(rows), cols.sum() / len(cols))  # exact sums, one rounding
    mu = moments_central(image, centroid, order=3, spacing=np.ones(2))
    corners = mu[2, 0] + mu[0, 2]
    a, b, c = (corners - mu[2, 0]) / mu[0, 0], -mu[1, 1] / mu[0, 0], (corners - mu[0, 2]) / mu[0, 0]
    if a - c == 0:
        return float(np.pi / 4 if b < 0 else -np.pi / 4)
    return float(0.5 * np.arctan2(-2 * b, c - a))
