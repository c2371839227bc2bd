"""Result stores for the output tests: random masks and statistics, one small store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr

from codexdask.layout import MASK_NAMES, RESULT_STAT_COLUMNS
from codexdask.outputs import create_result_store, write_patch_result


def masks_for(seed: int, shape=(8, 10)) -> dict[str, np.ndarray]:
    """Nine random-ish uint32 masks of ``shape`` (values differ per mask and seed)."""
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 5 + k, size=shape).astype(np.uint32)
            for k, name in enumerate(MASK_NAMES)}


def stats_for(n_cells: int, n_nuclei: int, n_matched: int, jaccard: float) -> np.ndarray:
    values = {
        "matched_fraction": (n_matched + 1) / (n_cells + n_nuclei - n_matched + 1),
        "n_cells": n_cells, "n_nuclei": n_nuclei, "n_matched": n_matched, "n_repaired": 1,
        "frac_cells_matched": n_matched / n_cells if n_cells else math.nan,
        "frac_nuclei_matched": n_matched / n_nuclei if n_nuclei else math.nan,
        "match_jaccard": jaccard, "infer_s": 0.5, "postprocess_s": 0.25, "repair_s": 0.125,
    }
    return np.array([values[c] for c in RESULT_STAT_COLUMNS], dtype=np.float64)


def make_store(tmp_path: Path) -> zarr.Group:
    """A 5-patch result store; patches 0, 2, 3 informative and done, 1 and 4 untouched."""
    group = create_result_store(tmp_path / "masks.zarr", 5, (8, 10),
                                patch_store=tmp_path / "slide.zarr")
    write_patch_result(group, 0, masks_for(0), stats_for(3, 2, 2, 2 / 3))
    write_patch_result(group, 2, masks_for(2), stats_for(0, 0, 0, math.nan))
    write_patch_result(group, 3, masks_for(3), stats_for(4, 4, 1, 1 / 7))
    return group
