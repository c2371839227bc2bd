"""Whole-slide OME-Zarr and OME-TIFF mosaics (codexdask.outputs.mosaics)."""

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from helpers.ngff_reader import read_with_ome_zarr, reader_python
from helpers.result_stores import stats_for

from codexdask.errors import StoreError
from codexdask.layout import MASK_NAMES
from codexdask.outputs import create_result_store, pyramid_shapes, write_mosaics, write_patch_result
from codexdask.store.patch_store import PatchStore


def test_pyramid_shapes_follow_the_reference_rule():
    assert pyramid_shapes(1200, 1200) == [(1200, 1200), (600, 600), (300, 300)]
    assert pyramid_shapes(1000, 3000) == [(1000, 3000), (500, 1500)]
    assert pyramid_shapes(1025, 513) == [(1025, 513), (513, 257)]
    assert pyramid_shapes(511, 5000) == [(511, 5000)]


def fake_patch_store(tmp_path, boxes, informative, patch_shape, padded_shape, seed=0,
                     slide_shape=None):
    """A patch store built in memory: zarr patches (N, H, W, 2) uint16, metadata, attrs."""
    n = len(boxes)
    rng = np.random.default_rng(seed)
    patches = zarr.open_array(str(tmp_path / "patches.zarr"), mode="w",
                              shape=(n, *patch_shape, 2), chunks=(1, *patch_shape, 2),
                              dtype=np.uint16)
    patches[:] = rng.integers(1, 1000, size=(n, *patch_shape, 2), dtype=np.uint16)
    metadata = pd.DataFrame(boxes, columns=["y_start", "x_start", "height", "width"])
    metadata["is_informative"] = informative
    attrs = {"padded_shape": list(padded_shape), "slide_shape": list(slide_shape or padded_shape),
             "image_mpp": 0.5, "nucleus_channel": "DAPI", "wholecell_channels": ["CD45"]}
    return PatchStore(path=tmp_path, patches=patches, metadata=metadata, attrs=attrs)


def reference_mosaic(patch_store, masks, keys):
    """In-memory version of the mosaics' running-offset merge for ``keys`` sharing one offset,
    on a canvas of the slide's shape (patches cut to it)."""
    height, width = patch_store.attrs["slide_shape"]
    canvas = {k: np.zeros((height, width), np.uint32) for k in keys}
    offset = 1
    for i, (y, x, h, w, flag) in enumerate(patch_store.metadata.itertuples(index=False)):
        if not flag:
            continue
        h, w = max(min(h, height - y), 0), max(min(w, width - x), 0)
        crops = {k: masks[i][k][:h, :w] for k in keys}
        for k in keys:
            region = canvas[k][y : y + h, x : x + w]
            write = (region == 0) & (crops[k] > 0)
            region[write] = crops[k][write] + offset - 1
        offset += max(int(c.max(initial=0)) for c in crops.values())
    return canvas


@pytest.fixture
def small_mosaic(tmp_path):
    """4 patches of 4x6 on an 8x10 canvas; patch 1 overlaps patch 0 (columns 4-5), patch 2 is
    not informative, patch 3 has a true height of 3 (its row 3 carries a label to be cropped)."""
    boxes = [(0, 0, 4, 6), (0, 4, 4, 6), (4, 0, 3, 6), (4, 4, 3, 6)]
    patch_store = fake_patch_store(tmp_path, boxes, [True, True, False, True], (4, 6), (8, 10))
    group = create_result_store(tmp_path / "masks.zarr", 4, (4, 6), patch_store="x")
    z = np.zeros((4, 6), np.uint32)
    masks = [{name: z.copy() for name in MASK_NAMES} for _ in range(4)]
    # patch 0: cells 1, 2; nuclei 1..3; matched pairs 1 and 2, nucleus 2 vanished (max 1 < 2)
    masks[0]["cell"][0:2, 0:3] = 1
    masks[0]["cell"][2:4, 3:6] = 2
    masks[0]["nucleus"][0, 0], masks[0]["nucleus"][3, 4], masks[0]["nucleus"][3, 5] = 1, 2, 3
    masks[0]["cell_matched_mask"][0:2, 0:3] = 1
    masks[0]["cell_matched_mask"][2:4, 3:6] = 2
    masks[0]["nucleus_matched_mask"][0, 0] = 1
    # patch 1 (placed at x=4): cell 1 covers its columns 0-1 = canvas columns 4-5
    masks[1]["cell"][0:4, 0:2] = 1
    masks[1]["cell"][1:3, 4:6] = 2
    masks[1]["nucleus"][1, 1] = 1
    masks[1]["cell_matched_mask"][0:4, 0:2] = 1
    masks[1]["nucleus_matched_mask"][1, 1] = 1
    # patch 2 is not informative: its (stale) labels must not appear
    masks[2]["cell"][:] = 7
    # patch 3: label 1 inside, label 9 in the cropped-away row 3
    masks[3]["cell"][0, 0], masks[3]["cell"][3, 0] = 1, 9
    masks[3]["cell_matched_mask"][0, 0:2] = 1
    masks[3]["nucleus_matched_mask"][0, 1] = 1
    for i in range(4):
        write_patch_result(group, i, masks[i], stats_for(1, 1, 1, 1.0))
    return patch_store, group, masks


