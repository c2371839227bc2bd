"""Connected components and label-image clean-up of 2-D images, equal to scikit-image's.

``label`` numbers components in the raster order of their first pixel, as scikit-image does.
``remove_small_objects``, ``fill_holes`` and ``relabel_sequential`` are single passes over the
label image with tables indexed by label (memory grows with the largest label, as in
scikit-image's own maps), where the reference builds a region object per label or sorts every
pixel (``np.unique``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codexdask.errors import ConfigError, InputError
from codexdask.postprocess._jit import jit

__all__ = ["erode_edges", "fill_holes", "label", "relabel_sequential", "remove_small_objects"]


def label(image: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Connected components of equal non-zero values.

    Equal, label for label and dtype for dtype, to ``skimage.measure.label(image,
    connectivity=connectivity)`` (background 0) for 2-D integer and bool images: int32 labels
    for bool input, ``intp`` otherwise, numbered 1..N in the raster order of each component's
    first pixel.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` integer or bool image; 0 is background.
    connectivity : {1, 2, None}
        1: 4-connected; 2 or None: 8-connected.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` labels, int32 for bool input, else ``intp``.
    """
    image = _as_2d(image, "image", kinds="biu")
    if connectivity not in (None, 1, 2):
        raise ConfigError(f"connectivity must be 1, 2 or None for 2-D images, got {connectivity}")
    out = np.empty(image.shape, dtype=np.int32 if image.dtype == bool else np.intp)
    if image.dtype == bool:
        image = image.view(np.uint8)
    if image.size:
        _label_kernel(np.ascontiguousarray(image), connectivity != 1, out)
    return out


