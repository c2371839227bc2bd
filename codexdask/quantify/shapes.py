"""Shape columns of whole objects in a window, as :func:`skimage.measure.regionprops` gives them.

:func:`measure_shapes` runs the kernels of :mod:`codexdask.quantify.kernels` over the objects a
window holds whole and turns their exact moments into the table's columns: areas and centroids
exactly as regionprops, axes, eccentricity, orientation and perimeter to rounding
(``docs/quantification.md``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops

from codexdask.quantify.kernels import convex_areas, shape_sums

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
    with np.errstate(invalid="ignore", divide="ignore"):  # objects without pixels: NaN
        mean_y = moments[:, 1] / n
        mean_x = moments[:, 2] / n
        # Central moments from exact sums: mu20 = sum(y^2) - (sum y)^2 / n, and so on.
        mu20 = moments[:, 3] - moments[:, 1] * mean_y
        mu02 = moments[:, 4] - moments[:, 2] * mean_x
        mu11 = moments[:, 5] - moments[:, 1] * mean_x
        a, b, c = mu02 / n, -mu11 / n, mu20 / n
    tensor = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
    tensor = np.nan_to_num(tensor)
    eigen = np.clip(np.linalg.eigvalsh(tensor), 0, None)[:, ::-1] if len(ids) else np.zeros((0, 2))
    major, minor = eigen[:, 0], eigen[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(major == 0, 0.0,
                                np.sqrt(1 - minor / np.where(major == 0, 1, major)))
    orientation = np.where(
        a - c == 0,
        np.where(b < 0, np.pi / 4, -np.pi / 4),
        0.5 * np.arctan2(-2 * b, c - a),
    )
    # Where the object is symmetric (mu11 == 0 or mu20 == mu02 exactly), the orientation is
    # +-pi/2 or +-pi/4 by the sign of a rounding error: take regionprops' own value there.
    for k in np.flatnonzero(((mu11 == 0) & (c - a < 0)) | (a - c == 0)):
        top, left, bottom, right = boxes[k]
        crop = (labels[top:bottom, left:right] == ids[k]).astype(np.uint8)
        orientation[k] = regionprops(crop)[0].orientation
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
