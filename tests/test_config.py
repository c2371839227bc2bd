import pytest

from codexdask.config import (
    MODEL_PATH_ENV,
    PatchConfig,
    SegmentConfig,
    config_keys,
    load_yaml,
    make_config,
    model_path_or_environment,
)
from codexdask.errors import ConfigError


def test_defaults_are_valid():
    assert PatchConfig().split_mode == "patches"
    assert SegmentConfig().backend == "watershed"


def test_later_sources_override_and_none_does_not():
    config = make_config(
        SegmentConfig, {"backend": "mesmer", "batch_size": 3}, {"batch_size": None}
    )
    assert config.backend == "mesmer"
    assert config.batch_size == 3


def test_dashes_in_keys_are_accepted():
    assert make_config(SegmentConfig, {"tie-break": "aegle-cpu"}).tie_break == "aegle-cpu"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'image_mpp'"):
        make_config(SegmentConfig, {"image_mp": 0.5})


def test_renamed_key_names_the_new_one():
    with pytest.raises(ConfigError, match="'tile_size' was renamed 'block_size'.*--block-size"):
        make_config(SegmentConfig, {"tile_size": 512})
    # an unset command-line flag of the old name is not an error
    assert make_config(SegmentConfig, {"tile_size": None, "block_size": 512}).block_size == 512


def test_model_path_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv(MODEL_PATH_ENV, "/weights/from/env.safetensors")
    assert model_path_or_environment(None) == "/weights/from/env.safetensors"
    assert model_path_or_environment("given.safetensors") == "given.safetensors"
    options = SegmentConfig(backend="mesmer").segmenter_options()
    assert options["model_path"] == "/weights/from/env.safetensors"
    monkeypatch.delenv(MODEL_PATH_ENV)
    assert model_path_or_environment(None) is None


@pytest.mark.parametrize("value", [0, -0.5])
def test_image_mpp_must_be_positive(value):
    with pytest.raises(ConfigError, match="image_mpp must be > 0"):
        make_config(SegmentConfig, {"image_mpp": value})


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_overlap_outside_unit_interval(value):
    with pytest.raises(ConfigError, match=r"overlap must lie in \[0, 1\)"):
        make_config(PatchConfig, {"overlap": value})


def test_unknown_split_mode_suggests():
    with pytest.raises(ConfigError, match="did you mean 'halves'"):
        make_config(PatchConfig, {"split_mode": "halfs"})


def test_batch_size_auto_or_positive():
    assert make_config(SegmentConfig, {"batch_size": "7"}).batch_size == 7
    with pytest.raises(ConfigError, match="batch_size"):
        make_config(SegmentConfig, {"batch_size": 0})


def test_pickle_compression_aliases():
    assert make_config(SegmentConfig, {"pickle_compression": "ZST"}).pickle_compression == "zstd"
    with pytest.raises(ConfigError, match="pickle_compression"):
        make_config(SegmentConfig, {"pickle_compression": "rar"})


def test_wholecell_from_comma_string():
    assert PatchConfig(wholecell="CD45, PanCK").wholecell == ["CD45", "PanCK"]


def test_resume_and_overwrite_exclusive():
    with pytest.raises(ConfigError, match="not both"):
        SegmentConfig(resume=True, overwrite=True)


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backend: watershed\nbatch_size: 2\n")
    assert make_config(SegmentConfig, load_yaml(path)).batch_size == 2
    assert set(load_yaml(path)) <= set(config_keys(SegmentConfig))


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)


def test_patch_size_as_one_int_is_a_square():
    config = make_config(PatchConfig, {"nucleus": "DAPI", "wholecell": "CD45", "patch_size": 256})
    assert config.patch_size == (256, 256)
    with pytest.raises(ConfigError, match="patch_size must be two positive integers"):
        make_config(PatchConfig, {"nucleus": "DAPI", "wholecell": "CD45", "patch_size": 0})


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("0", 0), (5000, 5000)])
def test_max_window(value, expected):
    assert SegmentConfig(max_window=value).max_window == expected


@pytest.mark.parametrize("value", [-1, "big", None])
def test_bad_max_window(value):
    with pytest.raises(ConfigError, match="max_window must be 'auto' or pixels >= 0"):
        SegmentConfig(max_window=value)
