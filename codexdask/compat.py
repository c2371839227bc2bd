"""The seed's API: code written against the original pipeline's segmentation phase runs as is.

``CodexPatches`` is opened from a patch store; ``run_cell_segmentation(codex_patches, config)``
runs the Dask engine and fills ``seg_res_batch``, ``repaired_seg_res_batch`` and the
``matched_fraction`` column, then saves the pickles and the metadata as the original pipeline
does. ``config`` is the original pipeline's nested configuration (``data``, ``channels``,
``patching``, ``patch_qc``, ``segmentation``); keys outside the segmentation phase are ignored, and
``channels.nuclear_channel`` is accepted as a synonym of ``nucleus_channel``. The differences from
the original pipeline are listed in ``docs/semantics.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
import pandas as pd

from codexdask.config import PatchConfig, SegmentConfig, TieBreakName
from codexdask.engine.runner import RunResult, run
from codexdask.engine.tasks import segmentation_results, separate_batch
from codexdask.errors import StateError
from codexdask.layout import (
    DEFAULT_IMAGE_MPP,
    MATCHED_PICKLE,
    METADATA_FILE,
    ORIGINAL_PICKLE,
    RESULT_STORE,
    SEED_PATCH_STORE,
    pickle_suffix,
)
from codexdask.outputs import (
    iter_seg_res,
    open_result_store,
    write_metadata_csv,
    write_pickle_stream,
)
from codexdask.repair.boundaries import get_boundary
from codexdask.repair.masks import repair_masks_batch as _repair_masks_batch
from codexdask.segmenters import get_segmenter
from codexdask.store.patch_store import open_patch_store, patch_slide
from codexdask.store.selection import informative_indices, split_batches

__all__ = [
    "CodexPatches",
    "get_boundary",
    "patch_config",
    "repair_masks_batch",
    "run_cell_segmentation",
    "segment",
    "config_from_seed",
    "separate_batch",
]


class CodexPatches:
    """Patches of one slide and the segmentation results, as the seed's pipeline sees them.

    Parameters
    ----------
    store : str or Path
        Patch store written by ``codexdask patch``.
    out_dir : str or Path, optional
        Where ``save_seg_res`` and ``save_metadata`` write (default: beside the store).
    config : mapping, optional
        The original pipeline's configuration; ``save_seg_res`` reads its pickle compression
        from it.
    """

    def __init__(self, store: str | Path, out_dir: str | Path | None = None,
                 config: Mapping[str, Any] | None = None):
        self.store = open_patch_store(store)
        self.out_dir = Path(out_dir) if out_dir is not None else self.store.path.parent
        self.config: Mapping[str, Any] = config or {}
        self.patches_metadata: pd.DataFrame = self.store.metadata.copy()
        self.valid_patches: da.Array | None = None
        self.seg_res_batch: list[dict[str, Any]] | None = None
        self.repaired_seg_res_batch: list[dict[str, Any]] | None = None

    @classmethod
    def from_slide(cls, slide: str | Path, config: Mapping[str, Any],
                   out_dir: str | Path) -> CodexPatches:
        """Cut ``slide`` into ``out_dir/patches.zarr`` as the original configuration says.

        ``channels.nucleus_channel`` (or its synonym ``nuclear_channel``),
        ``channels.wholecell_channel``, ``patching.*``, ``patch_qc.*``, ``data.image_mpp`` and
        ``data.antibodies_file`` are honoured.
        """
        store = patch_slide(slide, Path(out_dir) / SEED_PATCH_STORE, patch_config(config),
                            overwrite=True)
        return cls(store, out_dir, config)

    def get_patches(self) -> da.Array:
        """All patches, lazily: ``(N, H, W, 2)`` (nucleus, whole-cell)."""
        return da.from_zarr(self.store.patches)

    def get_patches_metadata(self) -> pd.DataFrame:
        return self.patches_metadata

    def set_metadata(self, metadata: pd.DataFrame) -> None:
        self.patches_metadata = metadata

    def set_seg_res(self, repaired_seg_res: list[dict[str, Any]],
                    seg_res: list[dict[str, Any]]) -> None:
        self.repaired_seg_res_batch = repaired_seg_res
        self.seg_res_batch = seg_res

    def save_seg_res(self) -> list[Path]:
        """Write ``matched_seg_res_batch.pickle`` and ``original_seg_res_batch.pickle``."""
        if self.seg_res_batch is None or self.repaired_seg_res_batch is None:
            raise StateError("no segmentation results yet; call run_cell_segmentation first")
        seg = dict(self.config.get("segmentation") or {})
        compression = str(seg.get("segmentation_pickle_compression") or "none")
        level = seg.get("segmentation_pickle_compression_level")
        level = int(level) if level not in (None, "") else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, entries in ((MATCHED_PICKLE, self.repaired_seg_res_batch),
                              (ORIGINAL_PICKLE, self.seg_res_batch)):
            path = self.out_dir / f"{name}{pickle_suffix(compression)}"
            write_pickle_stream(path, entries, compression=compression, level=level)
            paths.append(path)
        return paths

    def save_metadata(self) -> Path:
        """Write ``patches_metadata.csv`` (atomically) into ``out_dir``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METADATA_FILE
        write_metadata_csv(self.patches_metadata, None, path)
        return path


