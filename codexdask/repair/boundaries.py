"""Labelled inner boundaries of label images.

A pixel is on the boundary of its object when it is labelled (non-zero) and at least one of its four
neighbours *inside the image* carries another value (background or another object). The image edge
is not a boundary: a cell cut by the patch edge has no membrane along that edge. This is
``skimage.segmentation.find_boundaries(mask, mode="inner", connectivity=1)`` labelled with the
object's value, computed with a few vectorised comparisons of shifted arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from codexdask.errors import InputError
from codexdask.layout import MAX_LABEL

__all__ = ["get_boundary", "boundary_pixels"]



def boundary_pixels(mask: np.ndarray) -> npt.NDArray[np.bool_]:
    """Boolean inner-boundary map of the last two axes of a label array.

    Parameters
    ----------
    mask : ndarray, shape (..., H, W)
        Label image(s) of any integer or boolean dtype; 0 is background. Leading axes are batch
        axes: every (H, W) image is handled on its own.

    Returns
    -------
    ndarray of bool, shape (..., H, W)
        True where ``mask != 0`` and a 4-neighbour inside the same image has a different value.
    """
    if mask.ndim < 2:
        raise InputError(f"expected an array of shape (..., H, W); got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=bool)
    # Horizontal neighbours: a differing pair marks both of its pixels.
    diff = mask[..., :, 1:] != mask[..., :, :-1]
    out[..., :, 1:] |= diff
    out[..., :, :-1] |= diff
    del diff
    # Vertical neighbours.
    diff = mask[..., 1:, :] != mask[..., :-1, :]
    out[..., 1:, :] |= diff
    out[..., :-1, :] |= diff
    del diff
    out &= mask != 0
    return out


def get_boundary(mask: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """Labelled inner boundary (4-connectivity) of one label image or a stack of them.

    Parameters
    ----------
    mask : array_like, shape (H, W) or (N, H, W)
        Integer label image(s), 0 = background; a boolean mask counts as labels {0, 1}. Labels must
        be non-negative and fit in uint32. For a stack, the first axis indexes images and is *not*
        a spatial axis: pixels of image ``i`` are only compared with pixels of image ``i``.

    Returns
    -------
    ndarray of uint32, same shape as `mask`
        The object's label on its boundary pixels (labelled pixels with a 4-neighbour inside the
        image of a different value), 0 elsewhere. The image edge is not a boundary.

    Raises
    ------
    InputError
        If `mask` is not 2-D or 3-D, not integer/boolean, or has labels outside [0, 2**32 - 1].

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((5, 5), dtype=np.uint16)
    >>> m[1:4, 1:4] = 7
    >>> get_boundary(m)[2]
    array([0, 7, 0, 7, 0], dtype=uint32)
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise InputError(
            "get_boundary expects a label image (H, W) or a stack (N, H, W); got shape "
            f"{arr.shape}. Squeeze or split extra axes first."
        )
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"get_boundary expects integer labels; got dtype {arr.dtype}. Cast integral labels "
            "with mask.astype(np.uint32) first."
        )
    if arr.size and arr.dtype.itemsize >= 4:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > MAX_LABEL:
            raise InputError(
                f"labels must lie in [0, {MAX_LABEL}] for a uint32 boundary; got [{lo}, {hi}]. "
                "Relabel with skimage.segmentation.relabel_sequential first."
            )
    elif arr.size and np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise InputError(f"labels must be non-negative; got minimum {int(arr.min())}.")
    out = np.zeros(arr.shape, dtype=np.uint32)
    np.copyto(out, arr, casting="unsafe", where=boundary_pixels(arr))
    return out
