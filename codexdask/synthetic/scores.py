"""Instance-segmentation scores between a reference label image and a prediction.

Objects are matched one-to-one by intersection over union (IoU). A truth object and a predicted
object can match at threshold ``t`` when their IoU is at least ``t``. Above 0.5 every object has
at most one such partner, so the matching is unique; at lower thresholds (or exact ties at 0.5)
the matching maximises the number of matched pairs, then their total IoU
(``scipy.optimize.linear_sum_assignment`` on each connected group of ambiguous candidate pairs).

With ``TP`` matched pairs, ``FP = n_pred - TP`` and ``FN = n_true - TP``:

- precision ``TP / n_pred``, recall ``TP / n_true``, F1 ``2 TP / (n_true + n_pred)``;
- mean IoU: the mean IoU of the matched pairs (NaN when nothing matched);
- the DSB 2018 score at ``t``: ``TP / (TP + FP + FN)``, and the average precision (AP): its mean
  over the thresholds 0.50, 0.55, ..., 0.95 (the Data Science Bowl 2018 metric).

A ratio whose denominator is 0 is 1.0 when both images are empty (perfect agreement: nothing to
find, nothing found) and 0.0 otherwise. Label 0 is background; labels need not be sequential.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from codexdask.errors import ConfigError, InputError

#: Thresholds of the DSB 2018 average precision: 0.50, 0.55, ..., 0.95.
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


@dataclasses.dataclass(frozen=True)
class Overlaps:
    """The overlap table of two label images (only pairs that share pixels).

    Attributes
    ----------
    true_ids, pred_ids : numpy.ndarray
        ``(n_true,)`` and ``(n_pred,)`` int64: the labels present in each image, ascending.
    true_area, pred_area : numpy.ndarray
        ``(n_true,)`` and ``(n_pred,)`` int64 pixel counts.
    pair_true, pair_pred : numpy.ndarray
        ``(n_pairs,)`` int64 indices into ``true_ids`` / ``pred_ids`` of each overlapping pair.
    intersection : numpy.ndarray
        ``(n_pairs,)`` int64 shared pixels of each pair.
    iou : numpy.ndarray
        ``(n_pairs,)`` float64 IoU of each pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of truth and predicted objects at one IoU threshold.

    Attributes
    ----------
    threshold : float
        Minimum IoU of a matched pair.
    n_true, n_pred : int
        Objects in the truth and in the prediction.
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched truth objects.
    precision, recall, f1, dsb_score : float
        See the module docstring; ``dsb_score`` is ``TP / (TP + FP + FN)``.
    mean_iou : float
        Mean IoU of the matched pairs (NaN if ``tp == 0``).
    true_ids, pred_ids : numpy.ndarray
        ``(tp,)`` int64 labels of the matched pairs, in ascending truth label.
    ious : numpy.ndarray
        ``(tp,)`` float64 IoU of each matched pair.
    """

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    dsb_score: float
    mean_iou: float
    true_ids: np.ndarray
    pred_ids: np.ndarray
    ious: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields as a JSON-friendly dict (no pair arrays)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("true_ids", "pred_ids", "ious")
        }


def overlap_table(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Areas of all objects and intersections/IoU of all overlapping pairs.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape (any number of dimensions); 0 is background.

    Returns
    -------
    Overlaps
        Cost grows with the pixel count, never with pixels × objects.

    Raises
    ------
    InputError
        On different shapes, non-integer or negative labels.
    """
    truth = _check_labels(truth, "truth")
    pred = _check_labels(pred, "pred")
    if truth.shape != pred.shape:
        raise InputError(
            f"truth and prediction must have the same shape; got {truth.shape} and {pred.shape}"
        )
    true_ids, true_index, true_area = _compact(truth.ravel())
    pred_ids, pred_index, pred_area = _compact(pred.ravel())
    both = (true_index >= 0) & (pred_index >= 0)
    codes = true_index[both] * max(len(pred_ids), 1) + pred_index[both]
    pair_codes, intersection = np.unique(codes, return_counts=True)
    pair_true = pair_codes // max(len(pred_ids), 1)
    pair_pred = pair_codes % max(len(pred_ids), 1)
    union = true_area[pair_true] + pred_area[pair_pred] - intersection
    return Overlaps(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_area=true_area,
        pred_area=pred_area,
        pair_true=pair_true,
        pair_pred=pair_pred,
        intersection=intersection.astype(np.int64),
        iou=intersection / union,
    )


