"""Report how the watershed segmenter does on real images (a report, not a gate).

Data: ``../shared/real_data`` beside the repository (see its SOURCES.md). Cases:

- ``dsb2018``: DSB 2018 fluorescence nuclei (512², nucleus only) against the manual nucleus
  ground truth. The whole-cell channel is all zeros (there is no membrane stain); only nuclei are
  scored. The pixel size is unknown; 0.25 µm/px makes the median ground-truth nucleus (24 px)
  6 µm, the segmenter's default nucleus diameter.
- ``mibi``: MIBI-TOF TNBC field (1024², ark example fov8): watershed cells against the Mesmer
  whole-cell mask stored with it. 0.39 µm/px (Keren et al. 2018: 800 µm fields of 2048 px; this
  1024² field is a crop at that resolution); nuclei there are about 10 µm across, so the
  segmenter gets ``nucleus_diameter_um=10``.
- ``tissuenet``: one TissueNet image (512², 0.5 µm/px, TissueNet's resolution) against the CellSAM
  prediction stored with it.
- ``imc``: three 100² IMC pancreas crops (1 µm/px; nucleus H3, whole-cell = max of CD99, PIN,
  CD8a, CDH as bundled) against CellProfiler cell masks.

Scores: F1 and mean IoU of matched pairs at IoU 0.5, and the DSB 2018 average precision over
IoU 0.50:0.95 (``codexdask.synthetic.scores``). Agreement with Mesmer/CellSAM/CellProfiler is
agreement with another method, not accuracy. Baseline in the same run: the naive classical pipeline
(Otsu threshold of the smoothed nucleus channel, connected components, cells = nuclei expanded by
the same ``max_expansion_um``); ``f1_ratio_vs_baseline`` = watershed F1 / baseline F1. A
1024² synthetic slide with exact ground truth is scored too, for context. Prints one JSON object
as the last line.

Usage: ``python bench/real_data.py [--quick] [--data DIR]`` (``--quick``: DSB and TissueNet only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import expand_labels

from codexdask.segmenters.watershed import WatershedSegmenter
from codexdask.synthetic import synthetic_slide
from codexdask.synthetic.scores import average_precision, segmentation_scores

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "real_data"


def score(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """F1, precision, recall and mean IoU at IoU 0.5, plus the DSB average precision."""
    at_half = segmentation_scores(truth, pred, (0.5,))["by_threshold"]["0.50"]
    return {
        "n_ref": at_half["n_true"],
        "n_pred": at_half["n_pred"],
        "f1_at_0.5": round(at_half["f1"], 4),
        "precision_at_0.5": round(at_half["precision"], 4),
        "recall_at_0.5": round(at_half["recall"], 4),
        "mean_iou_matched": round(at_half["mean_iou"], 4),
        "ap_0.5_0.95": round(average_precision(truth, pred), 4),
    }


def run_case(
    image: np.ndarray, image_mpp: float, **options: Any
) -> tuple[np.ndarray, np.ndarray, float]:
    """Segment one ``(H, W, 2)`` image; returns whole-cell and nucleus labels and seconds."""
    segmenter = WatershedSegmenter(**options)
    start = time.perf_counter()
    labels = segmenter.predict(image[None], image_mpp)[0]
    return labels[..., 0], labels[..., 1], time.perf_counter() - start


def baseline(image: np.ndarray, image_mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Naive pipeline: Otsu + connected components for nuclei, fixed expansion for cells."""
    defaults = WatershedSegmenter()
    smooth = ndi.gaussian_filter(
        image[..., 0].astype(np.float64), defaults.smoothing_um / image_mpp
    )
    nuclei, _ = ndi.label(smooth > threshold_otsu(smooth))
    area = np.bincount(nuclei.ravel())
    nuclei[area[nuclei] < defaults.min_nucleus_area_um2 / image_mpp**2] = 0
    cells = expand_labels(nuclei, distance=defaults.max_expansion_um / image_mpp)
    return cells, nuclei


