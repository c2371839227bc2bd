"""Deep-watershed post-processing on one core: codexdask.postprocess against deepcell-toolbox.

Runs in the reference environment (deepcell-toolbox). For each case, both implementations run
in their own fresh single-threaded subprocess (OMP / BLAS / numba threads = 1), which:

- imports both packages and warms up on a 64² map (numba loads or compiles its kernels);
- timing worker: runs the case ``--repeats`` times and reports the median wall and CPU seconds
  per run, the CPU seconds per stage (smoothing, h_maxima, labelling, watershed,
  small_objects, holes, relabel) and a hash of the labels;
- memory worker (another fresh process, glibc's mmap threshold pinned at 128 KiB so freed
  arrays leave the RSS at once): resets the kernel's peak-RSS counter, runs the case once and
  reports the peak RSS above the RSS before the run (``peak_mb``) and the process's total peak
  (``rss_mb``).

deepcell's stages are timed on its own steps (scipy / scikit-image / deepcell-toolbox calls in
deepcell's order), checked to give ``deep_watershed``'s labels on cases up to 1024². The labels
of both sides must hash equal (``identical``).

Cases: Mesmer-like maps (``tests/helpers/mesmer_like.py``: Voronoi cells, ~1 per 400 px²,
inner-distance and blurred interior maps with noise) at each ``--sizes`` side, whole-cell and
nuclear with Mesmer's keywords; with TensorFlow, deepcell and ``../shared/real_data``, also the
maps of a random-weight Mesmer (``tests/conftest.py``) on the TissueNet 512² and MIBI 1024²
images (``--no-real`` skips them).

``--scales 1 3 --noise 0.08`` adds maps of cells three times larger (nine times fewer) with
noisier distance maps: many regional maxima and wide plateaus.

Usage: ``python bench/postprocess.py [--sizes 512 1024 2048 4096] [--repeats 3] [--no-real]
[--scales 1 3] [--noise 0.02]``.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import emit  # noqa: E402
from helpers.mesmer_like import (  # noqa: E402
    MESMER_NUCLEAR,
    MESMER_WHOLE_CELL,
    mesmer_like_maps,
)

REAL_DATA = ROOT.parent / "shared" / "real_data"
KWARGS = {"whole-cell": MESMER_WHOLE_CELL, "nuclear": MESMER_NUCLEAR}
STAGES = ("smoothing", "h_maxima", "labelling", "watershed", "small_objects", "holes", "relabel")


# ------------------------------------------------------------------------------ worker side

def _deepcell_steps(maps: list[np.ndarray], timings: dict[str, float], **kwargs: Any
                    ) -> np.ndarray:
    """deepcell-toolbox 0.12's deep_watershed for rank-4 maps, stage by stage, same calls."""
    from deepcell_toolbox.utils import fill_holes
    from scipy import ndimage as nd
    from skimage.measure import label
    from skimage.morphology import disk, h_maxima, remove_small_objects
    from skimage.segmentation import relabel_sequential, watershed

    clock = time.thread_time
    results = []
    for maxima, interior in zip(maps[0], maps[-1]):
        start = clock()
        maxima = nd.gaussian_filter(maxima[..., 0], kwargs["maxima_smooth"])
        interior = nd.gaussian_filter(interior[..., 0], kwargs["interior_smooth"])
        marks = [clock()]
        markers = h_maxima(image=maxima, h=kwargs["maxima_threshold"],
                           footprint=disk(kwargs["radius"]))
        marks.append(clock())
        markers = label(markers)
        marks.append(clock())
        labels = watershed(-1 * interior, markers, mask=interior > kwargs["interior_threshold"],
                           watershed_line=0)
        marks.append(clock())
        labels = remove_small_objects(labels, min_size=kwargs["small_objects_threshold"])
        marks.append(clock())
        labels = fill_holes(labels, size=kwargs["fill_holes_threshold"])
        marks.append(clock())
        labels, _, _ = relabel_sequential(labels)
        marks.append(clock())
        for stage, begin, end in zip(STAGES, [start] + marks[:-1], marks):
            timings[stage] = timings.get(stage, 0.0) + end - begin
        results.append(labels)
    return np.expand_dims(np.stack(results, axis=0), axis=-1)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _load_maps(case: dict[str, Any]) -> list[np.ndarray]:
    if case["source"] == "synthetic":
        return list(mesmer_like_maps(case["size"], case["size"], seed=case["seed"],
                                     compartment=case["compartment"],
                                     scale=case.get("scale", 1.0),
                                     noise=case.get("noise", 0.02)))
    with np.load(case["path"]) as data:
        return [data["maxima"], data["interior"]]


