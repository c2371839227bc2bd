"""codexdask: Dask-distributed cell and nucleus segmentation of multiplexed tissue slides.

The public API, importable from here (``from codexdask import run``):

- configuration: :class:`PatchConfig`, :class:`SegmentConfig`, :class:`QuantifyConfig`;
- slides and patch stores: :func:`open_slide`, :func:`write_patch_store`, :func:`patch_slide`,
  :func:`open_patch_store`, :class:`PatchStore`;
- segmentation: :func:`run` (the Dask engine) and its :class:`RunResult`; segmenters through
  :func:`get_segmenter`, :func:`register_segmenter`, :class:`Segmenter`;
- plain numpy kernels: :func:`repair_masks`, :func:`repair_masks_batch`, :func:`get_boundary`;
- results: :func:`open_result_store`, :func:`load_seg_res`, :func:`load_manifest`;
- per-cell tables: :func:`quantify` and its :class:`QuantResult`;
- errors: :class:`CodexDaskError` and its subclasses (:mod:`codexdask.errors`).

The seed's API (``CodexPatches``, ``run_cell_segmentation``...) lives in :mod:`codexdask.compat`.
``import codexdask`` stays cheap: a name is imported from its module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from codexdask._version import __version__
from codexdask.errors import (
    ClusterError,
    CodexDaskError,
    ConfigError,
    InputError,
    ModelLoadError,
    OutputExistsError,
    SegmenterError,
    SlideError,
    StateError,
    StoreError,
)

#: Public name -> the module that defines it.
_LAZY = {
    "PatchConfig": "codexdask.config",
    "SegmentConfig": "codexdask.config",
    "QuantifyConfig": "codexdask.config",
    "QuantResult": "codexdask.quantification.run",
    "quantify": "codexdask.quantification.run",
    "Slide": "codexdask.store.slide",
    "open_slide": "codexdask.store.slide",
    "PatchStore": "codexdask.store.patch_store",
    "open_patch_store": "codexdask.store.patch_store",
    "patch_slide": "codexdask.store.patch_store",
    "write_patch_store": "codexdask.store.patch_store",
    "RunResult": "codexdask.engine.runner",
    "run": "codexdask.engine.runner",
    "Segmenter": "codexdask.segmenters",
    "get_segmenter": "codexdask.segmenters",
    "register_segmenter": "codexdask.segmenters",
    "repair_masks": "codexdask.repair.masks",
    "repair_masks_batch": "codexdask.repair.masks",
    "get_boundary": "codexdask.repair.boundaries",
    "load_manifest": "codexdask.outputs",
    "load_seg_res": "codexdask.outputs",
    "open_result_store": "codexdask.outputs",
}

if TYPE_CHECKING:
    from codexdask.config import PatchConfig, QuantifyConfig, SegmentConfig
    from codexdask.engine.runner import RunResult, run
    from codexdask.outputs import load_manifest, load_seg_res, open_result_store
    from codexdask.quantification.run import QuantResult, quantify
    from codexdask.repair.boundaries import get_boundary
    from codexdask.repair.masks import repair_masks, repair_masks_batch
    from codexdask.segmenters import Segmenter, get_segmenter, register_segmenter
    from codexdask.store.patch_store import (
        PatchStore,
        open_patch_store,
        patch_slide,
        write_patch_store,
    )
    from codexdask.store.slide import Slide, open_slide

__all__ = [
    "ClusterError",
    "CodexDaskError",
    "ConfigError",
    "InputError",
    "ModelLoadError",
    "OutputExistsError",
    "PatchConfig",
    "PatchStore",
    "QuantResult",
    "QuantifyConfig",
    "RunResult",
    "SegmentConfig",
    "Segmenter",
    "SegmenterError",
    "Slide",
    "SlideError",
    "StateError",
    "StoreError",
    "__version__",
    "get_boundary",
    "get_segmenter",
    "load_manifest",
    "load_seg_res",
    "open_patch_store",
    "open_result_store",
    "open_slide",
    "patch_slide",
    "quantify",
    "register_segmenter",
    "repair_masks",
    "repair_masks_batch",
    "run",
    "write_patch_store",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'codexdask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
