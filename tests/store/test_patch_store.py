"""The patch store: round trip, atomic writes, stale temporaries, errors and memory bounds."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from codexdask.config import PatchConfig
from codexdask.errors import InputError, OutputExistsError, SlideError, StoreError
from codexdask.layout import FLAG_COLUMNS, METADATA_FILE, QC_STAT_COLUMNS
from codexdask.store import selection
from codexdask.store.patch_store import open_patch_store, patch_slide, write_patch_store
from codexdask.store.selection import patch_statistics

NAMES = ["DAPI", "CD45", "PanCK", "CD3"]
PATCHES_COLUMNS = ["patch_id", "x_start", "y_start", "height", "width", *QC_STAT_COLUMNS,
                   *FLAG_COLUMNS]
OTHER_COLUMNS = ["patch_id", "patch_index", "x_start", "y_start", "patch_width", "patch_height",
                 "height", "width", *QC_STAT_COLUMNS, *FLAG_COLUMNS]


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
    assert str(store.patches.compressors[0].cname).endswith("zstd")
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
    assert store.layout == "image" and store.attrs["layout"] == "image"
    np.testing.assert_array_equal(store.image[:], ext)  # the slide, whole
    for i, row in meta.iterrows():
        y, x, h, w = (int(row[k]) for k in ("y_start", "x_start", "height", "width"))
        assert (row["patch_height"], row["patch_width"]) == (h, w)
        crop = ext[y:y + h, x:x + w]
        np.testing.assert_array_equal(store.read_patch(i), crop)
        padded = store.as_dask()[i].compute()
        np.testing.assert_array_equal(padded[:h, :w], crop)
        assert not padded[h:].any() and not padded[:, w:].any()  # zero-padded bottom/right
        assert row["nucleus_mean"] == pytest.approx(crop[..., 0].mean())  # on the true patch


@pytest.mark.parametrize("mode", ["full_image", "quarters"])
def test_image_layout_is_written_window_by_window(tmp_path: Path, mode: str) -> None:
    from codexdask.store.selection import patch_statistics
    from codexdask.synthetic import synthetic_slide

    slide = synthetic_slide(300, 517, seed=2)
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels, split_mode=mode,
                         chunk_size=64)
    store = open_patch_store(write_patch_store(
        slide.image, tmp_path / "w.zarr", config, channel_names=slide.channel_names,
        window_bytes=64 * 200 * 6))  # windows of 64 rows x 192 columns: 5 x 3 of them
    two = slide.two_channel()
    assert store.image.chunks == (64, 64, 2)
    np.testing.assert_array_equal(store.image[:], two)
    for i in range(store.n_patches):
        expected = patch_statistics(store.read_patch(i))
        row = store.metadata.iloc[i]
        for key, value in expected.items():  # (the CSV round trip may lose the last bit)
            assert row[key] == pytest.approx(value, rel=1e-12), key


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
    real = selection.patch_statistics
    calls = {"n": 0}

    def failing(tile: np.ndarray) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected failure")
        return real(tile)

    monkeypatch.setattr(selection, "patch_statistics", failing)
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


@pytest.fixture
def patches_path(tmp_path: Path, image: np.ndarray) -> Path:
    return write_patch_store(image, tmp_path / "p.zarr", _cfg(patch_size=(23, 36)),
                             channel_names=NAMES)


def _replace_patches(path: Path, data: np.ndarray, name: str = "patches") -> None:
    root = zarr.open_group(str(path), mode="a")
    del root[name]
    root.create_array(name, data=data)


def test_open_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `codexdask patch"):
        open_patch_store(tmp_path / "none.zarr")


def test_open_not_codexdask(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("patches", shape=(1, 2, 2, 2), dtype=np.float64)
    with pytest.raises(StoreError, match="not a codexdask patch store"):
        open_patch_store(tmp_path / "g.zarr")


def test_open_result_store_kind(store_path: Path) -> None:
    root = zarr.open_group(str(store_path), mode="a")
    root.attrs["codexdask"] = {**root.attrs["codexdask"], "kind": "result-store"}
    with pytest.raises(StoreError, match="is a codexdask result-store"):
        open_patch_store(store_path)


def test_open_wrong_ndim(patches_path: Path, store_path: Path) -> None:
    n = open_patch_store(patches_path).n_patches
    _replace_patches(patches_path, np.zeros((n, 23, 36), dtype=np.uint16))
    with pytest.raises(StoreError, match=r"expected \(N, H, W, 2\)"):
        open_patch_store(patches_path)
    _replace_patches(store_path, np.zeros((150, 170), dtype=np.uint16), "image")
    with pytest.raises(StoreError, match=r"expected \(H, W, 2\)"):
        open_patch_store(store_path)


def test_open_wrong_channel_count(patches_path: Path) -> None:
    n = open_patch_store(patches_path).n_patches
    _replace_patches(patches_path, np.zeros((n, 23, 36, 3), dtype=np.uint16))
    with pytest.raises(StoreError, match=rf"shape \({n}, 23, 36, 3\)"):
        open_patch_store(patches_path)


def test_open_non_numeric_dtype(patches_path: Path, store_path: Path) -> None:
    n = open_patch_store(patches_path).n_patches
    _replace_patches(patches_path, np.zeros((n, 23, 36, 2), dtype=bool))
    with pytest.raises(StoreError, match="dtype bool"):
        open_patch_store(patches_path)
    _replace_patches(store_path, np.zeros((150, 170, 2), dtype=bool), "image")
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
    attrs = json.loads((store_path / "zarr.json").read_text())["attributes"]["codexdask"]
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


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, image: np.ndarray,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A killed `codexdask patch` leaves its temporary; the next patch to that path removes it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [tmp_path / f"o.zarr.tmp-{dead.pid}", tmp_path / f".o.zarr.tmp-{dead.pid}"]
        running = tmp_path / f".o.zarr.tmp-{live.pid}"
        for folder in (*stale, running):
            folder.mkdir()
            (folder / ".zgroup").write_text("{}")
        with caplog.at_level(logging.WARNING):
            write_patch_store(image, tmp_path / "o.zarr", _cfg(patch_size=(64, 64)),
                              channel_names=NAMES)
        assert not any(path.exists() for path in stale)
        assert running.is_dir()  # a write in progress is never touched
        for path in stale:
            assert f"removed {path}, left by process {dead.pid}" in caplog.text
        assert open_patch_store(tmp_path / "o.zarr").n_patches == 9
    finally:
        live.kill()
        live.wait()