def remove_small_objects(labels: np.ndarray, min_size: float, *, out: np.ndarray | None = None
                         ) -> np.ndarray:
    """Set every label with fewer than ``min_size`` pixels to 0.

    Equal to ``skimage.morphology.remove_small_objects(labels, min_size=min_size)`` of
    scikit-image < 0.26 and to ``remove_small_objects(labels, max_size=min_size - 1)`` of 0.26
    for 2-D non-negative integer label images (labels are counted as given, not re-labelled;
    scikit-image's one-label warning is not raised).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` non-negative integer labels.
    min_size : float
        Objects with fewer pixels than this are removed.
    out : numpy.ndarray, optional
        Where to write the result; may be ``labels`` itself. Default: a new array.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` labels of ``labels``' dtype.
    """
    labels = _as_labels(labels)
    out = _output(labels, out)
    if min_size > 0 and labels.size:
        counts = np.zeros(_max_label(labels) + 1, np.int64)
        _count_pixels(labels, counts)
        _erase_small(labels, counts, float(min_size), out)
    return out


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber the labels present to 1..N, keeping their order (0 stays 0).

    Equal to ``skimage.segmentation.relabel_sequential(labels)`` (``offset=1``) for 2-D
    non-negative integer labels: same relabelled image and output dtype; the two maps are the
    arrays ``numpy.asarray`` makes of scikit-image's forward and inverse ``ArrayMap``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` non-negative integer labels.

    Returns
    -------
    relabelled : numpy.ndarray
        ``(H, W)``; dtype of ``labels`` unless N does not fit in it (then the smallest
        unsigned dtype that holds N).
    forward : numpy.ndarray
        ``(max(labels) + 1,)`` of the output dtype: ``forward[old] = new``, 0 for absent labels.
    inverse : numpy.ndarray
        ``(N + 1,)`` of ``labels``' dtype: ``inverse[new] = old``.
    """
    labels = _as_labels(labels)
    counts = np.zeros(_max_label(labels) + 1, np.int64)
    _count_pixels(labels, counts)
    old = np.flatnonzero(counts[1:]) + 1
    n_new = old.size
    required = np.min_scalar_type(n_new)
    if labels.dtype.itemsize < required.itemsize or n_new >= np.iinfo(labels.dtype).max:
        out_dtype = required
    else:
        out_dtype = labels.dtype
    forward = np.zeros(counts.size, out_dtype)
    forward[old] = np.arange(1, n_new + 1)
    relabelled = np.empty(labels.shape, out_dtype)
    _apply_map(labels, forward, relabelled)
    inverse = np.zeros(n_new + 1, labels.dtype)
    inverse[1:] = old
    return relabelled, forward, inverse


def fill_holes(labels: np.ndarray, size: float, connectivity: int = 1) -> np.ndarray:
    """deepcell-toolbox's ``utils.fill_holes``: close small holes inside labels.

    For each label, in increasing order, whose 8-connected Euler number is below 1 (it encloses
    at least as many background holes as it has pieces), every ``connectivity``-connected patch
    of *other* values (background, other labels) inside that label's bounding box with fewer
    than ``size`` pixels takes the label, including patches touching the box edge. Later labels
    see earlier fills. Equal to ``deepcell_toolbox.utils.fill_holes(labels, size, connectivity)``
    for 2-D non-negative integer labels, without its ``regionprops`` and per-label
    ``remove_small_holes`` calls.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` non-negative integer labels (not modified).
    size : float
        Patches with fewer pixels than this are filled.
    connectivity : {1, 2}
        Connectivity of the patches.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` filled labels, ``labels``' dtype.
    """
    labels = _as_labels(labels)
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity must be 1 or 2 for 2-D images, got {connectivity}")
    out = labels.copy()
    if size > 0 and labels.size:
        _fill_holes_in_place(out, float(size), connectivity == 2)
    return out


def erode_edges(labels: np.ndarray, width: int) -> np.ndarray:
    """deepcell-toolbox's ``utils.erode_edges``: peel ``width`` boundary layers off every label.

    Each pass clears the pixels of a label that have a 4-neighbour inside the image with another
    value (scikit-image's ``find_boundaries(mode="inner")``, called here: this option is rare and
    not worth a kernel). Equal to ``deepcell_toolbox.utils.erode_edges(labels, width)`` in 2-D.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` integer labels.
    width : int
        Number of layers; 0 or less returns ``labels`` unchanged.

    Returns
    -------
    numpy.ndarray
        ``(H, W)``, ``labels``' dtype (a copy when ``width > 0``).
    """
    from skimage.segmentation import find_boundaries

    labels = _as_2d(labels, "labels", kinds="iu")
    if not width:
        return labels
    eroded = labels.copy()
    for _ in range(width):
        eroded[find_boundaries(eroded, mode="inner")] = 0
    return eroded


def _as_2d(array: np.ndarray, name: str, kinds: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {array.shape}")
    if array.dtype.kind not in kinds:
        raise InputError(f"{name} must have an integer dtype, got {array.dtype}")
    return array


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.ascontiguousarray(_as_2d(labels, "labels", kinds="iu"))
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError("labels must be non-negative; relabel them with label() first")
    return labels


def _output(labels: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return labels.copy()
    if out.shape != labels.shape or out.dtype != labels.dtype or not out.flags.c_contiguous:
        raise InputError("out must be a C-contiguous array of the labels' shape and dtype")
    if out is not labels:
        out[...] = labels
    return out


def _max_label(labels: np.ndarray) -> int:
    return int(labels.max()) if labels.size else 0


@jit
def _label_kernel(
    image: np.ndarray, full: bool, out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Two-pass union-find labelling of equal-valued neighbours into ``out``."""
    height, width = image.shape
    parent = np.empty(1024, np.int64)  # provisional label -> smaller equivalent label
    parent[0] = 0
    n_prov = 0
    for y in range(height):
        for x in range(width):
            value = image[y, x]
            if value == 0:
                out[y, x] = 0
                continue
            current = 0
            if x > 0 and image[y, x - 1] == value:
                current = out[y, x - 1]
            if y > 0:
                for dx in range(-1 if full else 0, 2 if full else 1):
                    nx = x + dx
                    if 0 <= nx < width and image[y - 1, nx] == value:
                        other = out[y - 1, nx]
                        if current == 0:
                            current = other
                        elif other != current:
                            current = _union(parent, current, other)
            if current == 0:
                n_prov += 1
                if n_prov == parent.size:
                    grown = np.empty(2 * parent.size, np.int64)
                    grown[: parent.size] = parent
                    parent = grown
                parent[n_prov] = n_prov
                current = n_prov
            out[y, x] = current
    # Roots are the smallest provisional label of a set, created at its first raster pixel.
    final = np.empty(n_prov + 1, np.int64)
    final[0] = 0
    n_final = 0
    for i in range(1, n_prov + 1):
        root = _find(parent, i)
        if root == i:
            n_final += 1
            final[i] = n_final
        else:
            final[i] = final[root]
    for y in range(height):
        for x in range(width):
            out[y, x] = final[out[y, x]]


@jit
def _find(parent: np.ndarray, i: Any) -> Any:  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@jit
def _union(parent: np.ndarray, a: Any, b: Any) -> Any:  # pragma: no cover - compiled
    """Join the sets of ``a`` and ``b`` under the smaller root; return that root."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
        return ra
    parent[ra] = rb
    return rb


@jit
def _count_pixels(labels: np.ndarray, counts: np.ndarray) -> None:  # pragma: no cover - compiled
    flat = labels.reshape(-1)
    for i in range(flat.size):
        counts[flat[i]] += 1


@jit
def _erase_small(
    labels: np.ndarray, counts: np.ndarray, min_size: Any, out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    flat = labels.reshape(-1)
    dest = out.reshape(-1)
    for i in range(flat.size):
        if counts[flat[i]] < min_size:
            dest[i] = 0


@jit
def _apply_map(
    labels: np.ndarray, mapping: np.ndarray, out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    flat = labels.reshape(-1)
    dest = out.reshape(-1)
    for i in range(flat.size):
        dest[i] = mapping[flat[i]]


@jit
def _fill_holes_in_place(
    labels: np.ndarray, size: Any, full: bool,
) -> None:  # pragma: no cover - compiled
    """See :func:`fill_holes`; ``full`` selects 8-connected patches."""
    height, width = labels.shape
    n_labels = 0
    for y in range(height):
        for x in range(width):
            n_labels = max(n_labels, labels[y, x])
    n_labels += 1
    top = np.full(n_labels, height, np.int64)
    bottom = np.full(n_labels, -1, np.int64)
    left = np.full(n_labels, width, np.int64)
    right = np.full(n_labels, -1, np.int64)
    euler4 = np.zeros(n_labels, np.int64)  # 4 x Euler number, 8-connected objects
    for y in range(height):
        for x in range(width):
            lab = labels[y, x]
            if lab:
                top[lab] = min(top[lab], y)
                bottom[lab] = max(bottom[lab], y)
                left[lab] = min(left[lab], x)
                right[lab] = max(right[lab], x)
    # Gray's bit-quad count over every 2x2 window of the zero-padded image:
    # 4E = #(1 pixel of the label) - #(3 pixels) - 2 #(2 diagonal pixels).
    for y in range(-1, height):
        for x in range(-1, width):
            a = labels[y, x] if y >= 0 and x >= 0 else 0
            b = labels[y, x + 1] if y >= 0 and x + 1 < width else 0
            c = labels[y + 1, x] if y + 1 < height and x >= 0 else 0
            d = labels[y + 1, x + 1] if y + 1 < height and x + 1 < width else 0
            if a == b and b == c and c == d:
                continue
            _quad(euler4, a, b, c, d)
    for lab in range(1, n_labels):
        if bottom[lab] >= 0 and euler4[lab] < 4:
            _fill_box(labels, lab, top[lab], bottom[lab] + 1, left[lab], right[lab] + 1, size,
                      full)


@jit
def _quad(
    euler4: np.ndarray, a: Any, b: Any, c: Any, d: Any,
) -> None:  # pragma: no cover - compiled
    """Add one 2x2 window (a b / c d) to the bit-quad counts of each label in it."""
    for k in range(4):
        lab = a if k == 0 else b if k == 1 else c if k == 2 else d
        if lab == 0:
            continue
        # count each distinct label once: skip if it appeared at an earlier corner
        if (k >= 1 and lab == a) or (k >= 2 and lab == b) or (k == 3 and lab == c):
            continue
        n = (a == lab) + (b == lab) + (c == lab) + (d == lab)
        if n == 1:
            euler4[lab] += 1
        elif n == 3:
            euler4[lab] -= 1
        elif n == 2 and ((a == lab and d == lab) or (b == lab and c == lab)):
            euler4[lab] -= 2


@jit
def _fill_box(
    labels: np.ndarray, lab: Any, y0: Any, y1: Any, x0: Any, x1: Any, size: Any, full: bool,
) -> None:  # pragma: no cover - compiled
    """Fill the patches of values other than ``lab`` in the box with fewer than ``size`` pixels."""
    box_h = y1 - y0
    box_w = x1 - x0
    seen = np.zeros((box_h, box_w), np.bool_)
    members = np.empty(box_h * box_w, np.int64)
    for sy in range(box_h):
        for sx in range(box_w):
            if seen[sy, sx] or labels[y0 + sy, x0 + sx] == lab:
                continue
            # flood one patch, recording its pixels
            seen[sy, sx] = True
            members[0] = sy * box_w + sx
            n = 1
            i = 0
            while i < n:
                py = members[i] // box_w
                px = members[i] - py * box_w
                i += 1
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        if dy == 0 and dx == 0:
                            continue
                        if not full and dy != 0 and dx != 0:
                            continue
                        ny = py + dy
                        nx = px + dx
                        if (0 <= ny < box_h and 0 <= nx < box_w and not seen[ny, nx]
                                and labels[y0 + ny, x0 + nx] != lab):
                            seen[ny, nx] = True
                            members[n] = ny * box_w + nx
                            n += 1
            if n < size:
                for j in range(n):
                    py = members[j] // box_w
                    labels[y0 + py, x0 + members[j] - py * box_w] = lab