def evaluate(
    case: dict[str, Any],
    truth: np.ndarray,
    pred: np.ndarray,
    naive: np.ndarray,
) -> dict[str, Any]:
    """``case`` updated with the scores of ``pred`` and the baseline ``naive``."""
    case.update(score(truth, pred))
    naive_f1 = score(truth, naive)["f1_at_0.5"]
    case["baseline_f1_at_0.5"] = naive_f1
    case["f1_ratio_vs_baseline"] = round(case["f1_at_0.5"] / naive_f1, 3) if naive_f1 else None
    return case


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="DSB and TissueNet only")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real_data folder")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        result: dict[str, Any] = {"skipped": f"no real data folder at {args.data}"}
        print(f"skipping: {result['skipped']}")
        print(json.dumps(result))
        return result

    result = {"segmenter": "watershed", "cases": {}}
    cases = result["cases"]

    slide = synthetic_slide(1024, 1024, seed=0)
    image = slide.two_channel()
    cells, nuclei, seconds = run_case(image, slide.image_mpp)
    naive_cells, naive_nuclei = baseline(image, slide.image_mpp)
    case = {"image_mpp": slide.image_mpp, "seconds": round(seconds, 3)}
    cases["synthetic_nuclei_vs_truth"] = evaluate(
        dict(case), slide.nucleus_labels, nuclei, naive_nuclei
    )
    cases["synthetic_cells_vs_truth"] = evaluate(dict(case), slide.cell_labels, cells, naive_cells)

    dsb = np.load(args.data / "dsb2018_stardist.npz")
    image = np.stack([dsb["nucleus"], np.zeros_like(dsb["nucleus"])], axis=-1)
    _, nuclei, seconds = run_case(image, 0.25)
    cases["dsb2018_nuclei_vs_manual"] = evaluate(
        {"image_mpp": 0.25, "seconds": round(seconds, 3)},
        dsb["nucleus_gt"],
        nuclei,
        baseline(image, 0.25)[1],
    )

    tissuenet = np.load(args.data / "tissuenet_cellsam_sample.npz")
    cells, _, seconds = run_case(tissuenet["image"], 0.5)
    cases["tissuenet_cells_vs_cellsam"] = evaluate(
        {"image_mpp": 0.5, "seconds": round(seconds, 3)},
        tissuenet["cell_ref_cellsam"],
        cells,
        baseline(tissuenet["image"], 0.5)[0],
    )

    if not args.quick:
        mibi = np.load(args.data / "mibi_tnbc_ark_fov8.npz")
        cells, _, seconds = run_case(mibi["image"], 0.39, nucleus_diameter_um=10.0)
        cases["mibi_cells_vs_mesmer"] = evaluate(
            {"image_mpp": 0.39, "nucleus_diameter_um": 10.0, "seconds": round(seconds, 3)},
            mibi["cell_ref_mesmer"],
            cells,
            baseline(mibi["image"], 0.39)[0],
        )
        imc = np.load(args.data / "imc_pancreas_cytomapper.npz")
        for crop in ("E34", "G01", "J02"):
            image = imc[f"{crop}_image"]
            cells, _, seconds = run_case(image, 1.0)
            cases[f"imc_{crop}_cells_vs_cellprofiler"] = evaluate(
                {"image_mpp": 1.0, "seconds": round(seconds, 3)},
                imc[f"{crop}_cell_ref_cellprofiler"],
                cells,
                baseline(image, 1.0)[0],
            )

    for name, case in cases.items():
        print(
            f"{name:36s} F1@0.5 {case['f1_at_0.5']:.3f} (baseline {case['baseline_f1_at_0.5']:.3f})"
            f"  mean IoU {case['mean_iou_matched']:.3f}  AP {case['ap_0.5_0.95']:.3f}"
            f"  ({case['n_pred']} vs {case['n_ref']} objects)"
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
