"""Slides of every format open lazily with the right channels, names and microns per pixel."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import pytest
import tifffile
import zarr

from codexdask.errors import InputError, SlideError
from codexdask.store.slide import Slide, open_slide, read_antibodies, read_window

NAMES = ["DAPI", "CD45", "PanCK", "CD3"]
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "real_data"


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(4, 45, 70), dtype=np.uint16)


def _ome(path: Path, image: np.ndarray) -> Path:
    metadata = {"axes": "CYX", "Channel": {"Name": NAMES}, "PhysicalSizeX": 0.377,
                "PhysicalSizeXUnit": "µm"}
    tifffile.imwrite(path, image, ome=True, metadata=metadata)
    return path


def _qptiff(path: Path, image: np.ndarray) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for i, name in enumerate(NAMES):
            xml = (
                '<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>'
                "<DescriptionVersion>2</DescriptionVersion><ImageType>FullResolution</ImageType>"
                f"<Name>Opal {i}</Name><Biomarker>{name}</Biomarker>"
                "</PerkinElmer-QPI-ImageDescription>"
            )
            tw.write(image[i], description=xml, software="PerkinElmer-QPI", metadata=None,
                     tile=(16, 16), resolution=(20000, 1), resolutionunit="CENTIMETER")
    return path


def _ome_zarr(path: Path, image: np.ndarray, *, five_d: bool = False,
              version: str = "0.5") -> Path:
    """An OME-Zarr image: NGFF 0.5 (Zarr v3, metadata under ``ome``) or 0.4 (Zarr v2)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    levels = [image, image[:, ::2, ::2]]
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    if five_d:
        levels = [lv[None, :, None] for lv in levels]
        axes = [{"name": "t", "type": "time"}, axes[0], {"name": "z", "type": "space"}, *axes[1:]]
    datasets = []
    for i, level in enumerate(levels):
        root.create_array(str(i), data=level, chunks=(1,) * (level.ndim - 2) + (16, 16))
        scale = [1.0] * (level.ndim - 2) + [0.65 * 2**i] * 2
        datasets.append({"path": str(i),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    fields = {"multiscales": [{"axes": axes, "datasets": datasets}],
              "omero": {"channels": [{"label": n} for n in NAMES]}}
    if version == "0.4":
        fields["multiscales"][0]["version"] = "0.4"
        root.attrs.update(fields)
    else:
        root.attrs["ome"] = {"version": version, **fields}
    return path


def _tsv(path: Path, names: list[str]) -> Path:
    path.write_text("channel_id\tantibody_name\n" + "".join(
        f"{i}\t{n}\n" for i, n in enumerate(names)))
    return path


def test_ome_tiff_names_mpp_and_lazy(tmp_path: Path, image: np.ndarray) -> None:
    slide = open_slide(_ome(tmp_path / "s.ome.tiff", image))
    assert slide.format == "ome-tiff"
    assert slide.channel_names == NAMES
    assert slide.image_mpp == pytest.approx(0.377)
    assert isinstance(slide.data, da.Array) and slide.data.shape == (4, 45, 70)
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_ome_tiff_pyramid_tiled_compressed_reads_level0(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "pyr.ome.tif"
    meta = {"axes": "CYX", "Channel": {"Name": NAMES}, "PhysicalSizeX": 650,
            "PhysicalSizeXUnit": "nm"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(16, 16), compression="zlib", subifds=1, metadata=meta)
        tw.write(image[:, ::2, ::2], tile=(16, 16), compression="zlib", subfiletype=1)
    slide = open_slide(path)
    assert slide.data.shape == (4, 45, 70)
    assert slide.data.chunks[1][0] == 16  # one dask chunk per TIFF tile: read lazily
    assert slide.image_mpp == pytest.approx(0.65)
    np.testing.assert_array_equal(slide.data[:, 10:30, 20:50].compute(), image[:, 10:30, 20:50])


def test_tiff_reads_leave_no_file_open(tmp_path: Path, image: np.ndarray) -> None:
    # A handle left to the garbage collector raises ResourceWarning in whatever code runs then.
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric="minisblack")
    slide = open_slide(path)
    np.testing.assert_array_equal(slide.data.compute(scheduler="threads"), image)
    open_now = [f.path for f in psutil.Process().open_files()]
    assert str(path) not in open_now, "the TIFF file stayed open after the read"


def test_qptiff_biomarker_names(tmp_path: Path, image: np.ndarray) -> None:
    slide = open_slide(_qptiff(tmp_path / "s.qptiff", image))
    assert slide.format == "qptiff"
    assert slide.channel_names == NAMES
    assert slide.image_mpp == pytest.approx(0.5)  # 20000 px/cm
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_plain_tiff_with_antibodies_tsv(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    assert open_slide(path).channel_names == [f"channel_{i}" for i in range(4)]
    slide = open_slide(path, antibodies=_tsv(tmp_path / "ab.tsv", NAMES))
    assert slide.channel_names == NAMES and slide.image_mpp is None
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_antibodies_tsv_must_match_channel_count(tmp_path: Path, image: np.ndarray) -> None:
    path = _ome(tmp_path / "s.ome.tif", image)
    with pytest.raises(SlideError, match="3 rows but .* 4 channels"):
        open_slide(path, antibodies=_tsv(tmp_path / "ab.tsv", NAMES[:3]))


def test_antibodies_tsv_needs_antibody_name_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("name\nDAPI\n")
    with pytest.raises(SlideError, match="antibody_name"):
        read_antibodies(bad)


def test_yxc_and_yx_tiff_layouts(tmp_path: Path, image: np.ndarray) -> None:
    rgb = np.moveaxis(image[:3], 0, -1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    slide = open_slide(tmp_path / "rgb.tif")
    assert slide.data.shape == (3, 45, 70)
    np.testing.assert_array_equal(slide.data[2].compute(), rgb[..., 2])
    tifffile.imwrite(tmp_path / "gray.tif", image[0])
    assert open_slide(tmp_path / "gray.tif").data.shape == (1, 45, 70)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_names_mpp_first_dataset(tmp_path: Path, image: np.ndarray, version) -> None:
    slide = open_slide(_ome_zarr(tmp_path / "s.zarr", image, version=version))
    assert slide.format == "ome-zarr"
    assert slide.channel_names == NAMES
    assert slide.image_mpp == pytest.approx(0.65)
    assert slide.data.chunks[1][0] == 16
    np.testing.assert_array_equal(slide.data.compute(), image)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_tczyx_singletons_dropped(tmp_path: Path, image: np.ndarray, version) -> None:
    slide = open_slide(_ome_zarr(tmp_path / "s5.zarr", image, five_d=True, version=version))
    assert slide.data.shape == (4, 45, 70) and slide.channel_names == NAMES
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_plain_zarr_array_yxc(tmp_path: Path, image: np.ndarray) -> None:
    yxc = np.moveaxis(image, 0, -1)
    zarr.save_array(str(tmp_path / "p.zarr"), yxc)
    slide = open_slide(tmp_path / "p.zarr")
    assert slide.format == "zarr" and slide.data.shape == (4, 45, 70)
    np.testing.assert_array_equal(slide.data.compute(), image)
    np.testing.assert_array_equal(open_slide(tmp_path / "p.zarr", axes="YXC").data.compute(), image)


def test_npy_is_memory_mapped_and_lazy(tmp_path: Path, image: np.ndarray) -> None:
    np.save(tmp_path / "s.npy", image)
    slide = open_slide(tmp_path / "s.npy", channel_names=NAMES)
    assert slide.format == "npy" and isinstance(slide.data, da.Array)
    assert slide.channel_names == NAMES
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_npy_layouts_read_in_whole_row_blocks(tmp_path: Path, image: np.ndarray) -> None:
    np.save(tmp_path / "cyx.npy", image)
    slide = open_slide(tmp_path / "cyx.npy")
    assert slide.data.chunks[2] == (70,)  # blocks of whole rows: one plain read each
    np.testing.assert_array_equal(slide.data[:, 5:33, 7:60].compute(), image[:, 5:33, 7:60])
    np.save(tmp_path / "yxc.npy", np.moveaxis(image, 0, -1))
    np.testing.assert_array_equal(open_slide(tmp_path / "yxc.npy").data.compute(), image)
    np.save(tmp_path / "f.npy", np.asfortranarray(image))
    np.testing.assert_array_equal(open_slide(tmp_path / "f.npy").data.compute(), image)


def test_big_endian_tiff_becomes_native(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, image, byteorder=">", photometric="minisblack")
    slide = open_slide(path)
    assert slide.dtype.isnative
    np.testing.assert_array_equal(slide.data.compute(), image)


def _two_channel(slide: Slide, nucleus: str, markers: list[str]) -> np.ndarray:
    channels = [slide.channel_index(nucleus)] + [slide.channel_index(m) for m in markers]
    return read_window(slide, channels, 0, slide.height, 0, slide.width)


def test_two_channel_single_marker_as_is_and_max(image: np.ndarray) -> None:
    slide = open_slide(image, channel_names=NAMES)
    one = _two_channel(slide, "DAPI", ["CD3"])
    assert one.shape == (45, 70, 2) and one.dtype == np.uint16
    np.testing.assert_array_equal(one, np.stack([image[0], image[3]], axis=-1))
    many = _two_channel(slide, "DAPI", ["CD45", "PanCK", "CD3"])
    np.testing.assert_array_equal(many[..., 0], image[0])
    np.testing.assert_array_equal(many[..., 1], image[1:].max(axis=0))


def test_two_channel_max_starts_from_zero(image: np.ndarray) -> None:
    negative = -image.astype(np.float32)  # the original rule: zeros of the nucleus dtype first
    slide = open_slide(negative, channel_names=NAMES)
    both = _two_channel(slide, "DAPI", ["CD45", "PanCK"])
    assert both.dtype == np.float32 and (both[..., 1] == 0).all()
    single = _two_channel(slide, "DAPI", ["CD45"])
    np.testing.assert_array_equal(single[..., 1], negative[1])


def test_window_beyond_the_slide_is_zero_padding(image: np.ndarray) -> None:
    slide = open_slide(image, channel_names=NAMES)
    window = read_window(slide, [0, 1], 40, 50, 60, 80)
    assert window.shape == (10, 20, 2)
    np.testing.assert_array_equal(window[:5, :10, 0], image[0, 40:, 60:])
    assert not window[5:].any() and not window[:, 10:].any()


def test_unknown_channel_lists_names_and_closest(image: np.ndarray) -> None:
    slide = open_slide(image, channel_names=NAMES)
    with pytest.raises(SlideError, match="closest match: 'CD45'") as err:
        slide.channel_index("CD4")
    assert "DAPI, CD45, PanCK, CD3" in str(err.value)
    with pytest.raises(SlideError, match="case-sensitive"):
        slide.channel_index("dapi")


@pytest.mark.parametrize("kind", ["ome", "tiled", "qptiff", "npy"])
def test_truncated_file_is_refused(tmp_path: Path, image: np.ndarray, kind: str) -> None:
    if kind == "ome":
        path = _ome(tmp_path / "s.ome.tif", image)
    elif kind == "tiled":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric="minisblack")
    elif kind == "qptiff":
        path = _qptiff(tmp_path / "s.qptiff", image)
    else:
        path = tmp_path / "s.npy"
        np.save(path, image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated or unreadable"):
        open_slide(path)


def test_bad_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an integer or floating-point"):
        open_slide(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match="2 or 3 dimensions"):
        open_slide(np.zeros(10, dtype=np.uint8))
    with pytest.raises(InputError, match="more than one non-spatial axis"):
        open_slide(np.zeros((2, 3, 8, 8), dtype=np.uint8), axes="TCYX")
    np.save(tmp_path / "c.npy", np.zeros((2, 8, 8), dtype=np.complex64))
    with pytest.raises(SlideError, match="not an integer or floating-point"):
        open_slide(tmp_path / "c.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SlideError, match="Python objects"):
        open_slide(tmp_path / "o.npy")


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.ome.tiff")
    (tmp_path / "x.bin").write_bytes(b"hello world")
    with pytest.raises(SlideError, match="not a format"):
        open_slide(tmp_path / "x.bin")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SlideError, match="not a Zarr store"):
        open_slide(tmp_path / "folder")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{}")
    with pytest.raises(SlideError, match="broken.zarr"):
        open_slide(broken)


def test_real_imc_tiff_with_antibodies(tmp_path: Path) -> None:
    bundle = REAL_DATA / "imc_pancreas_cytomapper.npz"
    tiff = REAL_DATA / "imc_pancreas_cytomapper" / "E34_imc.tiff"
    if not (bundle.is_file() and tiff.is_file()):
        pytest.skip("shared/real_data is absent")
    ref = np.load(bundle)
    names = [str(n) for n in ref["channel_names"]]
    slide = open_slide(tiff, antibodies=_tsv(tmp_path / "ab.tsv", names))
    assert slide.data.shape == (5, 100, 100) and slide.dtype == np.float32
    np.testing.assert_array_equal(slide.data.compute(), ref["E34_all_channels"])
    pair = _two_channel(slide, "H3", ["CDH"])
    np.testing.assert_array_equal(pair, ref["E34_image"])
