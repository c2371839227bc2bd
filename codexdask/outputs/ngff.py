"""OME-Zarr (NGFF) metadata of the mosaics: 0.5 in a Zarr v3 group, 0.4 in a v2 group.

NGFF 0.5 keeps a node's metadata under one ``ome`` attribute that carries the version (the
``multiscales``, ``omero`` and ``image-label`` entries drop their own); 0.4 writes the entries
as attributes of their own, each with its version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from codexdask.layout import MOSAIC_LABELS
from codexdask.store.formats import zarr_format_of

__all__ = ["NGFF_VERSIONS", "write_ngff_metadata"]

#: The OME-Zarr (NGFF) version written in each Zarr format.
NGFF_VERSIONS = {3: "0.5", 2: "0.4"}


def _multiscales(name: str, n_levels: int, mpp: float, versioned: dict[str, str]
                 ) -> list[dict]:
    """NGFF ``multiscales`` for (c, y, x) levels 0..n_levels-1, each 2x the previous;
    ``versioned`` is its version entry (0.4), or empty (0.5: the ``ome`` attribute's)."""
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, mpp * 2**level, mpp * 2**level]}
            ],
        }
        for level in range(n_levels)
    ]
    return [{
        **versioned,
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"method": "numpy striding [::2, ::2]"},
    }]


def write_ngff_metadata(
    root: zarr.Group,
    n_levels: int,
    attrs: Mapping[str, Any],
    dtype: Any,
    window: tuple[float, float],
    mpp: float,
) -> None:
    """Write the NGFF ``multiscales``, ``omero``, ``labels`` and ``image-label`` attributes:
    NGFF 0.5 (under an ``ome`` attribute) in a Zarr v3 group, NGFF 0.4 in a v2 group.

    ``root`` holds the image's ``n_levels`` levels and ``labels/<name>`` for each name of
    ``MOSAIC_LABELS``; ``attrs`` are the patch store's (channel names); ``window`` the display
    maxima.
    """
    version = NGFF_VERSIONS[zarr_format_of(root)]
    versioned = {"version": version} if version == "0.4" else {}  # 0.4: each entry its own

    def describe(node: zarr.Group, fields: dict[str, Any]) -> None:
        if version == "0.4":
            node.attrs.update(fields)
        else:
            node.attrs["ome"] = {"version": version, **fields}

    channels = [str(attrs.get("nucleus_channel", "nucleus")),
                "+".join(attrs.get("wholecell_channels", [])) or "whole-cell"]
    max_value = int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1
    omero = {
        "name": "slide",
        **versioned,
        "channels": [
            {"label": label, "color": color, "active": True, "coefficient": 1,
             "family": "linear", "inverted": False,
             "window": {"min": 0, "max": max_value, "start": 0, "end": end or max_value}}
            for label, color, end in zip(channels, ("0000FF", "00FF00"), window, strict=True)
        ],
        "rdefs": {"model": "color"},
    }
    describe(root, {"multiscales": _multiscales("slide", n_levels, mpp, versioned),
                    "omero": omero})
    describe(root["labels"], {"labels": list(MOSAIC_LABELS)})
    for label in MOSAIC_LABELS:
        describe(root["labels"][label], {
            "multiscales": _multiscales(label, n_levels, mpp, versioned),
            "image-label": {**versioned, "source": {"image": "../../"}},
        })
