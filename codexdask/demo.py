"""``codexdask demo``: the main job on the embedded default, end to end, on a synthetic slide.

synthetic CODEX-like slide (OME-TIFF) → patch store → watershed segmentation on a local Dask
cluster → every output, a score of the result against the slide's ground truth, and every cell
quantified on the slide's channels (on the same cluster).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tifffile

from codexdask.atomic import atomic_path
from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine import cluster
from codexdask.engine.runner import run
from codexdask.layout import DEMO_RUN_DIR, DEMO_SLIDE, DEMO_STORE, DEMO_SUMMARY, RESULT_STORE
from codexdask.outputs import open_result_store
from codexdask.quantification import quantify
from codexdask.segmenters import get_segmenter
from codexdask.store.patch_store import open_patch_store, patch_slide
from codexdask.synthetic import synthetic_slide
from codexdask.synthetic.scores import segmentation_scores


def run_demo(
    out: Path,
    *,
    size: int = 1536,
    patch_size: int = 512,
    seed: int = 0,
    config: SegmentConfig | None = None,
) -> str:
    """Run the demo into ``out`` and return a short text report (also saved as JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    slide = synthetic_slide(size, size, seed=seed)
    slide_path = out / DEMO_SLIDE
    with atomic_path(slide_path) as tmp:
        tifffile.imwrite(
            tmp, slide.image, ome=True, photometric="minisblack", tile=(256, 256),
            metadata={"axes": "CYX", "Channel": {"Name": list(slide.channel_names)},
                      "PhysicalSizeX": slide.image_mpp, "PhysicalSizeY": slide.image_mpp},
        )
    store = patch_slide(
        slide_path,
        out / DEMO_STORE,
        PatchConfig(nucleus=slide.nucleus_channel, wholecell=slide.membrane_channels,
                    patch_size=(patch_size, patch_size)),
        overwrite=True,
    )
    settings = dataclasses.replace(config or SegmentConfig(), overwrite=True, resume=False)
    segmenter = get_segmenter(settings.backend, **settings.segmenter_options())
    with cluster.connect(settings, None, segmenter) as client:
        result = run(store, out / DEMO_RUN_DIR, settings, client=client, segmenter=segmenter,
                     progress=True)
        quantified = quantify(out / DEMO_RUN_DIR, client=client, overwrite=True, progress=True)

    scores = score_against_truth(
        store, out / DEMO_RUN_DIR, slide.cell_labels, slide.nucleus_labels
    )
    with atomic_path(out / DEMO_SUMMARY) as tmp:
        tmp.write_text(json.dumps(scores, indent=2))
    return "\n".join([
        result.summary(),
        f"F1 at IoU 0.5 against the synthetic ground truth (mean over informative patches): "
        f"cells {scores['cell_f1']:.3f}, nuclei {scores['nucleus_f1']:.3f}",
        quantified.summary(),
        f"outputs in {out / DEMO_RUN_DIR}",
    ])


def score_against_truth(
    store: Path, result_dir: Path, cell_truth: np.ndarray, nucleus_truth: np.ndarray
) -> dict[str, float]:
    """Mean F1 at IoU 0.5 of the segmented cells and nuclei of each informative patch."""
    patch_store = open_patch_store(store)
    group = open_result_store(result_dir / RESULT_STORE)
    cell_f1: list[float] = []
    nucleus_f1: list[float] = []
    for index in patch_store.informative_indices:
        row = patch_store.metadata.iloc[index]
        y, x = int(row["y_start"]), int(row["x_start"])
        h, w = patch_store.patch_shape
        window = (slice(y, y + h), slice(x, x + w))
        for truth, name, scores in ((cell_truth, "cell", cell_f1),
                                    (nucleus_truth, "nucleus", nucleus_f1)):
            expected = np.zeros((h, w), np.uint32)
            crop = truth[window]
            expected[: crop.shape[0], : crop.shape[1]] = crop
            result = segmentation_scores(expected, group[name][index])
            scores.append(result["by_threshold"]["0.50"]["f1"])
    return {
        "n_informative": int(len(patch_store.informative_indices)),
        "cell_f1": float(np.mean(cell_f1)) if cell_f1 else float("nan"),
        "nucleus_f1": float(np.mean(nucleus_f1)) if nucleus_f1 else float("nan"),
    }
