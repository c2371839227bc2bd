"""The quantification kernels against their references: regionprops, bincount, numpy quantiles.

Random label images (ids far from contiguous, 1-pixel objects, objects of several pieces,
holes) and the real masks of ``shared/real_data``; sums split into chunks of several sizes add
up to the whole image's sums exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops

from codexdask.errors import InputError
from codexdask.quantification.kernels import compact_labels, grouped_quantiles
from codexdask.quantification.shapes import SHAPE_COLUMNS, measure_shapes
from codexdask.quantification.sums import chunk_sums, combine
from codexdask.quantification.windows import window_measures

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"
#: regionprops attribute of each shape column (centroids handled apart).
REGIONPROPS = {"Area": "area", "MajorAxisLength": "axis_major_length",
               "MinorAxisLength": "axis_minor_length", "Eccentricity": "eccentricity",
               "Solidity": "solidity", "Extent": "extent", "Orientation": "orientation",
               "Perimeter": "perimeter", "ConvexArea": "area_convex"}
EXACT = {"X_centroid", "Y_centroid", "Area", "ConvexArea", "Solidity", "Extent"}


def random_labels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blobs, single pixels and scattered pieces, with ids up to 2**32 - 1 and gaps."""
    blobs = ndi.gaussian_filter(rng.random((height, width)), rng.uniform(0.5, 3))
    labels = ndi.label(blobs > np.quantile(blobs, rng.uniform(0.3, 0.7)))[0].astype(np.uint32)
    singles = rng.random((height, width)) < 0.01
    labels[singles] = labels.max() + 1 + np.arange(singles.sum(), dtype=np.uint32)
    ids = np.unique(labels[labels > 0])
    table = np.zeros(labels.max() + 1, np.uint32)
    table[ids] = rng.choice(2**32 - 1, size=len(ids), replace=False).astype(np.uint32) + 1
    return table[labels]


def real_masks() -> list[tuple[str, np.ndarray]]:
    out = []
    for name, key in (("tissuenet_cellsam_sample", "cell_ref_cellsam"),
                      ("mibi_tnbc_ark_fov8", "cell_ref_mesmer"),
                      ("dsb2018_stardist", "nucleus_gt")):
        with np.load(REAL_DATA / f"{name}.npz") as data:
            out.append((name, data[key].astype(np.uint32)))
    return out


def assert_shapes_equal_regionprops(labels: np.ndarray, table, ids: np.ndarray) -> float:
    """Every shape column against regionprops; returns the worst relative difference."""
    worst = 0.0
    values = np.union1d([0], labels)  # regionprops of the ranks: ids up to 2**32 - 1 are fine
    ranks = np.searchsorted(values, labels)
    props = {int(values[p.label]): p for p in regionprops(ranks)}
    for row, label in enumerate(ids):
        p = props[int(label)]
        got = table.iloc[row]
        assert got["Y_centroid"] == p.centroid[0] and got["X_centroid"] == p.centroid[1]
        for column, attr in REGIONPROPS.items():
            expected = float(getattr(p, attr))
            if column in EXACT:
                assert got[column] == expected, (label, column)
            else:
                error = abs(got[column] - expected) / max(1.0, abs(expected))
                assert error <= 1e-9, (label, column, got[column], expected)
                worst = max(worst, error)
    return worst


def test_compact_labels_by_table_and_by_sort():
    rng = np.random.default_rng(0)
    near = rng.integers(0, 50, (40, 30)).astype(np.uint32) + 1000 * (rng.random((40, 30)) < .5)
    far = near.copy()
    far[0, 0] = 2**32 - 1  # a range far larger than the image: sorted instead of tabled
    for labels in (near, far, np.zeros((3, 4), np.uint32)):
        ids, index = compact_labels(labels)
        np.testing.assert_array_equal(ids, np.unique(labels[labels > 0]))
        padded = np.concatenate([[0], ids])  # index -1 -> 0
        np.testing.assert_array_equal(padded[index + 1], labels)


@pytest.mark.parametrize("seed", range(6))
def test_shapes_equal_regionprops_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, *rng.integers(20, 90, 2))
    values = np.union1d([0], labels)
    props = regionprops(np.searchsorted(values, labels))
    ids = values[[p.label for p in props]].astype(np.uint32)
    boxes = np.array([p.bbox for p in props], np.int64)
    assert_shapes_equal_regionprops(labels, measure_shapes(labels, ids, boxes, (0, 0)), ids)


