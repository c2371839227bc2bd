"""Mesmer's network in PyTorch: the released model's computation, layer for layer.

:class:`MesmerNet` computes what deepcell's ``MultiplexSegmentation`` Keras model computes (the
graph in :mod:`codexdask.mesmer.graph`), with the same layer names as parameter names, so that
converted Keras weights load one to one:

- ``Location2D``: two coordinate channels, row and column index divided by (side - 1), i.e. 0..1
  over each input tile; concatenated after the two image channels; a 1x1 conv to 3 channels.
- Keras ResNet50 (v1): explicit zero padding then 'valid' 7x7/2 conv and 3x3/2 max pool; stride on
  the first 1x1 conv of a stage's first block and on its projection shortcut; biased convs;
  batch normalisation with epsilon 1.001e-5.
- Feature pyramid down to P1 (128² for a 256² tile): 1x1 lateral convs, bilinear x2 upsampling
  with half-pixel centres (TensorFlow 2's ``tf.image.resize``, i.e. ``align_corners=False``),
  addition, a 3x3 conv. Only P1 feeds the heads.
- Four heads: 3x3 conv to 64 channels, bilinear x2, 1x1 conv to 128 + batch norm (epsilon 1e-3)
  + ReLU, 1x1 conv to 1 channel + ReLU (inner distance) or 3 channels + softmax.

The forward pass returns only the four maps Mesmer's post-processing reads, so the eight raw
output channels never leave the device. Inference only: batch norm uses the stored statistics.
The heads run one after another once the backbone's features are freed: at most ~82 MiB of
activations per 256² tile are alive in float32 (~41 MiB under bf16/fp16 autocast), counted with
``torch.profiler(profile_memory=True)``; cuDNN's workspace comes on top on a GPU. A batch whose
largest activation would reach 2**31 values (256 tiles of 256²) runs in several passes
(:func:`tiles_per_pass`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codexdask.config import PRECISIONS
from codexdask.errors import ConfigError, InputError, ModelLoadError
from codexdask.mesmer.graph import (
    ARCHITECTURE,
    ARCHITECTURE_VERSION,
    HEAD_CLASSES,
    MAP_NAMES,
    RESNET_STAGES,
    mesmer_layers,
    probe_tiles,
)

__all__ = ["ARCHITECTURE", "ARCHITECTURE_VERSION", "MAP_NAMES", "PRECISIONS", "MesmerNet",
           "clear_cache", "count_values", "load_network", "precision_mode", "predict_maps",
           "random_network", "read_weights", "resolve_device", "tiles_per_pass",
           "to_channels_last"]
#: Spatial sides must be multiples of this (five stride-2 reductions, then four x2 upsamplings).
SIDE_MULTIPLE = 32
#: Channels of the widest activation per output pixel (the heads' 1x1 convs to 128 channels at
#: full resolution): a 256² tile's largest tensor holds 128 * 256 * 256 = 2**23 values.
WIDEST_CHANNELS = 128
#: Some PyTorch CUDA kernels index with 32-bit integers: seen on an H200 (torch 2.11), bilinear
#: upsampling refused a 512-tile batch ("less than INT_MAX elements"). A forward pass keeps every
#: activation below this many values by running large batches in several passes.
MAX_ACTIVATION_VALUES = 2**31 - 1
#: Activations a caller can ask :meth:`MesmerNet.activations` for (NHWC, float32).
TAPS = ("conv_channels", "conv1_relu", "pool1_pool", "conv2_block3_out", "conv3_block4_out",
        "conv4_block6_out", "conv5_block3_out", "P1_merged", "P1",
        *(f"relu_0_semantic_{k}" for k in range(4)), *(f"semantic_{k}" for k in range(4)))


class FrozenBatchNorm2d(nn.Module):
    """Inference batch normalisation with stored statistics (Keras ``BatchNormalization``).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel of an NCHW
    tensor. Parameters: ``weight`` (gamma), ``bias`` (beta); buffers: ``running_mean``,
    ``running_var`` — no ``num_batches_tracked``, so the state dict is exactly the Keras weights.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class MesmerNet(nn.Module):
    """Mesmer's network; parameters named after the Keras layers (``conv1_conv.weight`` ...).

    Built with PyTorch's default initialisation; load converted weights with
    :func:`load_network` (or ``load_state_dict``). 25,804,951 values in parameters and buffers.
    """

    def __init__(self) -> None:
        super().__init__()
        for layer in mesmer_layers().values():
            if layer.class_name == "Conv2D":
                size, _, cin, cout = dict(layer.weights)["kernel"]
                stride = layer.config["strides"][0]
                padding = size // 2 if layer.config["padding"] == "same" else 0
                self.add_module(layer.name, nn.Conv2d(cin, cout, size, stride, padding))
            elif layer.class_name == "BatchNormalization":
                channels = dict(layer.weights)["gamma"][0]
                self.add_module(layer.name, FrozenBatchNorm2d(channels, layer.config["epsilon"]))
        self.eval()

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Mesmer's four maps for a batch of pre-processed tiles.

        Parameters
        ----------
        tiles : torch.Tensor
            ``(B, H, W, 2)`` float32, channels (nuclear, membrane) as ``mesmer_preprocess``
            returns them; H and W multiples of 32 (the released model uses 256).

        Returns
        -------
        torch.Tensor
            ``(B, H, W, 4)`` float32 on the input's device: whole-cell inner distance, whole-cell
            interior probability (softmax channel 1), nuclear inner distance, nuclear interior
            probability (:data:`MAP_NAMES`).
        """
        _check_tiles(tiles)
        passes = -(-tiles.shape[0] // tiles_per_pass(tiles.shape[1], tiles.shape[2]))
        if passes <= 1:
            return self._run(tiles, None)
        return torch.cat([self._run(part, None) for part in tiles.tensor_split(passes)])

    def activations(self, tiles: torch.Tensor, names: tuple[str, ...] = TAPS
                    ) -> dict[str, torch.Tensor]:
        """Intermediate outputs of the Keras layers ``names`` (see :data:`TAPS`), NHWC float32."""
        unknown = sorted(set(names) - set(TAPS))
        if unknown:
            raise ConfigError(f"no activation tap {unknown}; choose from {list(TAPS)}")
        _check_tiles(tiles)
        taps: dict[str, torch.Tensor] = {}
        self._run(tiles, (set(names), taps))
        return {name: taps[name].permute(0, 2, 3, 1).float() for name in names}

    def _run(self, tiles: torch.Tensor,
             taps: tuple[set[str], dict[str, torch.Tensor]] | None) -> torch.Tensor:
        def keep(name: str, value: torch.Tensor) -> torch.Tensor:
            if taps is not None and name in taps[0]:
                taps[1][name] = value.clone()
            return value

        image = tiles.permute(0, 3, 1, 2)  # NCHW view; channels-last in memory
        x = torch.cat([image, location_channels(image)], dim=1)
        x = keep("conv_channels", self.layer("conv_channels")(x))
        x = self.layer("conv1_conv")(F.pad(x, (3, 3, 3, 3)))
        c1 = keep("conv1_relu", F.relu_(self.layer("conv1_bn")(x)))
        x = keep("pool1_pool", F.max_pool2d(F.pad(c1, (1, 1, 1, 1)), 3, 2))
        features = {1: c1}
        for stage, _, blocks, _ in RESNET_STAGES:
            for block in range(1, blocks + 1):
                x = self._bottleneck(x, f"conv{stage}_block{block}", projection=block == 1)
            features[stage] = keep(f"conv{stage}_block{blocks}_out", x)
        top = self.layer("C5_reduced")(features[5])
        for level in (4, 3, 2, 1):
            lateral = self.layer(f"C{level}_reduced")(features[level])
            top = lateral.add_(upsample2x(top))
        p1 = keep("P1", self.layer("P1")(keep("P1_merged", top)))
        del x, c1, features, lateral, top  # free the backbone and pyramid before the heads
        maps = []
        for k, classes in enumerate(HEAD_CLASSES):  # one head at a time: less live memory
            h = upsample2x(self.layer(f"conv_0_semantic_upsample_{k}")(p1))
            h = self.layer(f"conv_0_semantic_{k}")(h)
            h = F.relu_(self.layer(f"batch_normalization_0_semantic_{k}")(h))
            z = self.layer(f"conv_1_semantic_{k}")(keep(f"relu_0_semantic_{k}", h))
            out = keep(f"semantic_{k}", F.relu(z) if classes == 1 else torch.softmax(z, dim=1))
            maps.append(out[:, :1] if classes == 1 else out[:, 1:2])  # interior = class 1
        return torch.cat(maps, dim=1).permute(0, 2, 3, 1).float()

    def layer(self, name: str) -> nn.Module:
        """The submodule computing the Keras layer ``name`` (a conv or a batch norm)."""
        return self.get_submodule(name)

    def _bottleneck(self, x: torch.Tensor, prefix: str, projection: bool) -> torch.Tensor:
        """Keras ResNet50 ``block1``: 1x1 (strided) -> 3x3 -> 1x1, plus the shortcut, ReLU."""
        if projection:
            shortcut = self.layer(f"{prefix}_0_bn")(
                self.layer(f"{prefix}_0_conv")(x))
        else:
            shortcut = x
        for part in ("1", "2"):
            x = self.layer(f"{prefix}_{part}_conv")(x)
            x = F.relu_(self.layer(f"{prefix}_{part}_bn")(x))
        x = self.layer(f"{prefix}_3_bn")(self.layer(f"{prefix}_3_conv")(x))
        return F.relu_(x.add_(shortcut))


def _check_tiles(tiles: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``tiles`` is ``(B, H, W, 2)`` with sides the network
    takes."""
    if tiles.ndim != 4 or tiles.shape[-1] != 2:
        raise InputError(f"tiles must be (B, H, W, 2), got shape {tuple(tiles.shape)}")
    height, width = tiles.shape[1:3]
    if height % SIDE_MULTIPLE or width % SIDE_MULTIPLE:
        raise InputError(f"tile sides must be multiples of {SIDE_MULTIPLE}, got "
                         f"{height}x{width} (Mesmer's tiles are 256x256)")


