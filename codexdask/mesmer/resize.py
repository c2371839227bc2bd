"""Mesmer's resize for ``image_mpp`` != 0.5, whole-image and per window.

Images (deepcell ``Application._resize_input`` -> ``deepcell_toolbox.utils.resize`` with two or
more channels -> ``skimage.transform.resize(order=1, mode="constant", anti_aliasing=True,
preserve_range=True)``, cast back to the input dtype), per image and axis of input size ``n``
and output size ``m``:

1. pixels become float64 (float32 for float16/float32 images);
2. when shrinking (``n / m > 1``) a Gaussian of ``sigma = (n / m - 1) / 2``, truncated at 4
   sigma, zero outside the image, axis 0 then axis 1 (``scipy.ndimage.gaussian_filter``);
3. bilinear interpolation at ``(k + 0.5) * (n / m) - 0.5`` with zeros outside the image, in
   ``scipy.ndimage.zoom``'s order of operations (``grid_mode=True``, ``grid-constant``);
4. clip to the minimum and maximum of the whole input image, cast to the input dtype
   (integers truncate).

Everything but step 4's range is local, so a window of the resized image is computed from a
window of the input with a halo (:func:`resize_required_box`) and the image's global range.

Exactness: steps 1, 3 and 4 and the Gaussian's sums are reproduced bit for bit. The Gaussian's
weights are ``exp(-x**2 / (2 sigma**2))`` normalised by their sum; numpy's ``exp`` differs in
the last bit between numpy versions and CPUs (numpy 1.26 on AVX-512 uses a low-accuracy SIMD
exp), so deepcell's weights are not reproducible across environments. This module uses the
correctly rounded exp (computed with :mod:`decimal`), the same everywhere; where that differs
from the local numpy's exp, an output pixel can differ by one unit after the integer cast (a
value within ~1e-13 of an integer truncates to the other side). Enlarging (``image_mpp`` >
0.5) uses no Gaussian and is bit-exact.

Labels (``_resize_output`` -> ``resize(..., labeled_image=True)``): with two or more channels
(Mesmer's ``compartment="both"``) scikit-image's order-0 zoom, the input index ``floor((k +
0.5) * (n / m))`` computed as scipy does; with one channel OpenCV's ``INTER_NEAREST``, index
``min(floor(k * (1 / (m / n))), n - 1)``. The two rules pick different pixels.
"""

from __future__ import annotations

import decimal
from functools import lru_cache

import numpy as np

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box, check_inside, check_window, image_shape_2d

#: Mesmer's model resolution in µm per pixel.
MODEL_MPP = 0.5
_TRUNCATE = 4.0


def resized_shape(image_shape: tuple[int, int], image_mpp: float | None,
                  model_mpp: float = MODEL_MPP) -> tuple[int, int]:
    """Size Mesmer resizes an ``(H, W)`` image to (``Application._resize_input``)."""
    shape = image_shape_2d(image_shape)
    if image_mpp is None or image_mpp == model_mpp:
        return shape
    if not image_mpp > 0:
        raise InputError(f"image_mpp must be a positive pixel size in µm, got {image_mpp}")
    scale = image_mpp / model_mpp
    out = (int(shape[0] * scale), int(shape[1] * scale))
    if min(out) < 1:
        raise InputError(f"image_mpp={image_mpp} shrinks the {shape[0]}x{shape[1]} image to "
                         f"{out[0]}x{out[1]}; give a larger image or the right pixel size")
    return out


def _correctly_rounded_exp(x: float) -> float:
    with decimal.localcontext() as context:
        context.prec = 50
        return float(decimal.Decimal(x).exp())


@lru_cache(maxsize=32)
def gaussian_weights(sigma: float) -> np.ndarray:
    """Gaussian weights of ``scipy.ndimage.gaussian_filter1d`` (truncate 4), exact exp."""
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    exponent = -0.5 / (sigma * sigma) * x ** 2
    phi = np.array([_correctly_rounded_exp(float(e)) for e in exponent])
    weights = phi / phi.sum()
    weights.setflags(write=False)
    return weights


