"""Seconds per patch of the two segmenters, split into infer and postprocess; peak RSS; the plan.

For each square patch size (256², 512², 1024²; ``--quick``: 256² only) and a small batch of
synthetic tissue patches:

- Mesmer (a random-weight Mesmer-architecture model unless ``--model-path``; CPU unless a GPU is
  visible to TensorFlow): ``infer`` and ``postprocess`` seconds per patch, against deepcell's own
  ``Mesmer.predict(batch_size=4)`` on the same batch as the baseline (ratio, and whether the
  labels are identical at the same tiles per call);
- watershed: ``infer`` and ``postprocess`` seconds per patch;
- the batch planner's choice on this machine and for an 80 GB H100 (79 GiB free).

``peak_rss_gib`` is the process's peak RSS sampled during each segmenter's infer + postprocess
(TensorFlow and the model stay resident, so Mesmer's includes ~1 GiB of runtime and weights).
The last line of stdout is one JSON object.

Usage: ``python bench/segmenters.py [--quick] [--batch 2] [--tiles-per-call 4] [--no-mesmer]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import emit, peak_rss  # noqa: E402

from codexdask.segmenters import get_segmenter  # noqa: E402
from codexdask.segmenters.planner import plan_batches  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def stages(segmenter: Any, batch: np.ndarray) -> tuple[Any, Any, float, float, float]:
    """Maps, labels, infer seconds, postprocess seconds, peak RSS (GiB) of both stages."""
    with peak_rss() as peak:
        maps, t_infer = timed(segmenter.infer, batch, 0.5)
        labels, t_post = timed(segmenter.postprocess, maps)
    return maps, labels, t_infer, t_post, peak["peak"] / 2**30


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def bench_size(size: int, args: argparse.Namespace, model_dir: str | None) -> dict[str, Any]:
    from conftest import tissue_batch

    batch = tissue_batch(args.batch, size, size, seed=size)
    out: dict[str, Any] = {"patches": args.batch}

    watershed = get_segmenter("watershed")
    maps, labels, t_infer, t_post, rss = stages(watershed, batch)
    out["watershed"] = {
        "infer_s_per_patch": t_infer / args.batch, "postprocess_s_per_patch": t_post / args.batch,
        "cells_per_patch": float(np.mean([labels[i, ..., 0].max() for i in range(args.batch)])),
        "plan": plan_batches(watershed, (size, size), 0.5).as_dict(),
        "peak_rss_gib": rss,
    }
    if model_dir is None:
        return out

    from deepcell.applications import Mesmer

    from codexdask.segmenters.mesmer import load_mesmer_model

    mesmer = get_segmenter("mesmer", model_path=model_dir, tiles_per_call=args.tiles_per_call)
    mesmer.infer(batch[:1, :64, :64], 0.5)  # warm-up: model load and tracing
    maps, labels, t_infer, t_post, rss = stages(mesmer, batch)
    app = Mesmer(load_mesmer_model(model_dir))
    ref, t_ref = timed(lambda: app.predict(batch, image_mpp=0.5, compartment="both",
                                           batch_size=args.tiles_per_call))
    out["mesmer"] = {
        "tiles_per_patch": maps["n_tiles"] / args.batch,
        "tiles_per_call": maps["tiles_per_call"],
        "infer_s_per_patch": t_infer / args.batch,
        "postprocess_s_per_patch": t_post / args.batch,
        "infer_s_per_tile": t_infer / maps["n_tiles"],
        "deepcell_predict_s_per_patch": t_ref / args.batch,
        "ratio_vs_deepcell": (t_infer + t_post) / t_ref,
        "labels_equal_deepcell": bool(np.array_equal(labels, ref)),
        "cells_per_patch": float(np.mean([labels[i, ..., 0].max() for i in range(args.batch)])),
        "peak_rss_gib": rss,
        "plan_here": plan_batches(mesmer, (size, size), 0.5).as_dict(),
        "plan_h100": plan_batches(mesmer, (size, size), 0.5, device_free_bytes=79 * 2**30,
                                  host_free_bytes=120 * 2**30).as_dict(),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256² only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, default=2, help="patches per batch")
    parser.add_argument("--tiles-per-call", type=int, default=4)
    parser.add_argument("--model-path", default=None, help="Mesmer SavedModel (default: random)")
    parser.add_argument("--no-mesmer", action="store_true")
    args = parser.parse_args()
    sizes = [256] if args.quick else args.sizes

    model_dir = None
    if not args.no_mesmer:
        model_dir = args.model_path
        if model_dir is None:
            from conftest import build_random_mesmer

            model_dir = str(Path(tempfile.mkdtemp(prefix="codexdask-bench-")) / "mesmer")
            build_random_mesmer().save(model_dir, include_optimizer=False)
    results = {}
    for size in sizes:
        results[str(size)] = bench_size(size, args, model_dir)
        print(f"{size}²: {json.dumps(results[str(size)], default=str)}", flush=True)
    summary = {
        "bench": "segmenters",
        "device": _device(model_dir),
        "batch": args.batch,
        "tiles_per_call": args.tiles_per_call,
        "max_rss_gib": peak_rss_gib(),
        "results": results,
    }
    emit(summary)


def _device(model_dir: str | None) -> str:
    if model_dir is None:
        return "cpu (mesmer skipped)"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return ", ".join(g.name for g in gpus) if gpus else "cpu"


if __name__ == "__main__":
    main()