@pytest.mark.parametrize(("name", "labels"), real_masks(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_shapes_equal_regionprops_on_real_masks(name, labels):
    props = regionprops(labels)
    ids = np.array([p.label for p in props], np.uint32)
    boxes = np.array([p.bbox for p in props], np.int64)
    worst = assert_shapes_equal_regionprops(
        labels, measure_shapes(labels, ids, boxes, (0, 0)), ids)
    assert worst < 1e-9


def test_window_measures_find_each_objects_box_and_offset_it():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, 70, 90)
    ids = np.unique(labels[labels > 0])
    window = labels[10:, 5:]
    inside = np.unique(window[window > 0])
    whole = [i for i in inside if (labels == i).sum() == (window == i).sum()]
    measured = window_measures({"cell": window}, {}, np.asarray(whole, np.uint32), (10, 5),
                               None, 0, np.zeros(0))["shapes"]["cell"]
    assert_shapes_equal_regionprops(labels, measured, np.asarray(whole))
    absent = window_measures({"cell": window[:5, :5] * 0}, {}, ids[:2], (0, 0), None, 0,
                             np.zeros(0))["shapes"]["cell"]
    assert absent.isna().all().all() and list(absent.columns) == list(SHAPE_COLUMNS)


@pytest.mark.parametrize(("dtype", "group_bytes"), [
    (np.uint8, 1), (np.uint16, 2**20), (np.int16, 1), (np.uint32, 2**20), (np.float32, 1)])
def test_chunk_sums_add_up_exactly_in_any_split(dtype, group_bytes):
    """Chunks of several sizes, channels read one by one or all at once, two object sets."""
    rng = np.random.default_rng(5)
    height, width, channels = 83, 97, 3
    cell = random_labels(rng, height, width)
    nucleus = np.where(rng.random((height, width)) < 0.4, cell, 0).astype(np.uint32)
    cytoplasm = np.where(nucleus > 0, 0, cell).astype(np.uint32)
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    low, high = max(float(info.min), -3e4), min(float(info.max), 7e4)
    image = rng.uniform(low, high, (channels, height, width)).astype(dtype)

    def sums(y0, y1, x0, x1):
        groups = []

        def read(group):
            groups.append(group)
            return image[group, y0:y1, x0:x1]

        matched, raw = chunk_sums([[nucleus[y0:y1, x0:x1], cytoplasm[y0:y1, x0:x1]],
                                   [cell[y0:y1, x0:x1]]], read, channels, np.dtype(dtype),
                                  (y0, x0), extra=True, group_bytes=group_bytes)
        assert sum(len(g) for g in groups) == channels  # each channel read once per chunk
        for field in ("ids", "boxes"):
            np.testing.assert_array_equal(getattr(raw, field), getattr(matched, field))
        for field in ("counts", "coords", "sums", "minima", "maxima"):
            together = getattr(matched, field)
            reduce = {"minima": np.min, "maxima": np.max}.get(field, np.sum)
            np.testing.assert_array_equal(reduce(together, axis=0), getattr(raw, field)[0])
        return matched

    whole = sums(0, height, 0, width)
    ids = np.unique(cell[cell > 0])
    np.testing.assert_array_equal(whole.ids, ids)
    _, index = np.unique(cell, return_inverse=True)
    for channel in range(channels):
        expected = ndi.sum_labels(image[channel].astype(np.float64), cell, ids)
        got = whole.sums[:, channel].sum(axis=0).astype(np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        np.testing.assert_array_equal(np.minimum(*whole.minima[:, channel]).astype(np.float64),
                                      ndi.minimum(image[channel], cell, ids))
    for step in (7, 30, 64):
        parts = [sums(y, min(y + step, height), x, min(x + step + 3, width))
                 for y in range(0, height, step) for x in range(0, width, step + 3)]
        split = combine([combine(parts[i:i + 5]) for i in range(0, len(parts), 5)])
        fields = ["ids", "counts", "boxes", "coords", "minima", "maxima"]
        if np.dtype(dtype).kind != "f":  # integer sums are exact: equal in any split
            fields += ["sums", "squares"]
        for field in fields:
            np.testing.assert_array_equal(getattr(split, field), getattr(whole, field), field)


def test_overlapping_layers_are_refused():
    nucleus = np.array([[1, 1], [0, 2]], np.uint32)
    cytoplasm = np.array([[0, 1], [2, 0]], np.uint32)
    with pytest.raises(InputError, match="layers of one object overlap"):
        chunk_sums([[nucleus, cytoplasm]], lambda g: np.ones((len(g), 2, 2), np.uint16), 1,
                   np.dtype(np.uint16), (0, 0))


def test_grouped_quantiles_equal_numpy():
    rng = np.random.default_rng(2)
    index = rng.integers(-1, 6, 500).astype(np.int32)
    index[index == 4] = -1  # an object without pixels
    values = rng.integers(0, 50, 500).astype(np.uint16)
    q = np.array([0.0, 0.1, 0.5, 0.9, 0.995, 1.0])
    got = grouped_quantiles(index, values, 6, q)
    for k in range(6):
        if k == 4:
            assert np.isnan(got[:, k]).all()
            continue
        np.testing.assert_allclose(got[:, k], np.quantile(values[index == k], q), rtol=1e-15)
        assert got[2, k] == np.median(values[index == k])
