"""A slow, obviously correct cell–nucleus repair, written straight from the specification.

It loops over cells in ascending label order and compares Python sets of pixel coordinates, the
way docs/semantics.md states the repair rule (the original CPU path). It shares no code with
:mod:`codexdask.repair.masks` and serves as the oracle of the property tests and of
``bench/repair.py``.
Use it on small images only: it is quadratic-ish in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.segmentation import find_boundaries

Pixel = tuple[int, int]


def _labelled_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner 4-connected boundary of `mask`, labelled, as uint32 (the spec's definition)."""
    edge = find_boundaries(mask, mode="inner", connectivity=1)
    return np.where(edge, mask, 0).astype(np.uint32)


def _pixels_by_label(mask: np.ndarray) -> dict[int, list[Pixel]]:
    """Pixels of every non-zero label, each list in row-major order."""
    out: dict[int, list[Pixel]] = {}
    height, width = mask.shape
    for r in range(height):
        for c in range(width):
            v = int(mask[r, c])
            if v:
                out.setdefault(v, []).append((r, c))
    return out


def _distinct(mask: np.ndarray) -> int:
    """Number of distinct values, 0 included when present (the reference's ``U``)."""
    return len(np.unique(mask))


def slow_repair_masks(
    cell: np.ndarray, nucleus: np.ndarray, tie_break: str = "lowest-label"
) -> dict[str, Any]:
    """Reference repair; same keys and meaning as :func:`codexdask.repair.masks.repair_masks`.

    ``tie_break="aegle-cpu"`` iterates ``set(nucleus values under the cell, row-major)`` exactly
    as the reference CPU path does; ``"lowest-label"`` iterates candidates in ascending order.
    In both, a candidate replaces the best so far only when its mismatch is strictly smaller.
    """
    cell = np.asarray(cell).astype(np.int64)
    nucleus = np.asarray(nucleus).astype(np.int64)
    boundary = find_boundaries(cell, mode="inner", connectivity=1)
    cells = _pixels_by_label(cell)
    nuclei = {n: set(px) for n, px in _pixels_by_label(nucleus).items()}
    interior = {c: {p for p in px if not boundary[p]} for c, px in cells.items()}

    claimed: set[int] = set()
    matches: list[tuple[int, int]] = []
    n_repaired = 0
    for c in sorted(cells):
        under = [int(nucleus[p]) for p in cells[c]]
        if tie_break == "aegle-cpu":
            candidates = [v for v in set(under) if v != 0]
        else:
            candidates = sorted(set(under) - {0})
        best, best_m = None, 1.0
        for n in candidates:
            if n in claimed:
                continue
            m = len(nuclei[n] - interior[c]) / len(nuclei[n])
            if m < best_m:
                best, best_m = n, m
        if best is not None:
            claimed.add(best)
            matches.append((c, best))
            n_repaired += 0.0 < best_m

    cell_matched = np.zeros(cell.shape, dtype=np.uint32)
    nuc_matched = np.zeros(cell.shape, dtype=np.uint32)
    for k, (c, n) in enumerate(matches, start=1):
        for p in cells[c]:
            cell_matched[p] = k
        for p in nuclei[n] & interior[c]:
            nuc_matched[p] = k
    cytoplasm = np.where(nuc_matched == 0, cell_matched, 0).astype(np.uint32)

    n_cells, n_nuclei, n_matched = len(cells), len(nuclei), len(matches)
    u_cm = _distinct(cell_matched)

    def pct(count: int, total: int) -> float | int:
        return 100.0 * count / total if total else 0

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    stats = {
        "nucleus": {
            "total": (n_nuclei, 100.0),
            "matched": (n_matched, pct(n_matched, n_nuclei)),
            "unmatched": (n_nuclei - n_matched, pct(n_nuclei - n_matched, n_nuclei)),
        },
        "whole_cell": {
            "total": (n_cells, 100.0),
            "matched": (n_matched, pct(n_matched, n_cells)),
            "unmatched": (n_cells - n_matched, pct(n_cells - n_matched, n_cells)),
        },
    }
    return {
        "cell_matched_mask": cell_matched,
        "nucleus_matched_mask": nuc_matched,
        "cell_outside_nucleus_mask": cytoplasm,
        "cell_matched_boundary": _labelled_boundary(cell_matched),
        "nucleus_matched_boundary": _labelled_boundary(nuc_matched),
        "matched_fraction": u_cm / (_distinct(cell) + _distinct(nucleus) - u_cm),
        "matching_stats": stats,
        "n_cells": n_cells,
        "n_nuclei": n_nuclei,
        "n_matched": n_matched,
        "n_repaired": n_repaired,
        "frac_cells_matched": ratio(n_matched, n_cells),
        "frac_nuclei_matched": ratio(n_matched, n_nuclei),
        "match_jaccard": ratio(n_matched, n_cells + n_nuclei - n_matched),
    }
