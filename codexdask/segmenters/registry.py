"""The segmenter registry: names -> factories of :class:`~codexdask.segmenters.base.Segmenter`.

The built-in segmenters are named here as ``module:attribute`` strings and imported on first
use, so that the registry imports neither of them (nor PyTorch) until one is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from codexdask.errors import SegmenterError
from codexdask.segmenters.base import CallableSegmenter, Segmenter

__all__ = ["available_segmenters", "get_segmenter", "register_segmenter"]

#: Built-in segmenters, imported by :func:`get_segmenter` the first time they are asked for.
_BUILTIN = {
    "mesmer": "codexdask.segmenters.mesmer:MesmerSegmenter",
    "watershed": "codexdask.segmenters.watershed:WatershedSegmenter",
}
_REGISTRY: dict[str, Callable[..., Segmenter]] = {}


def register_segmenter(name: str, factory: Callable[..., Any]) -> None:
    """Register ``factory`` under ``name``.

    ``factory(**options)`` must return a :class:`Segmenter`. A plain function
    ``fn(batch, image_mpp) -> labels`` is accepted too and wrapped in :class:`CallableSegmenter`.
    """
    if isinstance(factory, type) and issubclass(factory, Segmenter):
        _REGISTRY[name] = factory
    else:
        function = cast(Callable[[np.ndarray, float], np.ndarray], factory)
        _REGISTRY[name] = lambda **options: CallableSegmenter(function, name=name)


def available_segmenters() -> list[str]:
    """Names accepted by :func:`get_segmenter`."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_segmenter(name: str, **options: Any) -> Segmenter:
    """Return the segmenter registered as ``name``, built with ``options``.

    Raises
    ------
    SegmenterError
        If no segmenter of that name is registered.
    """
    if name not in _REGISTRY and name in _BUILTIN:
        module, attribute = _BUILTIN[name].split(":")
        register_segmenter(name, getattr(importlib.import_module(module), attribute))
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available_segmenters(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SegmenterError(
            f"unknown segmenter backend {name!r}{hint}; choose one of "
            f"{', '.join(available_segmenters())} or register your own with "
            "codexdask.segmenters.register_segmenter"
        )
    return _REGISTRY[name](**options)