def match_instances(
    truth: np.ndarray | Overlaps, pred: np.ndarray | None = None, threshold: float = 0.5
) -> MatchResult:
    """Match truth and predicted objects one-to-one at an IoU threshold.

    Parameters
    ----------
    truth : numpy.ndarray or Overlaps
        Integer label image, or an :class:`Overlaps` table already computed (then ``pred`` is
        ``None``).
    pred : numpy.ndarray, optional
        Integer label image of the same shape as ``truth``.
    threshold : float
        Minimum IoU of a matched pair, in (0, 1].

    Returns
    -------
    MatchResult
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"IoU threshold must be in (0, 1], got {threshold}")
    table = truth if isinstance(truth, Overlaps) else overlap_table(truth, _required(pred))
    candidate = table.iou >= threshold
    cand_true = table.pair_true[candidate]
    cand_pred = table.pair_pred[candidate]
    cand_iou = table.iou[candidate]
    chosen = _assign(cand_true, cand_pred, cand_iou)
    order = np.argsort(cand_true[chosen], kind="stable")
    chosen = chosen[order]
    n_true, n_pred = len(table.true_ids), len(table.pred_ids)
    tp = int(chosen.size)
    empty = n_true == 0 and n_pred == 0
    ious = cand_iou[chosen]
    return MatchResult(
        threshold=float(threshold),
        n_true=n_true,
        n_pred=n_pred,
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        precision=_ratio(tp, n_pred, empty),
        recall=_ratio(tp, n_true, empty),
        f1=_ratio(2 * tp, n_true + n_pred, empty),
        dsb_score=_ratio(tp, n_true + n_pred - tp, empty),
        mean_iou=float(ious.mean()) if tp else float("nan"),
        true_ids=table.true_ids[cand_true[chosen]],
        pred_ids=table.pred_ids[cand_pred[chosen]],
        ious=ious,
    )


def segmentation_scores(
    truth: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = (0.5,)
) -> dict[str, Any]:
    """Scores of ``pred`` against ``truth`` at several IoU thresholds.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape.
    thresholds : iterable of float
        IoU thresholds in (0, 1].

    Returns
    -------
    dict
        ``n_true``, ``n_pred``; ``by_threshold``: ``{"0.50": MatchResult.as_dict(), ...}``
        (keys formatted with two decimals); ``average_precision``: the mean DSB score over
        ``thresholds``.
    """
    table = overlap_table(truth, pred)
    results = [match_instances(table, threshold=float(t)) for t in thresholds]
    if not results:
        raise ConfigError("give at least one IoU threshold")
    return {
        "n_true": len(table.true_ids),
        "n_pred": len(table.pred_ids),
        "by_threshold": {f"{r.threshold:.2f}": r.as_dict() for r in results},
        "average_precision": float(np.mean([r.dsb_score for r in results])),
    }


def average_precision(
    truth: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = DSB_THRESHOLDS
) -> float:
    """The DSB 2018 average precision: mean over ``thresholds`` of ``TP / (TP + FP + FN)``.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape.
    thresholds : iterable of float
        IoU thresholds; default 0.50, 0.55, ..., 0.95.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both images are empty.
    """
    return float(segmentation_scores(truth, pred, thresholds)["average_precision"])


# --------------------------------------------------------------------------------------------
# helpers


def labelling_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How far two labellings of one image agree, whatever their label numbers.

    Parameters
    ----------
    reference, candidate : numpy.ndarray
        Integer label images of the same shape (0 = background), e.g. a one-shot and a block-wise
        segmentation of one image.

    Returns
    -------
    dict
        ``n_reference`` and ``n_candidate`` (objects), ``n_identical`` (reference objects with a
        candidate object of exactly the same pixels), ``identical_fraction``
        (``n_identical / n_reference``, 1.0 when both are empty) and ``pixel_agreement``: the
        fraction of pixels whose label agrees once candidate objects are renamed after the
        reference object they overlap most (IoU > 0.5; others count as disagreeing).
    """
    overlaps = overlap_table(reference, candidate)
    same = ((overlaps.intersection == overlaps.true_area[overlaps.pair_true])
            & (overlaps.intersection == overlaps.pred_area[overlaps.pair_pred]))
    n_identical = int(np.count_nonzero(same))
    matched = match_instances(overlaps, threshold=0.5)
    rename = np.zeros(int(candidate.max(initial=0)) + 1, dtype=np.int64)
    rename[:] = -1
    rename[0] = 0
    rename[matched.pred_ids] = matched.true_ids
    renamed = rename[np.asarray(candidate, dtype=np.int64)]
    n_reference = len(overlaps.true_ids)
    return {
        "n_reference": n_reference,
        "n_candidate": len(overlaps.pred_ids),
        "n_identical": n_identical,
        "identical_fraction": n_identical / n_reference if n_reference else 1.0,
        "pixel_agreement": float(np.mean(renamed == np.asarray(reference, dtype=np.int64))),
    }


