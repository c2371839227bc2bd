"""codexdask: Dask-distributed cell and nucleus segmentation of multiplexed tissue slides.

The public API, importable from here (``from codexdask import run``):

- configuration: :class:`PatchConfig`, :class:`SegmentConfig`;
- slides and patch stores: :func:`open_slide`, :func:`write_patch_store`, :func:`patch_slide`,
  :func:`open_patch_store`, :class:`PatchStore`;
- segmentation: :func:`run` (the Dask engine) and its :class:`RunResult`; segmenters through
  :func:`get_segmenter`, :func:`register_segmenter`, :class:`Segmenter`;
- plain numpy kernels: :func:`repair_masks`, :func:`repair_masks_batch`, :func:`get_boundary`;
- results: :func:`open_result_store`, :func:`load_seg_res`, :func:`load_manifest`;
- errors: :class:`CodexDaskError` and its subclasses (:mod:`codexdask.errors`).

The seed's API (``CodexPatches``, ``run_cell_segmentation``...) lives in :mod:`codexdask.compat`.
``import codexdask`` stays cheap: a name is imported from its module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
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

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY = {
    "PatchConfig": "codexdask.config",
    "SegmentConfig": "codexdask.config",
    "Slide": "codexdask.slide",
    "open_slide": "codexdask.slide",
    "PatchStore": "codexdask.patches",
    "open_patch_store": "codexdask.patches",
    "patch_slide": "codexdask.patches",
    "write_patch_store": "codexdask.patches",
    "RunResult": "codexdask.engine",
    "run": "codexdask.engine",
    "Segmenter": "codexdask.segmenters",
    "get_segmenter": "codexdask.segmenters",
    "register_segmenter": "codexdask.segmenters",
    "repair_masks": "codexdask.repair",
    "repair_masks_batch": "codexdask.repair",
    "get_boundary": "codexdask.boundaries",
    "load_manifest": "codexdask.outputs",
    "load_seg_res": "codexdask.outputs",
    "open_result_store": "codexdask.outputs",
}

if TYPE_CHECKING:
    from .boundaries import get_boundary
    from .config import PatchConfig, SegmentConfig
    from .engine import RunResult, run
    from .outputs import load_manifest, load_seg_res, open_result_store
    from .patches import PatchStore, open_patch_store, patch_slide, write_patch_store
    from .repair import repair_masks, repair_masks_batch
    from .segmenters import Segmenter, get_segmenter, register_segmenter
    from .slide import Slide, open_slide

__all__ = [
    "ClusterError",
    "CodexDaskError",
    "ConfigError",
    "InputError",
    "ModelLoadError",
    "OutputExistsError",
    "PatchConfig",
    "PatchStore",
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
