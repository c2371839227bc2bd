"""Patch geometry, QC flags, the patch store round trip, atomic writes, errors and memory bounds."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from codexdask import patches as patches_mod
from codexdask.config import PatchConfig
from codexdask.errors import InputError, OutputExistsError, SlideError, StoreError
from codexdask.patches import (
    FLAG_COLUMNS,
    METADATA_FILE,
    STAT_COLUMNS,
    open_patch_store,
    patch_grid,
    patch_slide,
    patch_statistics,
    qc_flags,
    write_patch_store,
)

NAMES = ["DAPI", "CD45", "PanCK", "CD3"]
PATCHES_COLUMNS = ["patch_id", "x_start", "y_start", "height", "width", *STAT_COLUMNS,
                   *FLAG_COLUMNS]
OTHER_COLUMNS = ["patch_id", "patch_index", "x_start", "y_start", "patch_width", "patch_height",
                 "height", "width", *STAT_COLUMNS, *FLAG_COLUMNS]


def _cfg(**kwargs: object) -> PatchConfig:
    base: dict[str, object] = {"nucleus": "DAPI", "wholecell": ["CD45", "PanCK"]}
    base.update(kwargs)
    return PatchConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def image() -> np.ndarray:
    """(4, 150, 170) uint16 with a tissue-free band (zero DAPI, bright whole-cell) on the left."""
    rng = np.random.default_rng(1)
    img = rng.integers(1, 3000, size=(4, 150, 170), dtype=np.uint16)
    img[0, :, :62] = 0
    return img


def _extracted(img: np.ndarray) -> np.ndarray:
    return np.stack([img[0], np.maximum(img[1], img[2])], axis=-1)


# ------------------------------------------------------------------------------- geometry


def test_grid_reference_example_150x170() -> None:
    grid = patch_grid(150, 170, _cfg(patch_size=(64, 64), overlap=0.1))
    assert grid.padded_shape == (186, 186)  # reference §1.2 over-pads (minimal would be 180)
    assert grid.step == (58, 58) and grid.patch_shape == (64, 64)
    assert [b[:2] for b in grid.boxes] == [(y, x) for y in (0, 58, 116) for x in (0, 58, 116)]
    frame = grid.to_frame()
    assert list(frame.columns) == ["y_start", "x_start", "height", "width"]
    assert (frame["height"] == 64).all() and len(frame) == 9


def test_grid_image_smaller_than_patch() -> None:
    grid = patch_grid(30, 40, _cfg(patch_size=(64, 64), overlap=0.1))
    assert grid.padded_shape == (70, 70) and grid.boxes == ((0, 0, 64, 64),)
    exact = patch_grid(32, 32, _cfg(patch_size=(64, 64), overlap=0.5))  # formula pads 0 here
    assert exact.padded_shape == (64, 64) and exact.n_patches == 1


def test_grid_no_overlap_exact_multiple_and_step_floor() -> None:
    grid = patch_grid(128, 192, _cfg(patch_size=(64, 64), overlap=0.0))
    assert grid.padded_shape == (128, 192) and grid.n_patches == 6
    tiny = patch_grid(5, 5, _cfg(patch_size=(2, 2), overlap=0.99))  # step floors at 1
    assert tiny.step == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_grid_patches_cover_slide_row_major(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 400, size=2))
        ph, pw = (int(v) for v in rng.integers(1, 130, size=2))
        grid = patch_grid(h, w, _cfg(patch_size=(ph, pw), overlap=float(rng.choice([0, .1, .5]))))
        cover = np.zeros(grid.padded_shape, dtype=bool)
        for y, x, bh, bw in grid.boxes:
            assert y + bh <= grid.padded_shape[0] and x + bw <= grid.padded_shape[1]
            cover[y:y + bh, x:x + bw] = True
        assert cover[:h, :w].all()
        assert list(grid.boxes) == sorted(grid.boxes)


def test_grid_full_image_halves_quarters_odd_sizes() -> None:
    full = patch_grid(45, 71, _cfg(split_mode="full_image"))
    assert full.boxes == ((0, 0, 45, 71),) and full.padded_shape == (45, 71)
    vert = patch_grid(45, 71, _cfg(split_mode="halves"))
    assert vert.boxes == ((0, 0, 45, 35), (0, 35, 45, 36)) and vert.patch_shape == (45, 36)
    horiz = patch_grid(45, 71, _cfg(split_mode="halves", split_direction="horizontal"))
    assert horiz.boxes == ((0, 0, 22, 71), (22, 0, 23, 71))
    quarters = patch_grid(45, 71, _cfg(split_mode="quarters"))
    assert quarters.boxes == ((0, 0, 22, 35), (0, 35, 22, 36), (22, 0, 23, 35), (22, 35, 23, 36))
    assert quarters.patch_shape == (23, 36) and quarters.overlap == 0.0
    with pytest.raises(SlideError, match="2 pixels wide"):
        patch_grid(10, 1, _cfg(split_mode="halves"))


# ------------------------------------------------------------------------------- QC


def test_patch_statistics_values() -> None:
    tile = np.zeros((4, 5, 2), dtype=np.uint16)
    tile[0, :, 0] = 10  # 5 of 20 pixels
    tile[..., 1] = 3
    stats = patch_statistics(tile)
    assert stats["nucleus_mean"] == pytest.approx(2.5)
    assert stats["nucleus_std"] == pytest.approx(np.std(tile[..., 0]))  # population std
    assert stats["nucleus_non_zero_perc"] == pytest.approx(0.25)  # a fraction, not a percent
    assert stats["wholecell_mean"] == 3 and stats["wholecell_std"] == 0
    assert stats["wholecell_non_zero_perc"] == 1.0


def test_informative_flag_scenario() -> None:
    stats = pd.DataFrame({
        "nucleus_non_zero_perc": [0.049, 0.05, 1.0, 1.0],
        "nucleus_mean": [50.0, 50.0, 0.99, 1.0],
    })
    flags = qc_flags(stats)
    assert flags["is_empty"].tolist() == [True, False, False, False]
    assert flags["is_noisy"].tolist() == [False, False, True, False]
    assert flags["is_informative"].tolist() == [False, True, False, True]
    dark = np.zeros((8, 8, 2), dtype=np.uint16)
    dark[..., 1] = 60000  # zero DAPI, bright whole-cell: bad, only the nucleus channel counts
    row = qc_flags(pd.DataFrame([patch_statistics(dark)]))
    assert bool(row["is_bad_patch"][0]) and not bool(row["is_informative"][0])
    loose = qc_flags(stats, non_zero_perc_threshold=0.01, mean_intensity_threshold=0.5)
    assert loose["is_informative"].all()


# ------------------------------------------------------------------------------- store


def test_store_round_trip_patches_mode(tmp_path: Path, image: np.ndarray) -> None:
    np.save(tmp_path / "s.npy", image)
    cfg = _cfg(patch_size=(64, 64), overlap=0.1)
    calls: list[tuple[int, int]] = []
    out = write_patch_store(tmp_path / "s.npy", tmp_path / "p.zarr", cfg, channel_names=NAMES,
                            window_bytes=1, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (9, 9) and len(calls) == 9  # window_bytes=1: one patch per window
    store = open_patch_store(out)
    assert store.n_patches == 9 and store.patch_shape == (64, 64)
    assert store.patches.chunks == (1, 64, 64, 2) and store.patches.dtype == np.uint16
    assert store.patches.compressor.cname == "zstd"
    padded = np.pad(_extracted(image), ((0, 36), (0, 16), (0, 0)))
    meta = store.metadata
    assert list(meta.columns) == PATCHES_COLUMNS
    for i, row in meta.iterrows():
        y, x = int(row["y_start"]), int(row["x_start"])
        crop = padded[y:y + 64, x:x + 64]
        np.testing.assert_array_equal(store.patches[i], crop)
        for key, value in patch_statistics(crop).items():  # statistics include the zero padding
            assert row[key] == pytest.approx(value)
    assert meta["is_informative"].dtype == bool
    assert meta["is_informative"].tolist() == [False, True, True] * 3  # x=0 column has no DAPI
    np.testing.assert_array_equal(store.informative_indices, [1, 2, 4, 5, 7, 8])
    attrs = store.attrs
    assert attrs["kind"] == "patch-store" and attrs["version"] == 1
    assert attrs["channels"] == NAMES and attrs["wholecell_channels"] == ["CD45", "PanCK"]
    assert attrs["padded_shape"] == [186, 186] and attrs["slide_shape"] == [150, 170]
    assert attrs["step"] == [58, 58] and attrs["patch_size"] == [64, 64]
    assert attrs["image_mpp"] == 0.5 and attrs["dtype"] == "<u2"
    np.testing.assert_array_equal(store.as_dask()[3].compute(), store.patches[3])
    again = write_patch_store(image, tmp_path / "q.zarr", cfg, channel_names=NAMES)
    np.testing.assert_array_equal(open_patch_store(again).patches[:], store.patches[:])


@pytest.mark.parametrize("mode", ["full_image", "halves", "quarters"])
def test_store_round_trip_other_modes(tmp_path: Path, image: np.ndarray, mode: str) -> None:
    img = image[:, :45, :71]
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, img, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": NAMES}, "PhysicalSizeX": 0.377})
    store = open_patch_store(write_patch_store(path, tmp_path / "o.zarr", _cfg(split_mode=mode)))
    meta = store.metadata
    assert list(meta.columns) == OTHER_COLUMNS
    assert store.image_mpp == pytest.approx(0.377)
    ext = _extracted(img)
    for i, row in meta.iterrows():
        y, x, h, w = (int(row[k]) for k in ("y_start", "x_start", "height", "width"))
        assert (row["patch_height"], row["patch_width"]) == (h, w)
        crop = ext[y:y + h, x:x + w]
        stored = store.patches[i]
        np.testing.assert_array_equal(stored[:h, :w], crop)
        assert not stored[h:].any() and not stored[:, w:].any()  # zero-padded bottom/right
        assert row["nucleus_mean"] == pytest.approx(crop[..., 0].mean())  # on the true patch


def test_config_overrides_and_antibodies(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    tsv = tmp_path / "ab.tsv"
    tsv.write_text("antibody_name\n" + "\n".join(NAMES) + "\n")
    cfg = _cfg(antibodies=str(tsv), image_mpp=0.65, wholecell=["CD3"], patch_size=(64, 64),
               mean_intensity_threshold=1e9)
    store = open_patch_store(patch_slide(path, tmp_path / "o.zarr", cfg))
    assert store.image_mpp == 0.65 and store.attrs["image_mpp_from"] == "config"
    assert store.attrs["wholecell_channels"] == ["CD3"]
    assert not store.metadata["is_informative"].any()  # thresholds come from the config
    np.testing.assert_array_equal(store.patches[0][..., 1], image[3, :64, :64])


def test_dask_array_input_is_patched(tmp_path: Path, image: np.ndarray) -> None:
    lazy = da.from_array(image, chunks=(1, 50, 50))
    out = write_patch_store(lazy, tmp_path / "d.zarr", _cfg(split_mode="quarters"),
                            channel_names=NAMES)
    assert open_patch_store(out).n_patches == 4


def test_existing_output_refused_unless_overwrite(tmp_path: Path, image: np.ndarray) -> None:
    out = write_patch_store(image, tmp_path / "o.zarr", _cfg(split_mode="full_image"),
                            channel_names=NAMES)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_patch_store(image, out, _cfg(split_mode="full_image"), channel_names=NAMES)
    write_patch_store(image, out, _cfg(split_mode="halves"), channel_names=NAMES, overwrite=True)
    assert open_patch_store(out).n_patches == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_failed_write_leaves_nothing(tmp_path: Path, image: np.ndarray,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = patches_mod.patch_statistics
    calls = {"n": 0}

    def failing(tile: np.ndarray) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected failure")
        return real(tile)

    monkeypatch.setattr(patches_mod, "patch_statistics", failing)
    with pytest.raises(RuntimeError, match="injected"):
        write_patch_store(image, tmp_path / "o.zarr", _cfg(patch_size=(64, 64)),
                          channel_names=NAMES)
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []  # neither o.zarr nor o.zarr.tmp-<pid>


def test_nan_pixels_refused(tmp_path: Path, image: np.ndarray) -> None:
    img = image.astype(np.float32)
    img[1, 100, 120] = np.nan
    with pytest.raises(InputError, match="NaN or infinite pixels .*row 100, column 120"):
        write_patch_store(img, tmp_path / "o.zarr", _cfg(patch_size=(64, 64)),
                          channel_names=NAMES)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_tile_data_refused_at_read(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xff" * 40  # garbage inside the file: only reading notices
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match="truncated or unreadable"):
        write_patch_store(path, tmp_path / "o.zarr", _cfg(), channel_names=NAMES)
    assert not (tmp_path / "o.zarr").exists()


def test_unknown_channel_refused_before_writing(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(SlideError, match="did you mean 'PanCK'"):
        write_patch_store(image, tmp_path / "o.zarr", _cfg(wholecell=["PanCk"]),
                          channel_names=NAMES)
    assert list(tmp_path.iterdir()) == []


def test_patch_store_is_not_a_slide(tmp_path: Path, image: np.ndarray) -> None:
    out = write_patch_store(image, tmp_path / "o.zarr", _cfg(split_mode="halves"),
                            channel_names=NAMES)
    with pytest.raises(SlideError, match="not a slide"):
        write_patch_store(out, tmp_path / "again.zarr", _cfg())


# ------------------------------------------------------------------------------- open errors


@pytest.fixture
def store_path(tmp_path: Path, image: np.ndarray) -> Path:
    return write_patch_store(image, tmp_path / "s.zarr", _cfg(split_mode="quarters"),
                             channel_names=NAMES)


def _replace_patches(path: Path, data: np.ndarray) -> None:
    root = zarr.open_group(str(path), mode="a")
    del root["patches"]
    root.create_dataset("patches", data=data)


def test_open_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `codexdask patch"):
        open_patch_store(tmp_path / "none.zarr")


def test_open_not_codexdask(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_dataset("patches", shape=(1, 2, 2, 2))
    with pytest.raises(StoreError, match="not a codexdask patch store"):
        open_patch_store(tmp_path / "g.zarr")


def test_open_result_store_kind(store_path: Path) -> None:
    root = zarr.open_group(str(store_path), mode="a")
    root.attrs["codexdask"] = {**root.attrs["codexdask"], "kind": "result-store"}
    with pytest.raises(StoreError, match="is a codexdask result-store"):
        open_patch_store(store_path)


def test_open_wrong_ndim(store_path: Path) -> None:
    _replace_patches(store_path, np.zeros((4, 23, 36), dtype=np.uint16))
    with pytest.raises(StoreError, match=r"expected \(N, H, W, 2\)"):
        open_patch_store(store_path)


def test_open_wrong_channel_count(store_path: Path) -> None:
    _replace_patches(store_path, np.zeros((4, 23, 36, 3), dtype=np.uint16))
    with pytest.raises(StoreError, match=r"shape \(4, 23, 36, 3\)"):
        open_patch_store(store_path)


def test_open_non_numeric_dtype(store_path: Path) -> None:
    _replace_patches(store_path, np.zeros((4, 23, 36, 2), dtype=bool))
    with pytest.raises(StoreError, match="dtype bool"):
        open_patch_store(store_path)


def test_open_metadata_missing_columns(store_path: Path) -> None:
    meta = pd.read_csv(store_path / METADATA_FILE).drop(columns=["x_start", "is_informative"])
    meta.to_csv(store_path / METADATA_FILE, index=False)
    with pytest.raises(StoreError, match="lacks the columns x_start, is_informative"):
        open_patch_store(store_path)


def test_open_metadata_row_count(store_path: Path) -> None:
    meta = pd.read_csv(store_path / METADATA_FILE).iloc[:3]
    meta.to_csv(store_path / METADATA_FILE, index=False)
    with pytest.raises(StoreError, match="3 rows but the store holds 4 patches"):
        open_patch_store(store_path)


def test_open_metadata_file_missing(store_path: Path) -> None:
    (store_path / METADATA_FILE).unlink()
    with pytest.raises(StoreError, match="no patches_metadata.csv"):
        open_patch_store(store_path)


def test_store_attrs_are_plain_json(store_path: Path) -> None:
    attrs = json.loads((store_path / ".zattrs").read_text())["codexdask"]
    assert attrs["split_mode"] == "quarters" and attrs["slide_shape"] == [150, 170]
    assert attrs["patch_size"] == [75, 85] and attrs["n_patches"] == 4


# ------------------------------------------------------------------------------- memory


def test_peak_memory_bounded_by_patch_rows(tmp_path: Path) -> None:
    """A ~200 MB slide is patched with a traced peak far below the slide's size."""
    shape = (4, 5000, 5000)
    path = tmp_path / "big.npy"
    slide = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    ramp = (np.arange(shape[2], dtype=np.uint16) % 251)[None, :]
    for y0 in range(0, shape[1], 500):
        rows = (np.arange(y0, y0 + 500, dtype=np.uint16) % 7)[:, None]
        for c in range(shape[0]):
            slide[c, y0:y0 + 500] = ramp + rows + c
    slide.flush()
    del slide
    slide_bytes = int(np.prod(shape)) * 2
    cfg = _cfg(patch_size=(256, 256), overlap=0.1)
    row_bytes = 256 * 5132 * 2 * 2  # one row of patches of the padded two-channel image
    # warm up first: the first dask compute imports modules, which tracemalloc would count
    write_patch_store(np.ones((4, 8, 8), np.uint16), tmp_path / "warm.zarr", cfg,
                      channel_names=NAMES)
    tracemalloc.start()
    try:
        out = write_patch_store(path, tmp_path / "big.zarr", cfg, channel_names=NAMES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store = open_patch_store(out)
    assert store.n_patches == 22 * 22
    assert peak < 4 * row_bytes and peak < slide_bytes / 10, (peak, row_bytes, slide_bytes)
    last = store.metadata.iloc[-1]
    y, x = int(last["y_start"]), int(last["x_start"])
    src = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(store.patches[-1][: 5000 - y, : 5000 - x, 0], src[0, y:, x:])