def _required(pred: np.ndarray | None) -> np.ndarray:
    if pred is None:
        raise InputError(
            "give a predicted label image (or an Overlaps table as the first argument)"
        )
    return pred


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"{name} must be an integer label image; got dtype {labels.dtype} "
            "(label a binary mask first, e.g. with scipy.ndimage.label)"
        )
    if labels.size and labels.min() < 0:
        raise InputError(f"{name} has negative labels; labels must be >= 0 (0 = background)")
    return labels


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present labels (> 0), each pixel's index into them (-1 for background), and areas."""
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if int(flat.max()) <= 4 * flat.size:  # a lookup table is cheaper than sorting
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.full(counts.size, -1, dtype=np.int64)
        lut[ids] = np.arange(ids.size)
        return ids.astype(np.int64), lut[flat], counts[ids].astype(np.int64)
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    index = inverse.astype(np.int64)
    if ids[0] == 0:
        ids, counts, index = ids[1:], counts[1:], index - 1
    return ids.astype(np.int64), index, counts.astype(np.int64)


def _assign(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Indices of the chosen candidate pairs: a one-to-one matching that maximises the number of
    pairs, then their total IoU, solved per connected group of candidates."""
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    row_count = np.bincount(rows)[rows]
    col_count = np.bincount(cols)[cols]
    unique = (row_count == 1) & (col_count == 1)
    chosen = [np.flatnonzero(unique)]
    rest = np.flatnonzero(~unique)
    if rest.size:
        # Bipartite graph of the ambiguous pairs: nodes are rows then columns.
        r_ids, r_local = np.unique(rows[rest], return_inverse=True)
        c_ids, c_local = np.unique(cols[rest], return_inverse=True)
        n_r = r_ids.size
        graph = sparse.coo_matrix(
            (np.ones(rest.size), (r_local, n_r + c_local)), shape=(n_r + c_ids.size,) * 2
        )
        _, component = connected_components(graph, directed=False)
        pair_component = component[r_local]
        for comp in np.unique(pair_component):
            members = rest[pair_component == comp]
            rr, r_inv = np.unique(rows[members], return_inverse=True)
            cc, c_inv = np.unique(cols[members], return_inverse=True)
            # Weight = bonus + IoU: any extra pair outweighs every IoU difference.
            bonus = float(members.size + 1)
            weight = np.zeros((rr.size, cc.size))
            weight[r_inv, c_inv] = bonus + iou[members]
            pick = np.full((rr.size, cc.size), -1, dtype=np.int64)
            pick[r_inv, c_inv] = members
            sel_r, sel_c = linear_sum_assignment(weight, maximize=True)
            picked = pick[sel_r, sel_c]
            chosen.append(picked[picked >= 0])
    return np.concatenate(chosen)


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator
