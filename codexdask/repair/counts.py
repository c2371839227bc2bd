"""The repair's counts and ratios, from the counts of a matching (plain arithmetic).

``matched_fraction`` is the original pipeline's formula (distinct labels, background included);
the explicit counts and ratios beside it are described in ``docs/semantics.md``.
"""

from __future__ import annotations

from typing import Any

from codexdask.errors import InputError
from codexdask.repair.kernels import ratio

__all__ = ["matching_metrics", "matching_stats_from_counts"]


def matching_metrics(
    n_cells: int,
    n_nuclei: int,
    n_matched: int,
    n_repaired: int,
    cell_background: bool,
    nucleus_background: bool,
) -> dict[str, Any]:
    """The repair's counts and ratios from the counts of a matching (see :class:`Matching`).

    The counts are of labels > 0; the background flags say whether some pixel has cell /
    nucleus label 0.
    """
    # Distinct values including 0 when some pixel carries it; in the matched mask 0 is on the
    # background and on every unmatched cell.
    u_cell = n_cells + int(cell_background)
    u_nucleus = n_nuclei + int(nucleus_background)
    u_matched = n_matched + int(cell_background or n_matched < n_cells)
    return {
        "matched_fraction": u_matched / (u_cell + u_nucleus - u_matched),
        "matching_stats": matching_stats_from_counts(n_cells, n_nuclei, n_matched),
        "n_cells": n_cells,
        "n_nuclei": n_nuclei,
        "n_matched": n_matched,
        "n_repaired": n_repaired,
        "frac_cells_matched": ratio(n_matched, n_cells),
        "frac_nuclei_matched": ratio(n_matched, n_nuclei),
        "match_jaccard": ratio(n_matched, n_cells + n_nuclei - n_matched),
    }


def matching_stats_from_counts(n_cells: int, n_nuclei: int, n_matched: int) -> dict[str, Any]:
    """Matching statistics in the original pipeline's structure.

    Parameters
    ----------
    n_cells, n_nuclei, n_matched : int
        Cells and nuclei in the input masks (labels > 0) and matched pairs.

    Returns
    -------
    dict
        ``{"nucleus": {"total": (N, 100.0), "matched": (M, pct), "unmatched": (N - M, pct)},
        "whole_cell": {"total": (C, 100.0), "matched": (M, pct), "unmatched": (C - M, pct)}}``
        with ``pct = 100 * count / total`` as a float, or the integer 0 when ``total == 0``.

    Raises
    ------
    InputError
        If a count is negative or `n_matched` exceeds `n_cells` or `n_nuclei`.
    """
    n_cells, n_nuclei, n_matched = int(n_cells), int(n_nuclei), int(n_matched)
    if min(n_cells, n_nuclei, n_matched) < 0 or n_matched > min(n_cells, n_nuclei):
        raise InputError(
            "need 0 <= n_matched <= min(n_cells, n_nuclei) and non-negative counts; got "
            f"n_cells={n_cells}, n_nuclei={n_nuclei}, n_matched={n_matched}"
        )

    def block(total: int) -> dict[str, tuple[int, float | int]]:
        def pct(count: int) -> float | int:
            return 100.0 * count / total if total else 0

        return {
            "total": (total, 100.0),
            "matched": (n_matched, pct(n_matched)),
            "unmatched": (total - n_matched, pct(total - n_matched)),
        }

    return {"nucleus": block(n_nuclei), "whole_cell": block(n_cells)}
