"""What the GPU-pinned task holds: Mesmer's three stages against the pinned ``infer`` of 0.2.

One ``full_image`` store of a tissue-like synthetic slide (default 2048² at 0.5 µm/px), one
random-weight converted Mesmer (PyTorch on the CPU here; ``--device cuda`` on a GPU host), one
Dask worker that advertises ``GPU=1`` and has ``--threads`` threads, so the scheduler pins
network tasks to one at a time exactly as on a GPU node. Two engine runs, side by side:

- ``three_stage``: today's engine: prepare (CPU), network (pinned), finish (CPU);
- ``pinned_infer``: the same segmenter with the base class's stages, i.e. the whole ``infer``
  (resize, normalisation, CLAHE, tiling, the network, untiling) inside the pinned task, as in
  codexdask 0.2.

For each: per-stage seconds and seconds per megapixel from ``run_manifest.json``
(``pinned_other_s_per_mp`` = pinned seconds outside the network call), wall seconds; then the
labels of both runs against each other (``labels_identical_to_pinned_infer``) and against the
slide segmented in one piece in this process (``labels_identical``: cell and nucleus labels
equal after numbering objects in raster order, with the agreement if not).

The last line of stdout is JSON.

    python bench/gpu_feed.py [--size 2048] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from codexdask.config import PatchConfig, SegmentConfig  # noqa: E402
from codexdask.engine.runner import run  # noqa: E402
from codexdask.mesmer import network  # noqa: E402
from codexdask.mesmer.convert import save_network  # noqa: E402
from codexdask.outputs import open_result_store  # noqa: E402
from codexdask.seamless.serial import canonical_labels  # noqa: E402
from codexdask.segmenters.mesmer import MesmerSegmenter  # noqa: E402
from codexdask.segmenters.mesmer_maps import untile  # noqa: E402
from codexdask.store.patch_store import open_patch_store, write_patch_store  # noqa: E402
from codexdask.synthetic import synthetic_slide  # noqa: E402
from codexdask.synthetic.scores import labelling_agreement  # noqa: E402


class PinnedInferMesmer(MesmerSegmenter):
    """Mesmer with ``infer`` whole in the pinned task (codexdask 0.2): ``prepare`` only defers
    it, the pinned task runs it (preparation, the network, timed apart, and untiling),
    ``finish`` is ``postprocess``."""

    def prepare(self, batch: np.ndarray, image_mpp: float) -> Any:
        return functools.partial(self._infer, batch, image_mpp)

    def prepare_windows(self, windows: Any, image_mpp: float, statistics: Any) -> Any:
        return functools.partial(self._infer_windows, windows, image_mpp, statistics)

    def network(self, prepared: Any) -> tuple[Any, float]:
        return prepared()

    def finish(self, out: Any) -> np.ndarray:
        return self.postprocess(out)

    def finish_windows(self, out: Any) -> list[np.ndarray]:
        return self.postprocess_windows(out)

    def _infer(self, batch: np.ndarray, image_mpp: float) -> tuple[Any, float]:
        out, seconds = super().network(super().prepare(batch, image_mpp))
        return self._batch_maps(out), seconds

    def _infer_windows(self, windows: Any, image_mpp: float, statistics: Any
                       ) -> tuple[Any, float]:
        out, seconds = super().network(super().prepare_windows(windows, image_mpp, statistics))
        return untile(out), seconds


def engine_run(store: Path, out: Path, segmenter: MesmerSegmenter, config: SegmentConfig,
               client: Client) -> dict[str, Any]:
    start = time.perf_counter()
    result = run(store, out, config, client=client, segmenter=segmenter)
    wall = time.perf_counter() - start
    stages = result.manifest["stages"]
    per_mp = stages["s_per_megapixel"]
    return {"wall_s": wall, "graph_s": result.manifest["timings"]["graph_s"],
            "pinned_other_s_per_mp": per_mp["pinned_other"],
            "pinned_network_s_per_mp": per_mp["network"], "stages": stages,
            "plan": {k: result.manifest["plan"][k] for k in ("batch", "in_flight", "gpu_feed")}}


def labels_of(out: Path) -> list[np.ndarray]:
    group = open_result_store(out / "masks.zarr")
    return [np.asarray(group[name][0]) for name in ("cell", "nucleus")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2, help="threads of the GPU worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiles-per-call", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpu-feed-") as tmp_name:
        tmp = Path(tmp_name)
        slide = synthetic_slide(args.size, args.size, seed=0)
        store = write_patch_store(
            slide.image, tmp / "slide.zarr",
            PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                        split_mode="full_image", image_mpp=0.5),
            channel_names=slide.channel_names)
        weights = tmp / "mesmer.safetensors"
        save_network(network.random_network(seed=0), weights, source_name="random seed 0")
        config = SegmentConfig(backend="mesmer", model_path=str(weights),
                               tiles_per_call=args.tiles_per_call, save_pickles=False,
                               save_mosaics=False, n_overlays=0)
        kwargs = {"model_path": weights, "tiles_per_call": args.tiles_per_call,
                  "device": args.device}
        runs: dict[str, Any] = {}
        with LocalCluster(n_workers=1, threads_per_worker=args.threads, resources={"GPU": 1},
                          processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            for name, segmenter in (("three_stage", MesmerSegmenter(**kwargs)),
                                    ("pinned_infer", PinnedInferMesmer(**kwargs))):
                runs[name] = engine_run(store, tmp / name, segmenter, config, client)
        new, old = labels_of(tmp / "three_stage"), labels_of(tmp / "pinned_infer")

        import torch

        torch.set_num_threads(args.threads)  # the worker's threads: the same float rounding
        image = open_patch_store(store).read_patch(0)
        start = time.perf_counter()
        one_piece = MesmerSegmenter(**kwargs).predict(image[np.newaxis], 0.5)[0]
        one_piece_s = time.perf_counter() - start

    agreement = {name: labelling_agreement(canonical_labels(one_piece[..., c]), new[c])
                 for c, name in enumerate(("cell", "nucleus"))}
    identical = all(np.array_equal(canonical_labels(one_piece[..., c]), new[c]) for c in (0, 1))
    result = {
        "size": args.size, "threads": args.threads, "device": args.device, **runs,
        "one_piece_s": one_piece_s,
        "pinned_other_s_per_mp": runs["three_stage"]["pinned_other_s_per_mp"],
        "pinned_network_s_per_mp": runs["three_stage"]["pinned_network_s_per_mp"],
        "pinned_other_ratio_new_over_old": (runs["three_stage"]["pinned_other_s_per_mp"]
                                            / runs["pinned_infer"]["pinned_other_s_per_mp"]),
        "wall_ratio_new_over_old": runs["three_stage"]["wall_s"] / runs["pinned_infer"]["wall_s"],
        "labels_identical_to_pinned_infer": all(np.array_equal(a, b) for a, b in zip(new, old)),
        "labels_identical": identical,
        "agreement_with_one_piece": agreement,
    }
    emit(result)


if __name__ == "__main__":
    main()
