"""Everything a segmentation run writes into ``--out DIR``, one module per kind of output.

Pure I/O: numpy arrays in and out, no Dask graph. Every function works one patch at a time, so
memory stays bounded by a few patches (or a few canvas chunks for the mosaics), never by the slide.

- :mod:`~codexdask.atomic` — files and folders appear complete or not at all;
- :mod:`~codexdask.outputs.result_store` — ``masks.zarr``, one entry per patch;
- :mod:`~codexdask.outputs.pickles` — the two streamed seg_res pickles;
- :mod:`~codexdask.outputs.mosaics` — whole-slide OME-Zarr and OME-TIFF label mosaics;
- :mod:`~codexdask.outputs.summary` — ``patches_metadata.csv`` and ``run_manifest.json``.

Names of the files, arrays and columns are in :mod:`codexdask.layout`.
"""

from codexdask.atomic import atomic_path
from codexdask.outputs.mosaics import pyramid_shapes, write_mosaics
from codexdask.outputs.pickles import (
    find_seg_res,
    iter_seg_res,
    load_seg_res,
    matched_entry,
    original_entry,
    write_pickle_stream,
    write_seg_res_pickles,
)
from codexdask.outputs.result_store import (
    check_output_dir,
    create_result_store,
    open_result_store,
    prepare_result_store,
    read_patch_masks,
    read_stats_table,
    require_done,
    write_patch_result,
)
from codexdask.outputs.summary import (
    load_manifest,
    package_versions,
    run_manifest,
    write_manifest,
    write_metadata_csv,
)

__all__ = [
    "atomic_path",
    "check_output_dir",
    "create_result_store",
    "find_seg_res",
    "iter_seg_res",
    "load_manifest",
    "load_seg_res",
    "matched_entry",
    "open_result_store",
    "original_entry",
    "package_versions",
    "prepare_result_store",
    "pyramid_shapes",
    "read_patch_masks",
    "read_stats_table",
    "require_done",
    "run_manifest",
    "write_manifest",
    "write_metadata_csv",
    "write_mosaics",
    "write_patch_result",
    "write_pickle_stream",
    "write_seg_res_pickles",
]