def patch_config(config: Mapping[str, Any]) -> PatchConfig:
    """Translate the original pipeline's nested configuration into a :class:`PatchConfig`."""
    data = dict(config.get("data") or {})
    channels = dict(config.get("channels") or {})
    patching = dict(config.get("patching") or {})
    qc = dict(config.get("patch_qc") or {})
    nucleus = channels.get("nucleus_channel", channels.get("nuclear_channel", "DAPI"))
    wholecell = channels.get("wholecell_channel", ["CD4"])
    height, width = patching.get("patch_height"), patching.get("patch_width")
    overlap = patching.get("overlap", patching.get("patch_overlap"))
    return PatchConfig(
        nucleus=str(nucleus),
        wholecell=[wholecell] if isinstance(wholecell, str) else list(wholecell),
        antibodies=data.get("antibodies_file"),
        split_mode=str(patching.get("split_mode", "patches")),
        split_direction=str(patching.get("split_direction", "vertical")),
        patch_size=(int(height or 1440), int(width or 1920)),
        overlap=0.1 if overlap is None else float(overlap),
        image_mpp=data.get("image_mpp"),
        non_zero_perc_threshold=float(qc.get("non_zero_perc_threshold", 0.05)),
        mean_intensity_threshold=float(qc.get("mean_intensity_threshold", 1.0)),
    )


def config_from_seed(config: Mapping[str, Any]) -> SegmentConfig:
    """Translate the original pipeline's nested configuration into a :class:`SegmentConfig`."""
    data = dict(config.get("data") or {})
    seg = dict(config.get("segmentation") or {})
    repair = dict(seg.get("repair") or {})
    return SegmentConfig(
        backend=str(seg.get("backend", "mesmer")),
        model_path=seg.get("model_path"),
        image_mpp=data.get("image_mpp"),
        batch_size=seg.get("batch_size", "auto"),
        tiles_per_call=seg.get("tiles_per_call", "auto"),
        precision=str(seg.get("precision", "fp32")),
        tie_break=cast(TieBreakName, str(repair.get("tie_break", "lowest-label"))),
        save_pickles=False,  # CodexPatches.save_seg_res writes them, as the seed does
        save_mosaics=bool(seg.get("save_segmentation_images", True)),
        scheduler=seg.get("scheduler"),
        n_workers=seg.get("n_workers"),
        overwrite=True,
    )


def run_cell_segmentation(codex_patches: CodexPatches, config: Mapping[str, Any],
                          args: Any = None, *, client: Any = None) -> RunResult | None:
    """Segment the informative patches, repair them, and save the results (the seed's entry point).

    Returns the engine's :class:`~codexdask.engine.runner.RunResult`, or ``None`` (with a
    warning) when no patch is informative, in which case nothing is saved, as in the original
    pipeline.
    """
    metadata = codex_patches.get_patches_metadata()
    informative = informative_indices(metadata)
    if len(informative) == 0:
        warnings.warn("no informative patches to segment", stacklevel=2)
        return None
    codex_patches.valid_patches = codex_patches.get_patches()[informative]

    result = run(codex_patches.store.path, codex_patches.out_dir, config_from_seed(config),
                 client=client)
    group = open_result_store(codex_patches.out_dir / RESULT_STORE)
    sizes = codex_patches.store.true_sizes(informative)
    repaired = list(iter_seg_res(group, informative, "matched", sizes))
    original = list(iter_seg_res(group, informative, "original", sizes))
    codex_patches.set_seg_res(repaired, original)
    codex_patches.set_metadata(result.metadata)  # + matched_fraction (NaN where skipped), counts
    if (config.get("segmentation") or {}).get("save_segmentation_pickle", True):
        codex_patches.save_seg_res()
    codex_patches.save_metadata()
    return result


def segment(valid_patches: Any, config: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
    """Segment ``valid_patches`` ``(B, H, W, 2)`` in this process (the seed's ``segment``).

    Returns one dict per patch with ``cell``, ``nucleus``, ``cell_boundary`` and
    ``nucleus_boundary``, each ``(H, W)`` uint32.
    """
    settings = config_from_seed(config)
    segmenter = get_segmenter(settings.backend, **settings.segmenter_options())
    image_mpp = float(settings.image_mpp or DEFAULT_IMAGE_MPP)
    batch = settings.batch_size if isinstance(settings.batch_size, int) else 4
    results: list[dict[str, np.ndarray]] = []
    for rows in split_batches(np.arange(len(valid_patches)), batch):
        patches = np.asarray(valid_patches[rows[0] : rows[-1] + 1])
        results += segmentation_results(segmenter.predict(patches, image_mpp))
    return results


#: The seed's name for :func:`separate_batch`: split Mesmer's ``(B, H, W, 2)`` output into cell
#: masks (channel 0) and nucleus masks (channel 1). Kept importable for code written against it.
_separate_batch = separate_batch


def repair_masks_batch(seg_res_batch: list[Mapping[str, Any]], use_gpu: bool = False,
                       *args: Any, tie_break: TieBreakName = "lowest-label",
                       **kwargs: Any) -> list[dict[str, Any]]:
    """Repair a list of ``{"cell", "nucleus", ...}`` dicts (the seed's signature).

    The original pipeline's GPU options (``use_gpu``, ``gpu_batch_size``, ...) are accepted and
    ignored: codexdask's CPU repair is exact and fast, and its output format does not depend on
    them.
    """
    return _repair_masks_batch(list(seg_res_batch), tie_break=tie_break)
