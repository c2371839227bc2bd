"""The headline run: a whole slide the size users know (9777 x 14239, 139 MP) end to end.

The slide is tissue-like and made fast: one 2048² synthetic slide (cells of ~9 µm, as on CODEX
tissue at 0.5 µm/px; a quarter of it without tissue) tiled lazily to the size. Then, timed apart:

1. ``patch``: the patch store of ``full_image`` (what ``codexdask patch`` writes);
2. ``segment``: ``codexdask.engine.runner.run`` on it, seamless, with a random-weight converted
   Mesmer (PyTorch; fp32 unless ``--precision``), ``--gpus`` when ``--device cuda``.

Printed: seconds of each, megapixels per second end to end and of the segmentation, the
manifest's seconds per stage (prepare, pinned, network, finish, stitch, repair), network tiles
per second (tiles of every block's window, an upper bound: a tile two windows of one task share
runs once), the GPU busy fraction (network seconds / wall per GPU, and NVML's utilisation
sampled every 0.2 s when ``pynvml`` is installed) and the objects found. ``--size H W`` runs a
scaled-down slide (the test suite runs a small one on the CPU). The last line is JSON.

    python bench/headline.py --device cuda [--precision tf32]       # on a GPU node
    python bench/headline.py --size 1024 1024 --device cpu          # anywhere
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dask.array as da

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from codexdask.config import PatchConfig, SegmentConfig  # noqa: E402
from codexdask.engine.runner import run  # noqa: E402
from codexdask.mesmer import network  # noqa: E402
from codexdask.mesmer.convert import save_network  # noqa: E402
from codexdask.segmenters.mesmer import MesmerSegmenter  # noqa: E402
from codexdask.store.patch_store import write_patch_store  # noqa: E402
from codexdask.synthetic import synthetic_slide  # noqa: E402

#: dchaley/deepcell-imaging's benchmark image (139 MP).
HEADLINE_SHAPE = (9777, 14239)
BASE = 2048


def tiled_slide(height: int, width: int) -> tuple[da.Array, list[str], list[str]]:
    """A ``(C, height, width)`` uint16 slide tiled lazily from one 2048² synthetic slide."""
    slide = synthetic_slide(min(BASE, height), min(BASE, width), seed=0, empty_fraction=0.25)
    reps = (1, -(-height // slide.image.shape[1]), -(-width // slide.image.shape[2]))
    image = da.tile(da.from_array(slide.image, chunks=(1, 1024, 1024)), reps)
    return image[:, :height, :width], slide.channel_names, slide.membrane_channels


class NvmlSampler:
    """GPU utilisation (%) sampled by NVML in a thread while in the block (empty without
    ``pynvml`` or a GPU)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                       for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no pynvml, no driver: nothing to sample
            return self

        def sample() -> None:
            while not self._stop.is_set():
                self.samples.append([pynvml.nvmlDeviceGetUtilizationRates(h).gpu
                                     for h in handles])
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean_utilisation(self) -> float | None:
        values = [v for row in self.samples for v in row]
        return sum(values) / len(values) / 100 if values else None


def window_tiles(result: Any, segmenter: MesmerSegmenter) -> int:
    """Network tiles of every block's window of the run (an upper bound of the tiles run)."""
    return sum(segmenter.tiles_per_patch(patch.grid.window(block).shape, result.plan.image_mpp)
               for patch in result.plan.chosen for block in patch.grid)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=HEADLINE_SHAPE,
                        metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--device", default="cuda", help="cuda (default: --gpus) or cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--n-workers", type=int, default=None, help="CPU runs: workers")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    height, width = args.size
    gpus = args.device.startswith("cuda")

    with tempfile.TemporaryDirectory(prefix="headline-", dir=args.work_dir) as tmp_name:
        tmp = Path(tmp_name)
        weights = tmp / "mesmer.safetensors"
        save_network(network.random_network(seed=0), weights, source_name="random seed 0")
        image, names, membrane = tiled_slide(height, width)
        start = time.perf_counter()
        store = write_patch_store(image, tmp / "slide.zarr",
                                  PatchConfig(nucleus="DAPI", wholecell=membrane,
                                              split_mode="full_image", image_mpp=0.5),
                                  channel_names=names)
        patch_s = time.perf_counter() - start
        config = SegmentConfig(backend="mesmer", model_path=str(weights), gpus=gpus,
                               precision=args.precision, n_workers=args.n_workers,
                               save_pickles=False, save_mosaics=False, n_overlays=0)
        segmenter = MesmerSegmenter(model_path=weights, precision=args.precision,
                                    device=None if gpus else "cpu")
        with NvmlSampler() as nvml:
            start = time.perf_counter()
            result = run(store, tmp / "out", config, segmenter=segmenter)
            segment_s = time.perf_counter() - start
        tiles = window_tiles(result, segmenter)

    manifest = result.manifest
    stages = manifest["stages"]
    megapixels = height * width / 1e6
    informative = result.metadata[result.metadata["is_informative"].astype(bool)]
    report = {
        "slide": [height, width], "megapixels": megapixels, "device": args.device,
        "precision": args.precision, "patch_s": patch_s, "segment_s": segment_s,
        "end_to_end_s": patch_s + segment_s,
        "megapixels_per_s": megapixels / (patch_s + segment_s),
        "segment_megapixels_per_s": megapixels / segment_s,
        "stages": stages,
        "network_tiles": tiles,
        "network_tiles_per_s": tiles / stages["network_s"] if stages["network_s"] else None,
        "gpu_busy_fraction": stages["gpu_busy_fraction"],
        "nvml_utilisation": nvml.mean_utilisation(),
        "cells": int(informative["n_cells"].sum()), "nuclei": int(informative["n_nuclei"].sum()),
        "plan": {k: manifest["plan"][k] for k in ("batch", "blocks", "in_flight", "gpu_feed")},
        "warnings": manifest["warnings"],
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
