"""The project's vocabulary: names of files, folders, arrays and columns, defined once.

Every module that reads or writes a patch store, a result store or a run's output directory takes
its names from here, so that a name is spelled in one place. The layout itself is described in
``docs/architecture.md``.

A patch store ``NAME.zarr`` (``patches`` mode)::

    patches                 (N, H, W, 2) array: nucleus, whole-cell (PATCHES_ARRAY)
    patches_metadata.csv    one row per patch: GEOMETRY_COLUMNS, QC_STAT_COLUMNS, FLAG_COLUMNS

or (``full_image``, ``halves``, ``quarters``: logical patches, segmented seamlessly)::

    image                   (H, W, 2) array of the whole slide, chunked (IMAGE_ARRAY)
    patches_metadata.csv    one row per logical patch

A run's output directory ``OUT/``::

    masks.zarr/             result store: MASK_NAMES arrays, "done", "stats" (RESULT_STAT_COLUMNS)
    patches_metadata.csv    the store's metadata plus RESULT_STAT_COLUMNS
    original_seg_res_batch.pickle[.gz|.bz2|.xz|.zst], matched_seg_res_batch.pickle[...]
    mosaics/slide.ome.zarr  and  mosaics/{exp_id}.{mask}.segmentations.ome.tiff
    overlays/patch_NNNN.png
    tiles/                  work folder of logical patches segmented tile by tile (TILES_DIR)
    run_manifest.json       written last: its presence marks a complete run
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = [
    "COMPRESSION_ALIASES",
    "COUNT_COLUMNS",
    "DEFAULT_IMAGE_MPP",
    "DONE_ARRAY",
    "FLAG_COLUMNS",
    "GEOMETRY_COLUMNS",
    "MANIFEST",
    "MASK_NAMES",
    "MATCHED_KEYS",
    "MATCHED_PICKLE",
    "METADATA_FILE",
    "MOSAICS_DIR",
    "MOSAIC_LABELS",
    "MOSAIC_ZARR",
    "ORIGINAL_KEYS",
    "ORIGINAL_PICKLE",
    "OVERLAYS_DIR",
    "IMAGE_ARRAY",
    "LAYOUTS",
    "PATCHES_ARRAY",
    "PATCH_STORE_KIND",
    "PICKLE_COMPRESSIONS",
    "PICKLE_SUFFIXES",
    "QC_STAT_COLUMNS",
    "RATIO_COLUMNS",
    "REPAIR_STAT_COLUMNS",
    "RESULT_STAT_COLUMNS",
    "RESULT_STORE",
    "RESULT_STORE_KIND",
    "RUN_OUTPUTS",
    "STATS_ARRAY",
    "TILES_DIR",
    "TIMING_COLUMNS",
    "mosaic_tiff_name",
    "overlay_name",
    "pickle_compression",
    "pickle_suffix",
]

#: Microns per pixel assumed when neither the slide nor the configuration gives one.
DEFAULT_IMAGE_MPP = 0.5

# -- the patch store ------------------------------------------------------------------------------

#: The ``(N, H, W, 2)`` array of a patch store (channel 0 nucleus, channel 1 whole-cell).
PATCHES_ARRAY = "patches"
#: The ``(H, W, 2)`` array of the whole slide in a store of logical patches.
IMAGE_ARRAY = "image"
#: A patch store holds its pixels as patches (one chunk each) or as the slide (chunked).
LAYOUTS = ("patches", "image")
#: One row per patch, in patch order; written into the patch store and into a run's output.
METADATA_FILE = "patches_metadata.csv"
#: ``attrs["codexdask"]["kind"]`` of a patch store and of a result store.
PATCH_STORE_KIND = "patch-store"
RESULT_STORE_KIND = "result-store"

#: Where each patch lies: its position in the store and its true (unpadded) box on the slide.
GEOMETRY_COLUMNS = ("patch_id", "x_start", "y_start", "height", "width")
#: The six quality-control statistics of a patch (``docs/semantics.md``, the QC rule).
QC_STAT_COLUMNS = (
    "nucleus_mean",
    "nucleus_std",
    "nucleus_non_zero_perc",
    "wholecell_mean",
    "wholecell_std",
    "wholecell_non_zero_perc",
)
#: The QC flags derived from the nucleus statistics.
FLAG_COLUMNS = ("is_empty", "is_noisy", "is_bad_patch", "is_informative")

# -- the result store and the run's output directory ---------------------------------------------

#: Result store directory inside ``OUT/``.
RESULT_STORE = "masks.zarr"
#: Completion flags ``(N,)`` bool and per-patch statistics ``(N, len(RESULT_STAT_COLUMNS))``.
DONE_ARRAY = "done"
STATS_ARRAY = "stats"
#: Masks of the segmentation as the segmenter returned it, with their inner boundaries.
ORIGINAL_KEYS = ("cell", "nucleus", "cell_boundary", "nucleus_boundary")
#: Masks of the repair (cell <-> nucleus matching).
MATCHED_KEYS = (
    "cell_matched_mask",
    "nucleus_matched_mask",
    "cell_outside_nucleus_mask",
    "cell_matched_boundary",
    "nucleus_matched_boundary",
)
#: Every mask array of the result store, ``(N, H, W)`` uint32 each.
MASK_NAMES = ORIGINAL_KEYS + MATCHED_KEYS

#: Counts of the repair (labels > 0).
COUNT_COLUMNS = ("n_cells", "n_nuclei", "n_matched", "n_repaired")
#: Explicit ratios of the repair (``docs/semantics.md``: matched_fraction and the ratios).
RATIO_COLUMNS = ("frac_cells_matched", "frac_nuclei_matched", "match_jaccard")
#: What the repair of one patch reports, in the order of the result store's ``stats`` columns.
REPAIR_STAT_COLUMNS = ("matched_fraction", *COUNT_COLUMNS, *RATIO_COLUMNS)
#: Seconds spent per patch in each stage.
TIMING_COLUMNS = ("infer_s", "postprocess_s", "repair_s")
#: The result store's ``stats`` columns, appended to ``patches_metadata.csv`` after a run.
RESULT_STAT_COLUMNS = REPAIR_STAT_COLUMNS + TIMING_COLUMNS

#: The two segmentation pickles (plus a compression suffix, see :data:`PICKLE_SUFFIXES`).
ORIGINAL_PICKLE = "original_seg_res_batch.pickle"
MATCHED_PICKLE = "matched_seg_res_batch.pickle"
#: Whole-slide mosaics: a folder holding one OME-Zarr image and one OME-TIFF per label mosaic.
MOSAICS_DIR = "mosaics"
MOSAIC_ZARR = "slide.ome.zarr"
#: Label images of the OME-Zarr mosaic (NGFF name -> mask name in the result store).
MOSAIC_LABELS = {
    "cells": "cell",
    "nuclei": "nucleus",
    "cells_matched": "cell_matched_mask",
    "nuclei_matched": "nucleus_matched_mask",
}
OVERLAYS_DIR = "overlays"
#: Written last: a directory without it holds no complete run.
MANIFEST = "run_manifest.json"

# -- pickle compression --------------------------------------------------------------------------

PICKLE_COMPRESSIONS = ("none", "gzip", "bz2", "xz", "zstd")
PICKLE_SUFFIXES = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}
#: Accepted spellings (case-insensitive) of each compression.
COMPRESSION_ALIASES = {
    "none": "none", "": "none", "gzip": "gzip", "gz": "gzip", "bz2": "bz2", "bzip2": "bz2",
    "xz": "xz", "lzma": "xz", "zstd": "zstd", "zst": "zstd", "zstandard": "zstd",
}

#: Work folder of a run of logical patches: each tile's objects until the patch is stitched
#: (removed when the run completes; ``--resume`` keeps the tiles done).
TILES_DIR = "tiles"

#: Every file and folder a run writes into its output directory (``--overwrite`` removes these).
RUN_OUTPUTS = (
    RESULT_STORE, MANIFEST, METADATA_FILE, MOSAICS_DIR, OVERLAYS_DIR, TILES_DIR,
    *(name + suffix for name in (MATCHED_PICKLE, ORIGINAL_PICKLE)
      for suffix in PICKLE_SUFFIXES.values()),
)


def pickle_compression(name: str | None) -> str:
    """The canonical name of a pickle compression given by name or alias.

    Parameters
    ----------
    name : str or None
        ``none``, ``gzip``, ``bz2``, ``xz``, ``zstd`` or an alias (``gz``, ``bzip2``, ``lzma``,
        ``zst``, ``zstandard``), any case; ``None`` and ``""`` mean ``"none"``.

    Returns
    -------
    str
        One of :data:`PICKLE_COMPRESSIONS`.

    Raises
    ------
    ConfigError
        For any other name.

    Examples
    --------
    >>> pickle_compression("ZST")
    'zstd'
    """
    canonical = COMPRESSION_ALIASES.get(str(name or "none").strip().lower())
    if canonical is None:
        raise ConfigError(
            f"pickle_compression must be one of {', '.join(PICKLE_COMPRESSIONS)} (or an alias: "
            f"gz, bzip2, lzma, zst); got {name!r}"
        )
    return canonical


def pickle_suffix(compression: str | None) -> str:
    """File suffix of a pickle compression: ``""``, ``.gz``, ``.bz2``, ``.xz`` or ``.zst``.

    Examples
    --------
    >>> MATCHED_PICKLE + pickle_suffix("gzip")
    'matched_seg_res_batch.pickle.gz'
    """
    return PICKLE_SUFFIXES[pickle_compression(compression)]


def mosaic_tiff_name(exp_id: str, mask: str) -> str:
    """File name of the pyramidal OME-TIFF of one label mosaic, ``{exp_id}.{mask}...``."""
    return f"{exp_id}.{mask}.segmentations.ome.tiff"


def overlay_name(patch_id: int) -> str:
    """File name of a patch's overlay picture inside :data:`OVERLAYS_DIR`.

    Examples
    --------
    >>> overlay_name(7)
    'patch_0007.png'
    """
    return f"patch_{int(patch_id):04d}.png"