def _worker(impl: str, case: dict[str, Any], repeats: int, memory: bool) -> dict[str, Any]:
    import warnings

    from deepcell_toolbox.deep_watershed import deep_watershed as deepcell_deep_watershed

    from codexdask.postprocess import deep_watershed

    warnings.simplefilter("ignore")
    kwargs = KWARGS[case["compartment"]]
    tiny = list(mesmer_like_maps(64, 64, seed=9, compartment=case["compartment"]))
    if impl == "codexdask":
        def run(maps: list[np.ndarray], timings: dict[str, float]) -> np.ndarray:
            return deep_watershed(maps, timings=timings, **kwargs)
    else:
        def run(maps: list[np.ndarray], timings: dict[str, float]) -> np.ndarray:
            return _deepcell_steps(maps, timings, **kwargs)
    start = time.perf_counter()
    run(tiny, {})
    warm_up = time.perf_counter() - start

    maps = _load_maps(case)
    if memory:
        reset = _peak_rss_reset()
        rss_before = _status_kb("VmRSS")
        run(maps, {})
        peak_kb = _status_kb("VmHWM")
        return {"peak_mb": (peak_kb - rss_before) / 1024 if reset else None,
                "rss_mb": peak_kb / 1024}
    walls, cpus, stages = [], [], []
    for _ in range(repeats):
        timings: dict[str, float] = {}
        wall, cpu = time.perf_counter(), time.process_time()
        labels = run(maps, timings)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        stages.append(timings)
    digest = hashlib.sha1(labels.dtype.str.encode() + labels.tobytes()).hexdigest()
    checked = None
    if impl == "deepcell" and case["size"] <= 1024:
        checked = bool(np.array_equal(deepcell_deep_watershed(maps, **kwargs), labels))
    return {
        "impl": impl, "warm_up_s": warm_up, "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus), "walls": walls,
        "stages_cpu_s": {stage: statistics.median(t.get(stage, 0.0) for t in stages)
                         for stage in STAGES},
        "labels_sha1": digest,
        "objects": int(labels.max()), "steps_equal_deep_watershed": checked,
    }


# ------------------------------------------------------------------------------ parent side

def _real_cases(tmp: Path) -> list[dict[str, Any]]:
    """Random-weight Mesmer maps of the TissueNet 512² and MIBI 1024² images, saved to ``tmp``."""
    try:
        import deepcell  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        return []
    if not REAL_DATA.is_dir():
        return []
    from conftest import build_random_mesmer

    from codexdask.segmenters.mesmer import MesmerSegmenter

    model_dir = tmp / "MultiplexSegmentation"
    build_random_mesmer().save(str(model_dir), include_optimizer=False)
    segmenter = MesmerSegmenter(model_path=model_dir, tiles_per_call=4)
    cases = []
    for name, bundle in (("tissuenet", "tissuenet_cellsam_sample.npz"),
                         ("mibi", "mibi_tnbc_ark_fov8.npz")):
        with np.load(REAL_DATA / bundle) as data:
            image = data["image"]
        maps = segmenter.infer(image[None], 0.5)
        for compartment, prefix in (("whole-cell", "whole_cell"), ("nuclear", "nuclear")):
            path = tmp / f"{name}-{compartment}.npz"
            np.savez(path, maxima=maps[f"{prefix}_inner_distance"],
                     interior=maps[f"{prefix}_interior"])
            cases.append({"source": f"mesmer-random:{name}", "size": int(image.shape[0]),
                          "compartment": compartment, "path": str(path)})
    return cases


def _run_worker(impl: str, case: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Timing worker, then memory worker, each in a fresh process; their merged results."""
    result: dict[str, Any] = {}
    for memory in (False, True):
        command = [sys.executable, __file__, "--worker", impl, "--case", json.dumps(case),
                   "--repeats", str(repeats)] + (["--memory"] if memory else [])
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if memory else None
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{impl} worker failed on {case}:\n{done.stderr[-3000:]}")
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-real", action="store_true", help="skip the random-Mesmer maps")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="objects' radii times these (density divided by the square)")
    parser.add_argument("--noise", type=float, default=0.02, help="noise sd of the maps")
    parser.add_argument("--worker", choices=["codexdask", "deepcell"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, json.loads(args.case), args.repeats, args.memory)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        cases = [{"source": "synthetic", "size": size, "compartment": compartment, "seed": 0,
                  "scale": scale, "noise": args.noise}
                 for size in args.sizes for scale in args.scales
                 for compartment in ("whole-cell", "nuclear")]
        if not args.no_real:
            cases += _real_cases(Path(tmp))
        rows = []
        for case in cases:
            ours = _run_worker("codexdask", case, args.repeats)
            theirs = _run_worker("deepcell", case, args.repeats)
            row = {**{k: v for k, v in case.items() if k != "path"},
                   "identical": ours["labels_sha1"] == theirs["labels_sha1"],
                   "objects": ours["objects"],
                   "speedup_wall": theirs["wall_s"] / ours["wall_s"],
                   "speedup_cpu": theirs["cpu_s"] / ours["cpu_s"],
                   "codexdask": ours, "deepcell": theirs}
            rows.append(row)
            _print_row(row)
    emit({"benchmark": "postprocess", "threads": 1, "repeats": args.repeats, "cases": rows})


def _print_row(row: dict[str, Any]) -> None:
    ours, theirs = row["codexdask"], row["deepcell"]
    print(f"{row['source']:>24} {row['size']:>5}² {row['compartment']:>10}: "
          f"deepcell {theirs['wall_s']:7.3f} s (cpu {theirs['cpu_s']:7.3f}), "
          f"codexdask {ours['wall_s']:6.3f} s (cpu {ours['cpu_s']:6.3f}) -> "
          f"x{row['speedup_wall']:.1f} wall, x{row['speedup_cpu']:.1f} cpu; "
          f"peak MB {theirs['peak_mb']:.0f} vs {ours['peak_mb']:.0f}; "
          f"identical={row['identical']}", flush=True)
    for name, side in (("deepcell", theirs), ("codexdask", ours)):
        stages = " ".join(f"{k}={v:.3f}" for k, v in side["stages_cpu_s"].items())
        print(f"{'':>26}{name:>10} stages (cpu s): {stages}", flush=True)


if __name__ == "__main__":
    main()