def test_mosaic_labels_offsets_overlap_and_placement(tmp_path, small_mosaic):
    patch_store, group, masks = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path / "out", exp_id="run1")
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    cells = root["labels/cells/0"][0]
    nuclei = root["labels/nuclei/0"][0]
    cells_m = root["labels/cells_matched/0"][0]
    nuclei_m = root["labels/nuclei_matched/0"][0]
    # placement and the running offset: patch 0 labels 1, 2; patch 1 shifted by 2; patch 3 by 4
    assert cells[0, 0] == 1 and cells[3, 3] == 2
    assert cells[0, 4] == 3 and cells[1, 8] == 4  # patch 1 labels 1, 2 -> 3, 4
    assert cells[2, 4] == 2  # overlap: patch 0 came first and wins
    assert cells[4, 4] == 5  # patch 3 label 1 -> 1 + (5 - 1); label 9 was cropped
    assert cells[7].max() == 0 and not np.isin(9 + 4, cells)
    assert cells[4:7, 0:4].max() == 0  # non-informative patch 2 carries no labels
    # IDs unique across patches: each label value lives in one patch's box only
    assert sorted(np.unique(cells)) == [0, 1, 2, 3, 4, 5]
    # nuclei: independent offsets (patch 0 had 3 nuclei)
    assert nuclei[0, 0] == 1 and nuclei[1, 5] == 4
    # matched pairs share offsets: patch 0 max(cell 2, nucleus 1) = 2 -> patch 1 pair is 3
    assert cells_m[1, 5] == 3 and nuclei_m[1, 5] == 3
    assert cells_m[4, 5] == 4 and nuclei_m[4, 5] == 4  # patch 3 pair: 1 + (4 - 1)
    for value in np.unique(nuclei_m[nuclei_m > 0]):
        assert set(np.unique(cells_m[nuclei_m == value])) == {value}  # nucleus inside its cell
    # the whole canvases equal an in-memory merge
    for label, key in (("cells", "cell"), ("nuclei", "nucleus")):
        np.testing.assert_array_equal(root[f"labels/{label}/0"][0],
                                      reference_mosaic(patch_store, masks, [key])[key])
    shared = reference_mosaic(patch_store, masks, ["cell_matched_mask", "nucleus_matched_mask"])
    np.testing.assert_array_equal(cells_m, shared["cell_matched_mask"])
    np.testing.assert_array_equal(nuclei_m, shared["nucleus_matched_mask"])
    # the image: every patch (informative or not) at its place, channels first
    image = root["0"][:]
    assert image.shape == (2, 8, 10) and image.dtype == np.uint16
    # (the random test patches disagree on their overlap; check the columns only one covers)
    for i, (y, x, h, _, _) in enumerate(patch_store.metadata.itertuples(index=False)):
        local = slice(0, 4) if x == 0 else slice(2, 6)
        np.testing.assert_array_equal(image[:, y : y + h, x + local.start : x + local.stop],
                                      np.moveaxis(patch_store.patches[i, :h, local], -1, 0))
    assert image[:, 7].max() == 0  # below the true height of patches 2 and 3


