"""Shared test fixtures.

``mesmer_model_dir`` builds the Mesmer architecture with random weights (no download: deepcell's
``PanopticNet`` with ``use_imagenet=False``), adjusts its four output heads so that the maps cross
deep-watershed's thresholds, and saves it as a Keras SavedModel once per test session.

Why the adjustment: with plain random weights the inner-distance heads stay below 0.1 (almost no
markers) and the softmax interiors sit near 1/3 everywhere, so labels are nearly empty and a
bit-identity test would compare blank images. The last 1x1 convolution of each head (128 -> 1 or
128 -> 3 channels) is rescaled so that, on a probe tissue image, its pre-activation output is
standardised: inner distance = relu(z), interior logit = z with the edge and background logits 0.
The maps then follow the random features of the input, giving ~30-40 objects per 256² tile with
about half of the pixels labelled, and pixels near the 0.2 interior threshold, where last-bit
differences can flip a label.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

#: Modules that import deepcell (the reference suite) or PyTorch (the main suite) at the top are
#: collected only where their package is.
collect_ignore = (
    ([] if importlib.util.find_spec("deepcell") else ["mesmer/test_mesmer_deepcell_parity.py"])
    + ([] if importlib.util.find_spec("torch") else ["test_gpu_check.py",
                                                      "segmenters/test_mesmer_faithfulness.py",
                                                      "mesmer/test_mesmer_network.py",
                                                      "segmenters/test_mesmer_torch.py"])
)
#: The modules of the reference suite. The reference environment (Python 3.10, TensorFlow 2.8)
#: has no zarr 3, so no stores: its tests exchange arrays and files with codexdask, and only
#: these modules are collected there. A reference test anywhere else is an error.
REFERENCE_MODULES = frozenset({
    "mesmer/test_convert.py", "mesmer/test_mesmer_deepcell_parity.py", "mesmer/test_weights.py",
    "postprocess/test_postprocess_labels.py", "postprocess/test_postprocess_pipeline.py",
    "segmenters/test_mesmer.py", "statistics/test_statistics.py", "test_doctor.py",
})
HAS_STORES = importlib.util.find_spec("zarr") is not None
_TESTS = Path(__file__).parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without zarr (the reference environment), collect only :data:`REFERENCE_MODULES`."""
    if HAS_STORES or collection_path.is_dir() or collection_path.suffix != ".py":
        return None
    try:
        name = collection_path.relative_to(_TESTS).as_posix()
    except ValueError:  # codexdask's own modules (doctests)
        return True
    return True if name not in REFERENCE_MODULES and name != "conftest.py" else None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (or select them with -m slow)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``mesmer`` tests and tests using ``mesmer_model_dir`` (deepcell + TensorFlow) belong to the
    reference suite; slow tests are opt-in: ``--run-slow``, ``CODEXDASK_RUN_SLOW=1`` or
    ``-m slow``."""
    for item in items:
        if (item.get_closest_marker("mesmer") is not None
                or "mesmer_model_dir" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reference)
        if item.get_closest_marker("reference") is not None:
            module = Path(str(item.fspath)).relative_to(_TESTS).as_posix()
            if module not in REFERENCE_MODULES:
                raise pytest.UsageError(
                    f"{item.nodeid} is a reference test outside conftest.REFERENCE_MODULES: the "
                    "reference environment would not run it (move it, or list its module)")
    markexpr = config.getoption("-m") or ""
    if (config.getoption("--run-slow") or os.environ.get("CODEXDASK_RUN_SLOW") == "1"
            or "slow" in markexpr):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (or -m slow)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def tissue_batch(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Synthetic 2-channel tissue ``(B, H, W, 2)`` uint16: blurred nuclei and membranes + noise.

    Cells are the Voronoi regions of random centres (about one per 400 px²); channel 0 holds
    discs of radius 5 around the centres, channel 1 the region borders near the centres.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, height, width, 2), np.uint16)
    for b in range(batch):
        count = max(1, height * width // 400)
        seeds = np.zeros((height, width), bool)
        seeds[rng.integers(0, height, count), rng.integers(0, width, count)] = True
        dist, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
        owner = iy * width + ix
        border = (ndi.maximum_filter(owner, 3) != ndi.minimum_filter(owner, 3)) & (dist < 12)
        nucleus = ndi.gaussian_filter((dist < 5).astype(float), 1.0) * 3000
        membrane = ndi.gaussian_filter(border.astype(float), 1.0) * 2000
        out[b, ..., 0] = nucleus + rng.poisson(50, (height, width))
        out[b, ..., 1] = membrane + rng.poisson(50, (height, width))
    return out


def build_random_mesmer(seed: int = 0):  # -> tf.keras.Model
    """Mesmer's architecture with random weights and standardised output heads (see above)."""
    import tensorflow as tf
    from deepcell.applications.mesmer import mesmer_preprocess
    from deepcell.model_zoo.panopticnet import PanopticNet

    tf.keras.utils.set_random_seed(seed)
    model = PanopticNet(
        backbone="resnet50", use_imagenet=False, input_shape=(256, 256, 2), norm_method=None,
        num_semantic_classes=[1, 3, 1, 3], location=True, include_top=True,
        backbone_levels=["C1", "C2", "C3", "C4", "C5"],
        pyramid_levels=["P2", "P3", "P4", "P5", "P6", "P7"],
    )
    probe = mesmer_preprocess(tissue_batch(1, 256, 256, seed=99)).astype(np.float32)
    features = tf.keras.Model(
        model.inputs, [model.get_layer(f"relu_0_semantic_{k}").output for k in range(4)]
    )(probe)
    for head, feature in enumerate(features):
        layer = model.get_layer(f"conv_1_semantic_{head}")
        kernel, bias = layer.get_weights()
        column = kernel[0, 0, :, 0 if head % 2 == 0 else 1]  # inner distance / interior logit
        z = feature.numpy().reshape(-1, kernel.shape[2]) @ column
        scale = 1.0 / float(z.std())
        new_kernel = np.zeros_like(kernel)
        new_bias = np.zeros_like(bias)
        channel = 0 if head % 2 == 0 else 1
        new_kernel[0, 0, :, channel] = column * scale
        new_bias[channel] = -float(z.mean()) * scale
        layer.set_weights([new_kernel, new_bias])
    return model


