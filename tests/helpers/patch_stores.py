"""Small patch stores the engine tests share."""

from __future__ import annotations

from pathlib import Path

from codexdask.config import PatchConfig
from codexdask.store.patch_store import write_patch_store
from codexdask.synthetic import synthetic_slide

PATCH = 96
EMPTY_PATCHES = (2, 5)


def make_store(path: Path, *, n_patches: int = 7, empty=EMPTY_PATCHES) -> Path:
    """A 1 x n_patches row of patches; the nucleus channel is blanked in the ``empty`` ones."""
    slide = synthetic_slide(PATCH, PATCH * n_patches, seed=3, empty_fraction=0.0)
    image = slide.image.copy()
    for k in empty:
        image[0, :, k * PATCH : (k + 1) * PATCH] = 0
    config = PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                         patch_size=(PATCH, PATCH), overlap=0.0)
    return write_patch_store(image, path, config, channel_names=slide.channel_names)
