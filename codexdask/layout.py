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
    blocks/                 work folder of logical patches segmented block by block (BLOCKS_DIR):
                            owned.zarr, stitched.zarr, tables/, ids/, tallies/, bands/
    run_manifest.json       written last: its presence marks a complete run

``codexdask quantify``'s output directory (``OUT/quant/`` by default)::

    cells.h5ad              AnnData: one row per cell (nuclei.h5ad too with ``--masks raw``)
    cell.csv, nucleus.csv, cytoplasm.csv, markers.csv   mcquant's tables
    work/                   per-chunk partial results until the tables are written (QUANT_WORK_DIR)
    quant_manifest.json     written last: its presence marks a complete quantification
"""

from __future__ import annotations

from codexdask.errors import ConfigError

__all__ = [
    "CELL",
    "CELL_BOUNDARY",
    "CELL_MATCHED_BOUNDARY",
    "CELL_MATCHED_MASK",
    "CELL_OUTSIDE_NUCLEUS_MASK",
    "NUCLEUS",
    "NUCLEUS_BOUNDARY",
    "NUCLEUS_MATCHED_BOUNDARY",
    "NUCLEUS_MATCHED_MASK",
    "COMPRESSION_ALIASES",
    "COUNT_COLUMNS",
    "DEFAULT_IMAGE_MPP",
    "DEMO_RUN_DIR",
    "DEMO_SLIDE",
    "DEMO_STORE",
    "DEMO_SUMMARY",
    "DONE_ARRAY",
    "FLAG_COLUMNS",
    "GEOMETRY_COLUMNS",
    "MANIFEST",
    "MASK_NAMES",
    "MATCHED_KEYS",
    "MATCHED_PICKLE",
    "MAX_LABEL",
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
    "SEED_PATCH_STORE",
    "STATS_ARRAY",
    "BLOCKS_DIR",
    "OWNED_ZARR",
    "STITCHED_ZARR",
    "WORK_BANDS_DIR",
    "WORK_FILE_DIRS",
    "WORK_IDS_DIR",
    "WORK_REGROWN_DIR",
    "WORK_TABLES_DIR",
    "WORK_TALLIES_DIR",
    "band_file_name",
    "CELLS_H5AD",
    "COMPARTMENTS",
    "MARKERS_FILE",
    "NUCLEI_H5AD",
    "QUANT_DIR",
    "QUANT_MANIFEST",
    "QUANT_OUTPUTS",
    "QUANT_WORK_DIR",
    "compartment_csv_name",
    "quant_part_name",
    "block_file_name",
    "TIMING_COLUMNS",
    "mosaic_tiff_name",
    "overlay_name",
    "pickle_compression",
    "pickle_suffix",
    "regrown_file_name",
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
#: Masks of the segmentation as the segmenter returned it, with their inner boundaries (the
#: keys of an ``original_seg_res_batch`` entry and arrays of the result store).
CELL = "cell"
NUCLEUS = "nucleus"
CELL_BOUNDARY = "cell_boundary"
NUCLEUS_BOUNDARY = "nucleus_boundary"
ORIGINAL_KEYS = (CELL, NUCLEUS, CELL_BOUNDARY, NUCLEUS_BOUNDARY)
#: Masks of the repair (cell <-> nucleus matching), likewise.
CELL_MATCHED_MASK = "cell_matched_mask"
NUCLEUS_MATCHED_MASK = "nucleus_matched_mask"
CELL_OUTSIDE_NUCLEUS_MASK = "cell_outside_nucleus_mask"
CELL_MATCHED_BOUNDARY = "cell_matched_boundary"
NUCLEUS_MATCHED_BOUNDARY = "nucleus_matched_boundary"
MATCHED_KEYS = (CELL_MATCHED_MASK, NUCLEUS_MATCHED_MASK, CELL_OUTSIDE_NUCLEUS_MASK,
                CELL_MATCHED_BOUNDARY, NUCLEUS_MATCHED_BOUNDARY)
#: Every mask array of the result store, ``(N, H, W)`` uint32 each.
MASK_NAMES = ORIGINAL_KEYS + MATCHED_KEYS
#: The largest label a mask can hold (masks are uint32).
MAX_LABEL = 2**32 - 1

#: Counts of the repair (labels > 0).
COUNT_COLUMNS = ("n_cells", "n_nuclei", "n_matched", "n_repaired")
#: Explicit ratios of the repair (``docs/semantics.md``: matched_fraction and the ratios).
RATIO_COLUMNS = ("frac_cells_matched", "frac_nuclei_matched", "match_jaccard")
#: What the repair of one patch reports, in the order of the result store's ``stats`` columns.
REPAIR_STAT_COLUMNS = ("matched_fraction", *COUNT_COLUMNS, *RATIO_COLUMNS)
#: Seconds spent per patch in each stage: preparation + the pinned network task, finish, repair
#: (with stitching for logical patches); ``run_manifest.json``'s ``stages`` splits them further.
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
    "cells": CELL,
    "nuclei": NUCLEUS,
    "cells_matched": CELL_MATCHED_MASK,
    "nuclei_matched": NUCLEUS_MATCHED_MASK,
}
OVERLAYS_DIR = "overlays"
#: Written last: a directory without it holds no complete run.
MANIFEST = "run_manifest.json"

#: What ``codexdask demo --out DIR`` writes besides the run in ``DIR/segmentation``.
DEMO_SLIDE = "synthetic_slide.ome.tif"
DEMO_STORE = "synthetic_slide.zarr"
DEMO_RUN_DIR = "segmentation"
DEMO_SUMMARY = "demo_summary.json"
#: The patch store ``CodexPatches.from_slide`` writes into its ``out_dir``.
SEED_PATCH_STORE = "patches.zarr"

# -- pickle compression --------------------------------------------------------------------------

PICKLE_COMPRESSIONS = ("none", "gzip", "bz2", "xz", "zstd")
PICKLE_SUFFIXES = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}
#: Accepted spellings (case-insensitive) of each compression.
COMPRESSION_ALIASES = {
    "none": "none", "": "none", "gzip": "gzip", "gz": "gzip", "bz2": "bz2", "bzip2": "bz2",
    "xz": "xz", "lzma": "xz", "zstd": "zstd", "zst": "zstd", "zstandard": "zstd",
}

#: Work folder of a run of logical patches: each block's objects until the patch is stitched
#: (removed when the run completes; ``--resume`` keeps the blocks done).
BLOCKS_DIR = "blocks"
#: In the work folder: each block's owned objects (``cell``, ``nucleus``, ``done``) and each
#: core's stitched labels with the repair's margin (``cell``, ``nucleus``).
OWNED_ZARR = "owned.zarr"
STITCHED_ZARR = "stitched.zarr"
#: In the work folder: one file per block of first pixels and cut objects (``tables``), global
#: ids (``ids``) and repair tallies (``tallies``), one per cluster of regrown objects
#: (``regrowing``, their ids in ``ids``) and one per matching band (``bands``).
WORK_TABLES_DIR = "tables"
WORK_REGROWN_DIR = "regrowing"
WORK_IDS_DIR = "ids"
WORK_TALLIES_DIR = "tallies"
WORK_BANDS_DIR = "bands"
WORK_FILE_DIRS = (WORK_TABLES_DIR, WORK_REGROWN_DIR, WORK_IDS_DIR, WORK_TALLIES_DIR,
                  WORK_BANDS_DIR)

#: Every file and folder a run writes into its output directory (``--overwrite`` removes these).
RUN_OUTPUTS = (
    RESULT_STORE, MANIFEST, METADATA_FILE, MOSAICS_DIR, OVERLAYS_DIR, BLOCKS_DIR,
    *(name + suffix for name in (MATCHED_PICKLE, ORIGINAL_PICKLE)
      for suffix in PICKLE_SUFFIXES.values()),
)

# -- quantification ------------------------------------------------------------------------------

#: Default output directory of ``codexdask quantify`` inside the run's directory.
QUANT_DIR = "quant"
#: The AnnData tables: cells (with their nuclei and cytoplasm when matched), raw nuclei.
CELLS_H5AD = "cells.h5ad"
NUCLEI_H5AD = "nuclei.h5ad"
#: The marker names, one row per channel (``marker_name``), as mcquant reads them.
MARKERS_FILE = "markers.csv"
#: Compartments measured: the cell, its nucleus, the cell minus its nucleus.
COMPARTMENTS = ("cell", "nucleus", "cytoplasm")
#: Per-chunk partial results of an unfinished quantification (``--resume`` keeps them).
QUANT_WORK_DIR = "work"
#: Written last: a directory without it holds no complete quantification.
QUANT_MANIFEST = "quant_manifest.json"
#: Everything ``codexdask quantify`` writes (``--overwrite`` removes these).
QUANT_OUTPUTS = (CELLS_H5AD, NUCLEI_H5AD, MARKERS_FILE, QUANT_WORK_DIR, QUANT_MANIFEST,
                 *(f"{name}.csv" for name in COMPARTMENTS))


def compartment_csv_name(compartment: str) -> str:
    """mcquant-style table of one compartment.

    Examples
    --------
    >>> compartment_csv_name("cytoplasm")
    'cytoplasm.csv'
    """
    return f"{compartment}.csv"


def quant_part_name(phase: str, patch_index: int, chunk: int) -> str:
    """File of one chunk's partial result in :data:`QUANT_WORK_DIR`.

    Examples
    --------
    >>> quant_part_name("sums", 0, 12)
    'sums_00000_0000012.pkl'
    """
    return f"{phase}_{int(patch_index):05d}_{int(chunk):07d}.pkl"


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


def block_file_name(block_id: int) -> str:
    """File name of a block's table, ids or tally in the work folder.

    Examples
    --------
    >>> block_file_name(12)
    'block_0000012.npz'
    """
    return f"block_{int(block_id):07d}.npz"


def regrown_file_name(patch_index: int, cluster: int) -> str:
    """File name of a cluster's regrown objects (``regrown``) or their ids (``ids``).

    Examples
    --------
    >>> regrown_file_name(0, 3)
    'regrown_00000_0000003.npz'
    """
    return f"regrown_{int(patch_index):05d}_{int(cluster):07d}.npz"


def band_file_name(patch_index: int, band: int) -> str:
    """File name of a matching band's result in the work folder's :data:`WORK_BANDS_DIR`."""
    return f"patch_{int(patch_index):05d}_band_{int(band):05d}.npz"


def overlay_name(patch_id: int) -> str:
    """File name of a patch's overlay picture inside :data:`OVERLAYS_DIR`.

    Examples
    --------
    >>> overlay_name(7)
    'patch_0007.png'
    """
    return f"patch_{int(patch_id):04d}.png"