def _correlate_axis(data: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``scipy.ndimage.correlate1d`` of a symmetric kernel, zeros outside ``data``."""
    radius = weights.size // 2
    length = data.shape[axis]
    padding = [(0, 0)] * data.ndim
    padding[axis] = (radius, radius)
    line = np.pad(data.astype(np.float64), padding)

    def shifted(offset: int) -> np.ndarray:
        return np.take(line, np.arange(radius + offset, radius + offset + length), axis=axis)

    out = shifted(0) * weights[radius]
    for k in range(radius, 0, -1):
        out += (shifted(-k) + shifted(k)) * weights[radius - k]
    return out.astype(data.dtype)


def _working_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind not in "uif":
        raise InputError(f"resize needs integer or float pixels, got dtype {dtype}")
    return np.dtype(np.float32) if dtype.char in "ef" else np.dtype(np.float64)


def _axis_coordinates(start: int, stop: int, in_size: int, out_size: int) -> np.ndarray:
    """scipy's ``grid_mode`` input coordinate of output pixels ``[start, stop)``."""
    zoom = np.divide(in_size, out_size)
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * zoom - 0.5


def _sigma(in_size: int, out_size: int) -> float:
    return float(np.maximum(0, (np.divide(in_size, out_size) - 1) / 2))


def resize_required_box(out_box: Box, in_shape: tuple[int, int],
                        out_shape: tuple[int, int]) -> Box:
    """Input pixels :func:`resize_window` needs for ``out_box`` of the resized image."""
    in_shape, out_shape = image_shape_2d(in_shape), image_shape_2d(out_shape)
    check_inside(out_box, out_shape, "out_box")
    ranges = []
    for (start, stop), n, m in zip((out_box.rows, out_box.cols), in_shape, out_shape):
        coords = _axis_coordinates(start, stop, n, m)
        low, high = int(np.floor(coords[0])), int(np.floor(coords[-1])) + 2
        halo = resize_halo(n, m)
        ranges.append((max(low - halo, 0), min(high + halo, n)))
    return Box.from_ranges(*ranges)


def resize_window(raw: np.ndarray, read_box: Box, out_box: Box, in_shape: tuple[int, int],
                  out_shape: tuple[int, int], value_range: tuple[float, float]) -> np.ndarray:
    """Pixels ``out_box`` of the resized image, equal to ``resize_image(image)[out_box]``.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(h, w, C)`` input pixels over ``read_box`` (holding :func:`resize_required_box`).
    read_box : Box
        Box of ``raw`` in input-image coordinates.
    out_box : Box
        Box to produce, in resized-image coordinates.
    in_shape, out_shape : (int, int)
        Sizes of the whole input and resized images.
    value_range : (float, float)
        Minimum and maximum of the whole input image over all channels.

    Returns
    -------
    numpy.ndarray
        ``(out_h, out_w, C)`` in the dtype of ``raw``.
    """
    in_shape, out_shape = image_shape_2d(in_shape), image_shape_2d(out_shape)
    check_inside(read_box, in_shape, "read_box")
    check_window(raw, read_box, resize_required_box(out_box, in_shape, out_shape), "raw")
    if raw.ndim != 3:
        raise InputError(f"raw must be (h, w, C), got shape {raw.shape}")
    work = _working_dtype(raw.dtype)
    filtered = raw.astype(work)
    # The Gaussian sees zeros past the window's edges; the halo of resize_required_box keeps
    # that error away from the pixels interpolated below (at image borders zeros are right).
    for axis, (n, m) in enumerate(zip(in_shape, out_shape)):
        sigma = _sigma(n, m)
        if sigma > 1e-15:
            filtered = _correlate_axis(filtered, gaussian_weights(sigma), axis)
    rows = _interpolation(out_box.rows, in_shape[0], out_shape[0], read_box.top)
    cols = _interpolation(out_box.cols, in_shape[1], out_shape[1], read_box.left)
    total = np.zeros(out_box.shape + raw.shape[2:], dtype=np.float64)
    for index_y, weight_y in rows:
        gathered = np.take(filtered, np.clip(index_y, 0, None), axis=0).astype(np.float64)
        gathered[index_y < 0] = 0.0
        for index_x, weight_x in cols:
            values = np.take(gathered, np.clip(index_x, 0, None), axis=1)
            values[:, index_x < 0] = 0.0
            total += values * weight_y[:, None, None] * weight_x[None, :, None]
    low, high = (np.asarray(v).astype(work) for v in value_range)
    out = np.clip(total.astype(work), low, high)
    return out.astype(raw.dtype)


def _interpolation(span_: tuple[int, int], n: int, m: int,
                   offset: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(window index, weight)`` of both linear neighbours; index -1 outside the image."""
    coords = _axis_coordinates(span_[0], span_[1], n, m)
    start = np.floor(coords)
    first = 1.0 - (coords - start)
    second = 1.0 - first
    out = []
    for index, weight in ((start.astype(np.int64), first), (start.astype(np.int64) + 1, second)):
        outside = (index < 0) | (index >= n)
        out.append((np.where(outside, -1, index - offset), weight))
    return out


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize images to ``shape`` as deepcell does for Mesmer's multi-channel input.

    Equal to ``deepcell_toolbox.utils.resize(image, shape)`` for images with two or more
    channels (deepcell sends single-channel images to OpenCV instead); see the module notes on
    the anti-aliasing weights. ``image`` is ``(B, H, W, C)`` or ``(H, W, C)``.
    """
    batch = image[None] if image.ndim == 3 else image
    if batch.ndim != 4:
        raise InputError(f"image must be (H, W, C) or (B, H, W, C), got shape {image.shape}")
    in_shape, out_shape = image_shape_2d(batch.shape[1:3]), image_shape_2d(shape)
    whole_in, whole_out = Box.whole(in_shape), Box.whole(out_shape)
    out = np.stack([resize_window(item, whole_in, whole_out, in_shape, out_shape,
                                  (item.min(), item.max())) for item in batch])
    return out[0] if image.ndim == 3 else out


def _label_index(span_: tuple[int, int], n: int, m: int, channels: int) -> np.ndarray:
    if channels == 1:
        step = 1.0 / (m / n)
        index = np.floor(np.arange(span_[0], span_[1]) * step).astype(np.int64)
        return np.minimum(index, n - 1)
    coords = _axis_coordinates(span_[0], span_[1], n, m)
    return np.floor(coords + 0.5).astype(np.int64)


def resize_labels_required_box(out_box: Box, in_shape: tuple[int, int],
                               out_shape: tuple[int, int], channels: int) -> Box:
    """Label pixels :func:`resize_labels_window` reads for ``out_box``."""
    check_inside(out_box, image_shape_2d(out_shape), "out_box")
    rows = _label_index(out_box.rows, in_shape[0], out_shape[0], channels)
    cols = _label_index(out_box.cols, in_shape[1], out_shape[1], channels)
    return Box(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def resize_labels_window(labels: np.ndarray, read_box: Box, out_box: Box,
                         in_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resized labels over ``out_box`` (deepcell's rule for ``C`` channels).

    ``labels`` is ``(h, w, C)`` over ``read_box`` of the ``in_shape`` label image; the result
    is ``(out_h, out_w, C)`` in the same dtype, equal to ``resize_labels(whole)[out_box]``.
    """
    in_shape, out_shape = image_shape_2d(in_shape), image_shape_2d(out_shape)
    if labels.ndim != 3:
        raise InputError(f"labels must be (h, w, C), got shape {labels.shape}")
    channels = labels.shape[2]
    check_inside(read_box, in_shape, "read_box")
    check_window(labels, read_box,
                 resize_labels_required_box(out_box, in_shape, out_shape, channels), "labels")
    rows = _label_index(out_box.rows, in_shape[0], out_shape[0], channels) - read_box.top
    cols = _label_index(out_box.cols, in_shape[1], out_shape[1], channels) - read_box.left
    return labels[np.ix_(rows, cols)]


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize label images as ``deepcell_toolbox.utils.resize(labels, shape, labeled_image=True)``.

    ``labels`` is ``(B, H, W, C)`` or ``(H, W, C)``; one channel follows OpenCV's
    ``INTER_NEAREST``, two or more scikit-image's order-0 resize (Mesmer's ``"both"``).
    """
    batch = labels[None] if labels.ndim == 3 else labels
    if batch.ndim != 4:
        raise InputError(f"labels must be (H, W, C) or (B, H, W, C), got shape {labels.shape}")
    in_shape, out_shape = image_shape_2d(batch.shape[1:3]), image_shape_2d(shape)
    whole_in, whole_out = Box.whole(in_shape), Box.whole(out_shape)
    out = np.stack([resize_labels_window(item, whole_in, whole_out, in_shape, out_shape)
                    for item in batch])
    return out[0] if labels.ndim == 3 else out


def resize_halo(in_size: int, out_size: int) -> int:
    """Input pixels beyond the interpolation neighbours that the anti-aliasing Gaussian reads."""
    sigma = _sigma(in_size, out_size)
    return gaussian_weights(sigma).size // 2 if sigma > 1e-15 else 0

