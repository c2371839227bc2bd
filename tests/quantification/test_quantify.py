"""``codexdask quantify`` end to end on real clusters: equal to bincount and regionprops on the
same masks, identical at any chunk size and worker count, each object once in ``patches`` mode.

Runs are segmented by the components segmenter (``helpers.large_objects``) on slides of known
cells with three channels of random 16-bit pixels (``helpers.quant_slides``).
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers.large_objects import THRESHOLD
from helpers.quant_slides import (
    CHANNELS,
    assert_matches_reference,
    break_shapes_pass,
    cell_slide,
    mend_shapes_pass,
    reference_table,
    run_from_masks,
    segmented_run,
    write_slide,
)
from scipy import ndimage as ndi

from codexdask.errors import OutputExistsError
from codexdask.layout import (
    CELL,
    CELL_MATCHED_MASK,
    CELL_OUTSIDE_NUCLEUS_MASK,
    CELLS_H5AD,
    MARKERS_FILE,
    NUCLEUS,
    NUCLEUS_MATCHED_MASK,
    QUANT_DIR,
    QUANT_MANIFEST,
    RESULT_STORE,
    compartment_csv_name,
)
from codexdask.outputs import open_result_store
from codexdask.quantification import quantify
from codexdask.store.patch_store import open_patch_store

SHAPE = (203, 237)
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return cell_slide(*SHAPE, seed=4)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, image, client) -> Path:
    return segmented_run(tmp_path_factory.mktemp("full"), image, client)


def masks(out: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    group = open_result_store(out / RESULT_STORE, mode="r")
    return [np.asarray(group[name][0])[: SHAPE[0], : SHAPE[1]] for name in names]


def read_csv(folder: Path, compartment: str) -> pd.DataFrame:
    return pd.read_csv(folder / compartment_csv_name(compartment), float_precision="round_trip")


def test_matched_tables_equal_bincount_and_regionprops(tmp_path, full_run, image, client):
    result = quantify(full_run, tmp_path / "q", client=client)
    cell, nucleus, cytoplasm = masks(full_run, (CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK,
                                                CELL_OUTSIDE_NUCLEUS_MASK))
    assert result.manifest["objects"] == {"cell": len(np.unique(cell)) - 1}
    for compartment, labels, shapes in (("cell", cell, cell), ("nucleus", nucleus, nucleus),
                                        ("cytoplasm", cytoplasm, cell)):
        measured = read_csv(tmp_path / "q", compartment)
        expected = reference_table(image, labels, shapes=shapes)
        # full_image: CellID is the mask's own id, one row per matched cell.
        np.testing.assert_array_equal(measured["CellID"], expected["label"])
        assert_matches_reference(measured, expected, CHANNELS)
    assert list(read_csv(tmp_path / "q", "cell").columns[: 1 + len(CHANNELS)]) == [
        "CellID", *CHANNELS]


@pytest.mark.parametrize("chunk_size", [None, 16, 50, 100])
def test_tables_do_not_depend_on_chunks_or_workers(tmp_path, full_run, client, chunk_size):
    options = {"stats": ["std", "min", "max", "median", "p90"], "chunk_size": chunk_size}
    quantify(full_run, tmp_path / "two", client=client, **options)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as one:
        quantify(full_run, tmp_path / "one", client=one, **options)
    for compartment in ("cell", "nucleus", "cytoplasm"):
        pd.testing.assert_frame_equal(read_csv(tmp_path / "one", compartment),
                                      read_csv(tmp_path / "two", compartment))
    if chunk_size is None:
        return
    reference = quantify(full_run, tmp_path / "default", client=client, stats=options["stats"])
    for compartment in ("cell", "nucleus", "cytoplasm"):
        pd.testing.assert_frame_equal(read_csv(tmp_path / "two", compartment),
                                      read_csv(reference.out_dir, compartment))


@pytest.mark.parametrize("name", ["mibi_tnbc_ark_fov8", "tissuenet_cellsam_sample"])
def test_real_masks_equal_bincount_and_regionprops(tmp_path, client, name):
    """Real cell masks (and nuclei: each cell eroded, so that some cells have none), a slide of
    the real two channels plus random 16-bit channels, read in chunks that cut the cells."""
    data = np.load(REAL_DATA / f"{name}.npz")
    mask_key = next(k for k in data.files if k.startswith("cell_ref"))
    cell = data[mask_key].astype(np.uint32)
    nucleus = np.where(ndi.grey_erosion(cell, size=5) == cell, cell, 0).astype(np.uint32)
    rng = np.random.default_rng(0)
    image = np.concatenate([np.moveaxis(data["image"], -1, 0).astype(np.uint16),
                            rng.integers(0, 65536, (3, *cell.shape), dtype=np.uint16)])
    out = run_from_masks(tmp_path / "run", image, cell, nucleus, CHANNELS)
    quantify(out, tmp_path / "q", client=client, chunk_size=96)
    masks_read = open_result_store(out / RESULT_STORE, mode="r")
    matched = {n: np.asarray(masks_read[n][0]) for n in (
        CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK, CELL_OUTSIDE_NUCLEUS_MASK)}
    worst = 0.0
    for compartment, labels, shapes in (
            ("cell", matched[CELL_MATCHED_MASK], matched[CELL_MATCHED_MASK]),
            ("nucleus", matched[NUCLEUS_MATCHED_MASK], matched[NUCLEUS_MATCHED_MASK]),
            ("cytoplasm", matched[CELL_OUTSIDE_NUCLEUS_MASK], matched[CELL_MATCHED_MASK])):
        expected = reference_table(image, labels, shapes=shapes)
        measured = read_csv(tmp_path / "q", compartment)
        np.testing.assert_array_equal(measured["CellID"], expected["label"])
        worst = max(worst, assert_matches_reference(measured, expected, CHANNELS))
    assert len(read_csv(tmp_path / "q", "cell")) > 100 and worst < 1e-9


def test_quarters_are_measured_patch_by_patch(tmp_path, image, client):
    """In quarters the key is (patch_id, label); each quarter equals its own reference."""
    out = segmented_run(tmp_path / "run", image, client, split_mode="quarters")
    quantify(out, tmp_path / "q", client=client, masks="raw")
    measured = read_csv(tmp_path / "q", "cell")
    store = open_patch_store(tmp_path / "run" / "slide.zarr")
    group = open_result_store(out / RESULT_STORE, mode="r")
    assert sorted(measured["patch_id"].unique()) == [0, 1, 2, 3]
    assert measured["CellID"].tolist() == list(range(1, len(measured) + 1))
    for patch in range(4):
        box = store.patch_box(patch)
        labels = np.asarray(group[CELL][patch])[: box.shape[0], : box.shape[1]]
        expected = reference_table(image[(slice(None), *box.slices())], labels)
        expected["X_centroid"] += box.left
        expected["Y_centroid"] += box.top
        mine = measured[measured["patch_id"] == patch].reset_index(drop=True)
        np.testing.assert_array_equal(mine["label"], expected["label"])
        assert_matches_reference(mine, expected, CHANNELS)


def test_extra_statistics_equal_numpy(tmp_path, full_run, image, client):
    quantify(full_run, tmp_path / "q", client=client, masks="raw",
             stats=["sum", "std", "min", "max", "median", "p10", "p99.5"])
    (cell,) = masks(full_run, (CELL,))
    table = read_csv(tmp_path / "q", "cell")
    for _, row in table.sample(40, random_state=0).iterrows():
        inside = cell == row["label"]
        for c, name in enumerate(CHANNELS):
            values = image[c][inside]
            assert row[f"{name}_sum"] == values.sum(dtype=np.int64)
            assert row[f"{name}_min"] == values.min() and row[f"{name}_max"] == values.max()
            assert row[f"{name}_median"] == np.median(values)
            np.testing.assert_allclose(row[f"{name}_std"], np.std(values.astype(float)),
                                       rtol=1e-10)
            np.testing.assert_allclose(row[f"{name}_p10"], np.percentile(values, 10), rtol=1e-12)
            np.testing.assert_allclose(row[f"{name}_p99.5"], np.percentile(values, 99.5),
                                       rtol=1e-12)


def test_raw_masks_measure_cells_and_nuclei_apart(tmp_path, full_run, image, client):
    result = quantify(full_run, tmp_path / "q", client=client, masks="raw")
    cell, nucleus = masks(full_run, (CELL, NUCLEUS))
    for compartment, labels in (("cell", cell), ("nucleus", nucleus)):
        assert_matches_reference(read_csv(tmp_path / "q", compartment),
                                 reference_table(image, labels), CHANNELS)
    assert not (tmp_path / "q" / compartment_csv_name("cytoplasm")).exists()
    assert result.manifest["objects"] == {"cell": len(np.unique(cell)) - 1,
                                          "nucleus": len(np.unique(nucleus)) - 1}
    nuclei = anndata.read_h5ad(tmp_path / "q" / "nuclei.h5ad")
    assert nuclei.n_obs == len(np.unique(nucleus)) - 1


def test_h5ad_opens_with_anndata(tmp_path, full_run, client):
    quantify(full_run, tmp_path / "q", client=client, stats=["median"])
    adata = anndata.read_h5ad(tmp_path / "q" / CELLS_H5AD)
    cells = read_csv(tmp_path / "q", "cell")
    assert list(adata.var_names) == CHANNELS and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, cells[CHANNELS].to_numpy(np.float32))
    np.testing.assert_array_equal(adata.obsm["spatial"],
                                  cells[["X_centroid", "Y_centroid"]].to_numpy())
    assert {"nucleus_mean", "cytoplasm_mean", "cell_median", "nucleus_median",
            "cytoplasm_median"} <= set(adata.layers)
    nuclei = read_csv(tmp_path / "q", "nucleus")
    np.testing.assert_array_equal(adata.layers["nucleus_mean"],
                                  nuclei[CHANNELS].to_numpy(np.float32))
    assert {"CellID", "patch_id", "Area", "Solidity", "nucleus_Area", "nucleus_Solidity",
            "cytoplasm_Area", "X_centroid_um"} <= set(adata.obs.columns)
    np.testing.assert_allclose(adata.obs["X_centroid_um"], adata.obs["X_centroid"] * 0.5)
    assert adata.uns["codexdask"]["image_mpp"] == 0.5
    assert list(pd.read_csv(tmp_path / "q" / MARKERS_FILE)["marker_name"]) == CHANNELS


def patches_mode_tables(folder: Path, image: np.ndarray, client) -> tuple:
    out = segmented_run(folder, image, client, split_mode="patches", patch_size=64,
                        overlap=0.35)
    result = quantify(out, client=client, masks="raw")
    truth = ndi.label(image[1] > THRESHOLD)[0]  # the components the segmenter sees whole
    by_place = ["Y_centroid", "X_centroid"]
    expected = reference_table(image, truth).sort_values(by_place).reset_index(drop=True)
    measured = read_csv(out / QUANT_DIR, "cell")
    assert measured["CellID"].tolist() == list(range(1, len(measured) + 1))
    return result, measured.sort_values(by_place).reset_index(drop=True), expected


def test_patches_mode_measures_each_object_once(tmp_path, client):
    """Cells smaller than half the overlap: every one measured once, by its owner, exactly."""
    image = cell_slide(*SHAPE, seed=9, density=300, apart=True)
    result, measured, expected = patches_mode_tables(tmp_path, image, client)
    assert_matches_reference(measured, expected, CHANNELS)
    assert result.manifest["left_out"]["outside_core"] > 0  # seen by several patches: kept once
    assert result.manifest["left_out"]["touching_patch_edge"] == 0


def test_patches_mode_leaves_out_objects_wider_than_the_overlap(tmp_path, image, client):
    """Merged clusters wider than the overlap are cut in every patch: left out and counted,
    never measured twice or measured cut."""
    result, measured, expected = patches_mode_tables(tmp_path, image, client)
    key = ["Y_centroid", "X_centroid", "Area"]
    found = expected.merge(measured[key], on=key, how="inner")
    assert len(found) == len(measured)  # each measured object is a whole one, once
    assert_matches_reference(measured, found, CHANNELS)
    assert result.manifest["left_out"]["touching_patch_edge"] > 0
    assert len(measured) < len(expected)


def test_resume_reuses_the_sums_of_an_interrupted_run(tmp_path, image, client):
    out = segmented_run(tmp_path / "run", image, client)
    options = {"chunk_size": 40}  # cells cross chunk edges: the shapes pass has work
    fresh = quantify(out, tmp_path / "fresh", client=client, **options)
    client.run(break_shapes_pass)
    try:
        with pytest.raises(Exception, match="injected failure"):
            quantify(out, client=client, **options)
    finally:
        client.run(mend_shapes_pass)
    assert not (out / QUANT_DIR / QUANT_MANIFEST).exists()
    assert not (out / QUANT_DIR / compartment_csv_name("cell")).exists()
    # A slide of zeros now: only sums kept from the first attempt give the right means.
    write_slide(Path(fresh.manifest["slide"]), np.zeros_like(image))
    with pytest.raises(OutputExistsError, match="--resume"):
        quantify(out, client=client, **options)
    quantify(out, client=client, resume=True, **options)
    pd.testing.assert_frame_equal(read_csv(out / QUANT_DIR, "cell"),
                                  read_csv(fresh.out_dir, "cell"))
    assert (out / QUANT_DIR / QUANT_MANIFEST).is_file()