@pytest.fixture(scope="session")
def mesmer_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight Mesmer SavedModel directory (skips without deepcell)."""
    pytest.importorskip("deepcell", reason="deepcell (the mesmer extra) is not installed")
    model = build_random_mesmer()
    path = tmp_path_factory.mktemp("mesmer") / "MultiplexSegmentation"
    model.save(str(path), include_optimizer=False)
    return path


@pytest.fixture(scope="module")
def client():
    """A real LocalCluster of two single-threaded worker processes (one per test module)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as dask_client:
        yield dask_client


class FakeNvml:
    """A stand-in for the ``pynvml`` module (nvidia-ml-py) with scripted GPUs and failures.

    ``gpus`` are ``(name, uuid, total_bytes, free_bytes)``; ``init_error`` / ``query_error`` name
    an NVML error class (e.g. ``"NVMLError_NoPermission"``) raised by ``nvmlInit`` or by
    ``nvmlDeviceGetMemoryInfo``.
    """

    class NVMLError(Exception):
        pass

    def __init__(self, gpus=(), init_error=None, query_error=None):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.query_error = query_error
        for name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded",
                     "NVMLError_NoPermission", "NVMLError_Unknown", "NVMLError_NotFound"):
            setattr(self, name, type(name, (self.NVMLError,), {}))

    def _raise(self, name):
        if name:
            raise getattr(self, name)(name.removeprefix("NVMLError_"))

    def nvmlInit(self):
        self._raise(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for index, gpu in enumerate(self.gpus):
            if gpu[1] == uuid:
                return index
        raise self.NVMLError_NotFound("NotFound")

    def nvmlDeviceGetIndex(self, handle):
        return handle

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle][0].encode()

    def nvmlDeviceGetUUID(self, handle):
        return self.gpus[handle][1]

    def nvmlDeviceGetMemoryInfo(self, handle):
        from types import SimpleNamespace

        self._raise(self.query_error)
        _, _, total, free = self.gpus[handle]
        return SimpleNamespace(total=total, free=free, used=total - free)


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a :class:`FakeNvml` as ``pynvml``: ``fake_nvml(gpus=..., init_error=...)``."""
    import sys

    def install(**kwargs):
        fake = FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


@pytest.fixture
def no_weights_env(tmp_path, monkeypatch) -> Path:
    """A HOME without deepcell's cache and no token or model path in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("CODEXDASK_MODEL_PATH", raising=False)
    return tmp_path