def tiles_per_pass(height: int, width: int) -> int:
    """The most ``height`` x ``width`` tiles one forward pass takes (see
    :data:`MAX_ACTIVATION_VALUES`): 255 for Mesmer's 256² tiles.

    >>> tiles_per_pass(256, 256), tiles_per_pass(512, 512)
    (255, 63)
    """
    return max(1, MAX_ACTIVATION_VALUES // (WIDEST_CHANNELS * max(1, height * width)))


def location_channels(image: torch.Tensor) -> torch.Tensor:
    """deepcell's ``Location2D`` for an NCHW batch: ``(B, 2, H, W)``, row / (H-1), col / (W-1)."""
    batch, _, height, width = image.shape
    rows = torch.arange(height, dtype=image.dtype, device=image.device) / (height - 1)
    cols = torch.arange(width, dtype=image.dtype, device=image.device) / (width - 1)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)  # a view: no copy per tile


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Keras ``UpSampling2D(size=2, interpolation="bilinear")``: half-pixel centres, edge clamp."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def random_network(seed: int = 0, device: str | torch.device | None = "cpu") -> MesmerNet:
    """Mesmer's architecture with random weights and standardised heads (tests, benchmarks).

    PyTorch's default initialisation, then each head's last 1x1 conv is rescaled so that on the
    conversion probe's tissue-like tile its pre-activation output has mean 0 and std 1 (inner
    distance = ReLU(z); interior logit = z, the other two logits 0) — the recipe the test suite
    uses for TensorFlow models — so the maps vary over the tile instead of being nearly flat.
    """

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = MesmerNet()
    finally:
        torch.random.set_rng_state(generator_state)
    probe = torch.from_numpy(probe_tiles()[1:])
    names = tuple(f"relu_0_semantic_{k}" for k in range(len(HEAD_CLASSES)))
    with torch.inference_mode():
        features = net.activations(probe, names)
    with torch.no_grad():
        for k, classes in enumerate(HEAD_CLASSES):
            conv = cast(nn.Conv2d, net.layer(f"conv_1_semantic_{k}"))
            weight, bias = conv.weight, cast(torch.Tensor, conv.bias)
            channel = 0 if classes == 1 else 1
            column = weight[channel, :, 0, 0].clone()
            z = features[names[k]].reshape(-1, column.numel()) @ column
            scale = 1.0 / float(z.std())
            weight.zero_()
            bias.zero_()
            weight[channel, :, 0, 0] = column * scale
            bias[channel] = -float(z.mean()) * scale
    return to_channels_last(net.to(resolve_device(device)))