def test_mosaics_have_the_slides_shape_not_the_padded_grids(tmp_path):
    """A 9 x 13 slide cut into 6 x 8 patches with step 4 x 6 (padded to 10 x 14): the mosaics are
    9 x 13, every patch is cut to the slide, and the labels equal the merge on that canvas."""
    boxes = [(y, x, 6, 8) for y in (0, 4) for x in (0, 6)]
    patch_store = fake_patch_store(tmp_path, boxes, [True] * 4, (6, 8), (10, 14), seed=3,
                                   slide_shape=(9, 13))
    group = create_result_store(tmp_path / "masks.zarr", 4, (6, 8), patch_store="x")
    rng = np.random.default_rng(5)
    masks = []
    for i in range(4):
        cell = rng.integers(0, 6, size=(6, 8)).astype(np.uint32)
        cell[5, 7] = 9  # the highest label lies where the bottom-right patches leave the slide
        nucleus = np.where(cell % 2 == 1, cell, 0).astype(np.uint32)
        masks.append({**{name: np.zeros((6, 8), np.uint32) for name in MASK_NAMES},
                      "cell": cell, "nucleus": nucleus, "cell_matched_mask": cell,
                      "nucleus_matched_mask": nucleus})
        write_patch_result(group, i, masks[i], stats_for(6, 3, 3, 0.5))
    paths = write_mosaics(group, patch_store, tmp_path / "out", exp_id="run1")
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    assert root["0"].shape == (2, 9, 13)
    np.testing.assert_array_equal(root["0"][:, 4:9, 6:13],
                                  np.moveaxis(patch_store.patches[3, :5, :7], -1, 0))
    for label, keys in (("cells", ["cell"]), ("nuclei", ["nucleus"]),
                        ("cells_matched", ["cell_matched_mask", "nucleus_matched_mask"])):
        expected = reference_mosaic(patch_store, masks, keys)[keys[0]]
        np.testing.assert_array_equal(root[f"labels/{label}/0"][0], expected)
    tiff = tifffile.imread(paths["cell"])
    assert tiff.shape[-2:] == (9, 13)


def ngff(node, version):
    """A node's NGFF metadata: under ``ome`` in 0.5 (with its version), the attributes in 0.4."""
    attrs = node.attrs.asdict()
    if version == "0.4":
        return attrs
    assert attrs["ome"]["version"] == version
    return attrs["ome"]


@pytest.mark.parametrize("zarr_format, version", [(3, "0.5"), (2, "0.4")])
def test_mosaic_ome_zarr_metadata(tmp_path, small_mosaic, zarr_format, version):
    patch_store, group, _ = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path, image_mpp=0.25, zarr_format=zarr_format)
    assert paths["ome_zarr"] == tmp_path / "mosaics" / "slide.ome.zarr"
    assert sorted(p.name for p in paths["ome_zarr"].parent.iterdir() if p.suffix == ".zarr") \
        == ["slide.ome.zarr"]  # the unsharded canvases are gone
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    assert root.metadata.zarr_format == zarr_format
    (ms,) = ngff(root, version)["multiscales"]
    assert ms.get("version") == ("0.4" if version == "0.4" else None)
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0"]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.25, 0.25]}]
    assert [c["label"] for c in ngff(root, version)["omero"]["channels"]] == ["DAPI", "CD45"]
    labels = root["labels"]
    assert ngff(labels, version)["labels"] == ["cells", "nuclei", "cells_matched",
                                               "nuclei_matched"]
    for name in ngff(labels, version)["labels"]:
        label = labels[name]
        image_label = ngff(label, version)["image-label"]
        assert image_label["source"] == {"image": "../../"}
        assert image_label.get("version") == ("0.4" if version == "0.4" else None)
        (lms,) = ngff(label, version)["multiscales"]
        assert len(lms["datasets"]) == len(ms["datasets"])
        array = label[lms["datasets"][0]["path"]]
        assert array.dtype == np.uint32 and array.shape == (1, 8, 10)
        if zarr_format == 3:
            assert array.metadata.dimension_names == ("c", "y", "x")
            assert array.metadata.chunk_key_encoding.separator == "/"
        else:
            assert array.metadata.dimension_separator == "/"


def test_mosaic_ome_tiffs(tmp_path, small_mosaic):
    patch_store, group, _ = small_mosaic
    paths = write_mosaics(group, patch_store, tmp_path, exp_id="run1")
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    for label, name in (("cells", "cell"), ("nuclei", "nucleus"),
                        ("cells_matched", "cell_matched_mask"),
                        ("nuclei_matched", "nucleus_matched_mask")):
        path = paths[name]
        assert path == tmp_path / "mosaics" / f"run1.{name}.segmentations.ome.tiff"
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome and tif.is_bigtiff
            series = tif.series[0]
            assert len(series.levels) == 1
            data = series.asarray()
            assert data.dtype == np.uint32
            np.testing.assert_array_equal(data.reshape(8, 10), root[f"labels/{label}/0"][0])
            assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
            assert f'Name="{name}"' in tif.ome_metadata
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert tif.pages[0].is_tiled


