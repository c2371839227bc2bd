"""errors.py's one rule: the same kind of mistake raises the same class, whatever module sees it."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask import errors
from codexdask.compat import CodexPatches
from codexdask.config import PatchConfig
from codexdask.errors import CodexDaskError, ConfigError, InputError, StateError
from codexdask.repair.masks import repair_masks
from codexdask.segmenters import get_segmenter
from codexdask.segmenters.mesmer import MesmerSegmenter
from codexdask.store.patch_store import write_patch_store
from codexdask.store.selection import split_batches


@pytest.mark.parametrize("mistake", [
    lambda: MesmerSegmenter(pad_mode="mirror"),
    lambda: MesmerSegmenter(tiles_per_call=0),
    lambda: get_segmenter("watershed", nucleus_diameter_um=0),
    lambda: split_batches(np.arange(4), 0),
    lambda: repair_masks(np.ones((3, 3), int), np.ones((3, 3), int), tie_break="random"),
], ids=["mesmer-option", "mesmer-tiles", "watershed-option", "batch-size", "tie-break"])
def test_a_bad_setting_is_a_config_error(mistake):
    with pytest.raises(ConfigError):
        mistake()


def test_bad_data_is_an_input_error():
    with pytest.raises(InputError):
        repair_masks(np.ones((3, 3), bool), np.ones((3, 3), int))


def test_a_step_asked_for_too_early_is_a_state_error(tmp_path):
    rng = np.random.default_rng(0)
    store = write_patch_store(rng.integers(1, 99, (2, 32, 32), dtype=np.uint16),
                              tmp_path / "s.zarr", PatchConfig(wholecell=["CD45"]),
                              channel_names=["DAPI", "CD45"])
    with pytest.raises(StateError, match="run_cell_segmentation first"):
        CodexPatches(store, tmp_path / "out").save_seg_res()


def test_every_error_is_a_codexdask_error_and_the_rule_is_written_down():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and
               issubclass(c, Exception) and c is not CodexDaskError]
    assert classes and all(issubclass(c, CodexDaskError) for c in classes)
    for cls in classes:
        assert f":class:`{cls.__name__}`" in errors.__doc__, cls.__name__