def to_channels_last(net: MesmerNet) -> MesmerNet:
    """``net`` with its 4-D weights in channels-last (NHWC) memory order, in place."""
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def count_values(net: nn.Module) -> int:
    """Number of stored values (parameters and buffers): Keras' ``count_params`` for Mesmer."""
    return sum(t.numel() for t in net.parameters()) + sum(t.numel() for t in net.buffers())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` if given, else this process's first visible GPU, else CPU.

    Dask-cuda gives each worker one GPU through ``CUDA_VISIBLE_DEVICES``, so ``cuda:0`` is the
    worker's own GPU.
    """
    if device is None or device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown torch device {device!r}: use 'cpu', 'cuda' or 'cuda:N'"
                          ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use device 'cpu' or install a CUDA build")
    return resolved


@contextmanager
def precision_mode(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed forward passes at ``precision`` on ``device``.

    - ``fp32``: float32 everywhere; on CUDA, TF32 tensor cores are switched off for convs and
      matmuls (PyTorch lets cuDNN convs use TF32 by default).
    - ``tf32``: float32 tensors, TF32 tensor-core convs/matmuls on CUDA (Ampere and newer); the
      same as ``fp32`` on CPU.
    - ``bf16`` / ``fp16``: ``torch.autocast`` to bfloat16 / float16. Both run on CPU too
      (measured, torch 2.13 on a 2-core x86 VM: bf16 about 2x faster than float32, fp16 about 7x
      slower — no native half-precision kernels). Outputs stay float32.

    The TF32 switches are process-wide; they are restored on exit.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tf32 = _tf32(precision == "tf32") if device.type == "cuda" else nullcontext()
    cast = (torch.autocast(device.type, dtype=autocast) if autocast is not None
            else nullcontext())
    with tf32, cast:
        yield


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """Switch TF32 for cuDNN convs and cuBLAS matmuls (new ``fp32_precision`` API when present)."""
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:
        legacy = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy


def predict_maps(net: MesmerNet, tiles: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """Run ``net`` on a numpy batch in one call: ``(B, H, W, 2)`` -> ``(B, H, W, 4)`` float32.

    The tiles go to the network's device, the forward pass runs under ``torch.inference_mode``
    at ``precision`` (see :func:`precision_mode`), and only the four maps come back.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 2:
        raise InputError(f"tiles must be (B, H, W, 2), got shape {tiles.shape}")
    device = next(net.parameters()).device
    batch = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))
    with torch.inference_mode(), precision_mode(device, precision):
        maps = net(batch.to(device, non_blocking=True))
        return maps.cpu().numpy()


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, int, int, str], MesmerNet] | None = None


def load_network(path: str | os.PathLike[str], device: str | torch.device | None = None
                 ) -> MesmerNet:
    """The network with the converted weights in ``path``, once per process.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file written by ``codexdask convert-model``.
    device : str or torch.device, optional
        Default: the process's first visible GPU, else CPU (:func:`resolve_device`).

    Returns
    -------
    MesmerNet
        In eval mode, channels-last, float32 on ``device``. The same object is returned while
        the file (path, size, modification time) and the device stay the same; another file or
        device replaces it (one model per process).

    Raises
    ------
    ModelLoadError
        The file is missing, not a safetensors file, written for another architecture version,
        or its tensors differ from the network's (the first difference is named).
    """
    global _cached
    target = resolve_device(device)
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError as exc:
        raise ModelLoadError(f"converted Mesmer weights not found at {file}: run "
                             "`codexdask convert-model SRC --out FILE.safetensors` first") from exc
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, str(target))
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        net = MesmerNet()
        net.load_state_dict(read_weights(file), strict=True)
        net = to_channels_last(net.to(target)).eval()
        _cached = (key, net)
        return net


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a converted weight file, checked against :class:`MesmerNet`'s names/shapes."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}); convert the "
                             "model again with `codexdask convert-model`") from exc
    if metadata.get("architecture") != ARCHITECTURE:
        raise ModelLoadError(f"{path} does not hold Mesmer weights converted by codexdask "
                             f"(architecture {metadata.get('architecture')!r})")
    if metadata.get("architecture_version") != ARCHITECTURE_VERSION:
        raise ModelLoadError(
            f"{path} was converted for architecture version "
            f"{metadata.get('architecture_version')!r}; this codexdask needs version "
            f"{ARCHITECTURE_VERSION}: convert the original model again")
    expected = {name: tuple(t.shape) for name, t in MesmerNet().state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelLoadError(f"{path} lacks the tensor {name!r}; convert the model again")
        if tuple(tensors[name].shape) != shape or tensors[name].dtype != torch.float32:
            raise ModelLoadError(f"{path}: tensor {name!r} is {tensors[name].dtype} "
                                 f"{tuple(tensors[name].shape)}, expected float32 {shape}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ModelLoadError(f"{path} holds tensors Mesmer does not have, first {extra[0]!r}")
    return tensors


def clear_cache() -> None:
    """Forget the cached network (tests; a worker that must release its GPU memory)."""
    global _cached
    with _cache_lock:
        _cached = None