def pyramid_mosaic(tmp_path, zarr_format):
    """Mosaics of four 600² patches (one not informative, five cells each) on a 1200² canvas."""
    boxes = [(0, 0, 600, 600), (0, 600, 600, 600), (600, 0, 600, 600), (600, 600, 600, 600)]
    patch_store = fake_patch_store(tmp_path, boxes, [True, False, True, True], (600, 600),
                                   (1200, 1200))
    group = create_result_store(tmp_path / "masks.zarr", 4, (600, 600), patch_store="x")
    rng = np.random.default_rng(1)
    for i in (0, 2, 3):
        masks = {name: np.zeros((600, 600), np.uint32) for name in MASK_NAMES}
        for k in range(1, 6):
            y, x = rng.integers(0, 560, size=2)
            for name in ("cell", "cell_matched_mask"):
                masks[name][y : y + 40, x : x + 40] = k
            for name in ("nucleus", "nucleus_matched_mask"):
                masks[name][y + 10 : y + 30, x + 10 : x + 30] = k
        write_patch_result(group, i, masks, stats_for(5, 5, 5, 1.0))
    return write_mosaics(group, patch_store, tmp_path, zarr_format=zarr_format)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_mosaic_pyramid_levels(tmp_path, zarr_format):
    """1200 x 1200 canvas -> 600 -> 300; levels are 2x strides of level 0. OME-Zarr 0.5 levels
    are one shard each (one file) of 512² chunks; 0.4 levels are 512² chunks."""
    paths = pyramid_mosaic(tmp_path, zarr_format)
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    metadata = ngff(root, "0.5" if zarr_format == 3 else "0.4")
    assert [d["path"] for d in metadata["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    assert root["0"].chunks == (1, 512, 512)
    assert root["0"].shards == ((2, 1536, 1536) if zarr_format == 3 else None)
    level0 = [p for p in (paths["ome_zarr"] / "labels" / "cells" / "0").rglob("*") if p.is_file()]
    assert len(level0) == (2 if zarr_format == 3 else 1 + 9)  # metadata + shards or chunks
    assert [root[str(k)].shape for k in range(3)] == [(2, 1200, 1200), (2, 600, 600),
                                                      (2, 300, 300)]
    np.testing.assert_array_equal(root["2"][:], root["0"][:, ::4, ::4])
    cells0 = root["labels/cells/0"][0]
    assert cells0.max() == 15  # 3 informative patches x 5 labels, unique IDs
    for k in (1, 2):
        np.testing.assert_array_equal(root[f"labels/cells/{k}"][0], cells0[:: 2**k, :: 2**k])
    with tifffile.TiffFile(paths["cell"]) as tif:
        levels = tif.series[0].levels
        assert [lvl.shape[-2:] for lvl in levels] == [(1200, 1200), (600, 600), (300, 300)]
        assert all(lvl.dtype == np.uint32 for lvl in levels)
        for k, lvl in enumerate(levels):
            np.testing.assert_array_equal(lvl.asarray().reshape(lvl.shape[-2:]),
                                          cells0[:: 2**k, :: 2**k])


def test_mosaics_need_finished_patches_and_replace_old_ones(tmp_path, small_mosaic):
    patch_store, group, _ = small_mosaic
    write_mosaics(group, patch_store, tmp_path)
    (tmp_path / "mosaics" / "stale.txt").write_text("old")
    write_mosaics(group, patch_store, tmp_path)
    assert not (tmp_path / "mosaics" / "stale.txt").exists()
    group["done"][3] = False
    with pytest.raises(StoreError, match="resume"):
        write_mosaics(group, patch_store, tmp_path / "again")
    assert not (tmp_path / "again" / "mosaics").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("zarr_format, version", [(3, "0.5"), (2, "0.4")])
def test_ome_zarr_py_reads_the_mosaics(tmp_path, zarr_format, version):
    """ome-zarr-py (>= 0.21, Python 3.12: the reader environment) finds the image with its
    channel names and the four label images, each level equal to what codexdask wrote; both
    formats give the same arrays."""
    reader_python()
    paths = pyramid_mosaic(tmp_path, zarr_format)
    described, arrays = read_with_ome_zarr(paths["ome_zarr"], tmp_path / "read.npz")
    assert described["version"] == version
    nodes = {node["name"]: node for node in described["nodes"]}
    assert nodes["slide"]["specs"] == ["Multiscales", "OMERO"]
    assert nodes["slide"]["channels"] == ["DAPI", "CD45"]
    labels = ["cells", "nuclei", "cells_matched", "nuclei_matched"]
    for label in labels:
        assert nodes[label]["specs"] == ["Label", "Multiscales"]
    root = zarr.open_group(str(paths["ome_zarr"]), mode="r")
    expected = {f"slide/{k}": root[str(k)][:] for k in range(3)}
    expected |= {f"{label}/{k}": root[f"labels/{label}/{k}"][:] for label in labels
                 for k in range(3)}
    assert sorted(arrays) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    other = pyramid_mosaic(tmp_path / "other", 5 - zarr_format)["ome_zarr"]
    other_root = zarr.open_group(str(other), mode="r")
    for key in expected:
        node, level = key.rsplit("/", 1)
        path = level if node == "slide" else f"labels/{node}/{level}"
        np.testing.assert_array_equal(other_root[path][:], expected[key], err_msg=key)
