"""Speed and memory of ``codexdask.repair.masks.repair_masks`` on the reference's stress case.

Cases (random concentric cell/nucleus discs painted onto empty pixels only, gapped labels, many
ties: ``codexdask.synthetic.random_disc_pairs``, seed 42): 1k centres on 1000², 10k on 3000²,
100k on 10000², each with ``tie_break="lowest-label"`` and ``"aegle-cpu"``. Every (case, mode)
runs in a fresh single-threaded subprocess (``OMP_NUM_THREADS=1`` etc.; the kernel is
single-threaded numpy anyway):

- ``seconds_cold``: the first call in the process (pays for fresh memory pages);
- ``seconds`` / ``cpu_seconds``: median wall and user+sys CPU time of the next ``--repeats`` calls;
  ``cells_per_s`` = input cells / ``seconds``. On a shared, loaded machine wall time can exceed CPU
  time several-fold; CPU time is the steadier number;
- ``peak_extra_bytes_per_pixel``: peak of the memory traced by ``tracemalloc`` (numpy buffers and
  Python objects) during one call, outputs included, inputs excluded, divided by H·W;
- ``rss_extra_bytes_per_pixel``: ``ru_maxrss`` after the cold call minus RSS before it
  (a cross-check).

On the smallest case the slow per-cell reference of the test suite
(``tests/helpers/slow_repair.py``) runs on the same input; the JSON has its time, the speed-up
ratio, and whether both outputs are identical.

    python bench/repair.py --quick     # smallest case only
    python bench/repair.py             # all three cases
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from _common import emit  # noqa: E402

from codexdask.repair.masks import repair_masks  # noqa: E402
from codexdask.synthetic import random_disc_pairs  # noqa: E402

CASES = ((1_000, 1_000), (10_000, 3_000), (100_000, 10_000))
MODES = ("lowest-label", "aegle-cpu")
SEED = 42
TARGETS = {
    "lowest_label_cells_per_s_10k": 20_000,
    "aegle_cpu_cells_per_s_10k": 5_000,
    "seconds_100k_max": 30.0,
    "peak_extra_bytes_per_pixel_max": 64.0,
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(cell: np.ndarray, nucleus: np.ndarray, mode: str) -> tuple[float, float, dict[str, Any]]:
    cpu0, t0 = _cpu(), time.perf_counter()
    result = repair_masks(cell, nucleus, tie_break=mode)
    return time.perf_counter() - t0, _cpu() - cpu0, result


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            if not np.array_equal(value, b[key]):
                return False
        elif isinstance(value, float) and math.isnan(value):
            if not math.isnan(b[key]):
                return False
        elif value != b[key]:
            return False
    return True


def run_one(n_centres: int, size: int, mode: str, repeats: int, slow: bool) -> dict[str, Any]:
    """Measure one (case, mode) in this process; returns a JSON-able dict."""
    t0 = time.perf_counter()
    cell, nucleus = random_disc_pairs(n_centres, (size, size), seed=SEED)
    gen_s = time.perf_counter() - t0
    pixels = cell.size

    rss_before = psutil.Process().memory_info().rss
    cold_s, cold_cpu, result = _timed(cell, nucleus, mode)
    rss_extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    counts = {k: result[k] for k in ("n_cells", "n_nuclei", "n_matched", "n_repaired")}
    del result

    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu, result = _timed(cell, nucleus, mode)
        walls.append(wall)
        cpus.append(cpu)
        del result

    tracemalloc.start()
    result = repair_masks(cell, nucleus, tie_break=mode)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    seconds = statistics.median(walls)
    out: dict[str, Any] = {
        "n_centres": n_centres,
        "shape": [size, size],
        "mode": mode,
        **counts,
        "generate_seconds": round(gen_s, 3),
        "seconds_cold": round(cold_s, 4),
        "cpu_seconds_cold": round(cold_cpu, 4),
        "seconds": round(seconds, 4),
        "seconds_min": round(min(walls), 4),
        "cpu_seconds": round(statistics.median(cpus), 4),
        "cells_per_s": round(counts["n_cells"] / seconds, 1),
        "cells_per_cpu_s": round(counts["n_cells"] / statistics.median(cpus), 1),
        "peak_extra_bytes_per_pixel": round(peak / pixels, 2),
        "rss_extra_bytes_per_pixel": round(rss_extra / pixels, 2),
    }
    if slow:
        from helpers.slow_repair import slow_repair_masks

        t0 = time.perf_counter()
        reference = slow_repair_masks(cell, nucleus, tie_break=mode)
        slow_s = time.perf_counter() - t0
        out["slow_reference_seconds"] = round(slow_s, 3)
        out["speedup_vs_slow_reference"] = round(slow_s / seconds, 1)
        out["identical_to_slow_reference"] = _same(result, reference)
    return out


def _child(n_centres: int, size: int, mode: str, repeats: int, slow: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(n_centres), str(size), mode, "--repeats"]
    cmd += [str(repeats)] + (["--slow"] if slow else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest case")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the cold one")
    parser.add_argument("--one", nargs=3, metavar=("N", "SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        n, size, mode = int(args.one[0]), int(args.one[1]), args.one[2]
        emit(run_one(n, size, mode, args.repeats, args.slow))
        return

    cases = CASES[:1] if args.quick else CASES
    runs = []
    for i, (n, size) in enumerate(cases):
        for mode in MODES:
            r = _child(n, size, mode, args.repeats, slow=i == 0)
            runs.append(r)
            print(
                f"{n:>7} centres {size}²  {mode:<12}  cells {r['n_cells']:>6}  "
                f"cold {r['seconds_cold']:.3f}s  median {r['seconds']:.3f}s "
                f"(cpu {r['cpu_seconds']:.3f}s)  {r['cells_per_s']:>9.0f} cells/s  "
                f"peak {r['peak_extra_bytes_per_pixel']:.1f} B/px"
                + (
                    f"  slow ref {r['slow_reference_seconds']:.1f}s "
                    f"(x{r['speedup_vs_slow_reference']}, identical "
                    f"{r['identical_to_slow_reference']})"
                    if "slow_reference_seconds" in r
                    else ""
                ),
                flush=True,
            )

    def find(n: int, mode: str) -> dict[str, Any] | None:
        return next((r for r in runs if r["n_centres"] == n and r["mode"] == mode), None)

    checks: dict[str, Any] = {
        "peak_extra_bytes_per_pixel": {
            "value": max(r["peak_extra_bytes_per_pixel"] for r in runs),
            "target_max": TARGETS["peak_extra_bytes_per_pixel_max"],
        }
    }
    for mode, key in (("lowest-label", "lowest_label"), ("aegle-cpu", "aegle_cpu")):
        r10 = find(10_000, mode)
        if r10:
            checks[f"{key}_cells_per_s_10k"] = {
                "value": r10["cells_per_s"],
                "target_min": TARGETS[f"{key}_cells_per_s_10k"],
            }
        r100 = find(100_000, mode)
        if r100:
            checks[f"{key}_seconds_100k"] = {
                "value": r100["seconds_cold"],
                "target_max": TARGETS["seconds_100k_max"],
            }
    for check in checks.values():
        if "target_min" in check:
            check["met"] = check["value"] >= check["target_min"]
        else:
            check["met"] = check["value"] <= check["target_max"]
    emit(
        {
            "benchmark": "repair",
            "threads": 1,
            "repeats": args.repeats,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "runs": runs,
            "targets": checks,
            "reference_cpu_cells_per_s_quoted": "71-92 (original CPU path, docs/architecture.md)",
        }
    )


if __name__ == "__main__":
    main()
