"""Tests of the instance-segmentation metrics on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codexdask.errors import ConfigError, InputError
from codexdask.synthetic import random_disc_pairs
from codexdask.synthetic.scores import (
    DSB_THRESHOLDS,
    average_precision,
    match_instances,
    overlap_table,
    segmentation_scores,
)


def _squares() -> np.ndarray:
    labels = np.zeros((40, 40), dtype=np.uint16)
    labels[2:12, 2:12] = 1
    labels[20:30, 5:15] = 2
    labels[5:15, 25:35] = 3
    return labels


def test_identical_images_score_perfectly() -> None:
    truth = _squares()
    result = match_instances(truth, truth.copy(), 0.5)
    assert (result.tp, result.fp, result.fn) == (3, 0, 0)
    assert result.precision == result.recall == result.f1 == result.dsb_score == 1.0
    assert result.mean_iou == 1.0
    assert np.array_equal(result.true_ids, [1, 2, 3])
    assert np.array_equal(result.pred_ids, [1, 2, 3])
    assert average_precision(truth, truth) == 1.0


def test_relabelled_prediction_is_matched_by_overlap_not_value() -> None:
    truth = _squares()
    pred = np.zeros((40, 40), dtype=np.int64)
    pred[truth == 1], pred[truth == 2], pred[truth == 3] = 70, 5, 10**9  # large label: sort path
    result = match_instances(truth, pred, 0.9)
    assert result.f1 == 1.0
    assert dict(zip(result.true_ids, result.pred_ids)) == {1: 70, 2: 5, 3: 10**9}
    for dtype in (np.uint8, np.int16, np.uint32, np.uint64):
        assert match_instances(truth.astype(dtype), truth.astype(np.uint64), 0.9).f1 == 1.0


def test_shifted_square_has_known_iou() -> None:
    truth = np.zeros((20, 20), dtype=np.uint8)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 7:17] = 1  # shift by 2: intersection 80, union 120
    result = match_instances(truth, pred, 0.5)
    assert result.tp == 1
    assert result.mean_iou == pytest.approx(2 / 3)
    assert match_instances(truth, pred, 0.7).tp == 0
    # IoU 2/3 passes 0.50, 0.55, 0.60, 0.65 and fails the six higher thresholds.
    assert average_precision(truth, pred) == pytest.approx(0.4)


def test_split_object() -> None:
    truth = np.zeros((10, 30), dtype=np.int32)
    truth[:, 0:20] = 1
    pred = np.zeros_like(truth)
    pred[:, 0:12] = 1  # IoU 0.6
    pred[:, 12:20] = 2  # IoU 0.4
    result = match_instances(truth, pred, 0.5)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.precision == 0.5 and result.recall == 1.0
    assert result.f1 == pytest.approx(2 / 3)
    assert result.dsb_score == pytest.approx(0.5)
    assert result.mean_iou == pytest.approx(0.6)
    assert result.pred_ids.tolist() == [1]


def test_merged_objects() -> None:
    truth = np.zeros((10, 30), dtype=np.int32)
    truth[:, 0:12] = 1
    truth[:, 12:20] = 2
    pred = (truth > 0).astype(np.int32)
    result = match_instances(truth, pred, 0.5)
    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    assert result.precision == 1.0 and result.recall == 0.5
    assert result.true_ids.tolist() == [1]


def test_empty_against_non_empty() -> None:
    empty = np.zeros((40, 40), dtype=np.uint32)
    full = _squares().astype(np.uint32)
    missed = match_instances(full, empty)
    assert (missed.tp, missed.fp, missed.fn) == (0, 0, 3)
    assert missed.precision == missed.recall == missed.f1 == missed.dsb_score == 0.0
    assert math.isnan(missed.mean_iou)
    invented = match_instances(empty, full)
    assert (invented.tp, invented.fp, invented.fn) == (0, 3, 0)
    assert invented.precision == invented.recall == invented.f1 == 0.0
    assert average_precision(full, empty) == 0.0
    assert average_precision(empty, full) == 0.0


def test_both_empty_is_perfect_agreement() -> None:
    empty = np.zeros((8, 8), dtype=np.uint16)
    result = match_instances(empty, empty)
    assert (result.n_true, result.n_pred, result.tp) == (0, 0, 0)
    assert result.precision == result.recall == result.f1 == result.dsb_score == 1.0
    assert math.isnan(result.mean_iou)
    assert average_precision(empty, empty) == 1.0
    assert match_instances(np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int32)).f1 == 1.0


def test_low_threshold_uses_optimal_matching() -> None:
    # Strips on one row: truth A = [0, 10), B = [10, 20); prediction Y = [0, 2), X = [2, 14).
    # IoU(A, X) = 8/14, IoU(A, Y) = 0.2, IoU(B, X) = 4/18. Greedy by IoU takes A-X and stops at
    # one match; the optimal matching is A-Y and B-X.
    truth = np.zeros((1, 20), dtype=np.int32)
    truth[0, 0:10], truth[0, 10:20] = 1, 2
    pred = np.zeros_like(truth)
    pred[0, 0:2], pred[0, 2:14] = 7, 8
    result = match_instances(truth, pred, 0.15)
    assert result.tp == 2
    assert dict(zip(result.true_ids, result.pred_ids)) == {1: 7, 2: 8}
    assert result.mean_iou == pytest.approx((0.2 + 4 / 18) / 2)
    assert match_instances(truth, pred, 0.5).tp == 1  # only A-X


def test_ties_prefer_more_matches_then_higher_iou() -> None:
    # Truth [0, 4) overlaps two predictions of IoU exactly 0.5 each at threshold 0.5.
    truth = np.zeros((1, 8), dtype=np.int32)
    truth[0, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0, 0:2], pred[0, 2:4] = 1, 2
    result = match_instances(truth, pred, 0.5)
    assert result.tp == 1 and result.ious.tolist() == [0.5]


def test_overlap_table_against_brute_force() -> None:
    truth, pred = random_disc_pairs(40, (90, 110), seed=3, radius_scale=0.3)
    table = overlap_table(truth, pred)
    assert np.array_equal(table.true_ids, np.unique(truth)[1:])
    assert np.array_equal(table.pred_ids, np.unique(pred)[1:])
    for k in range(table.iou.size):
        t_id = table.true_ids[table.pair_true[k]]
        p_id = table.pred_ids[table.pair_pred[k]]
        inter = np.sum((truth == t_id) & (pred == p_id))
        union = np.sum((truth == t_id) | (pred == p_id))
        assert table.intersection[k] == inter
        assert table.iou[k] == pytest.approx(inter / union)
    assert table.intersection.sum() == np.sum((truth > 0) & (pred > 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_above_half_equals_brute_force(seed: int) -> None:
    truth, _ = random_disc_pairs(30, (80, 80), seed=seed, radius_scale=0.3)
    pred, _ = random_disc_pairs(30, (80, 80), seed=seed + 10, radius_scale=0.3)
    pred = np.where(np.random.default_rng(seed).random(truth.shape) < 0.5, truth, pred)
    expected = 0
    for t_id in np.unique(truth)[1:]:
        for p_id in np.unique(pred[truth == t_id]):
            if p_id == 0:
                continue
            inter = np.sum((truth == t_id) & (pred == p_id))
            union = np.sum((truth == t_id) | (pred == p_id))
            expected += inter / union > 0.5
    assert match_instances(truth, pred, 0.5 + 1e-9).tp == expected


def test_segmentation_scores_layout() -> None:
    truth = _squares()
    pred = np.roll(truth, 2, axis=1)  # IoU 8/12 for every square
    scores = segmentation_scores(truth, pred, thresholds=(0.5, 0.75))
    assert scores["n_true"] == scores["n_pred"] == 3
    assert set(scores["by_threshold"]) == {"0.50", "0.75"}
    assert scores["by_threshold"]["0.50"]["f1"] == 1.0
    assert scores["by_threshold"]["0.75"]["f1"] == 0.0
    assert scores["average_precision"] == pytest.approx(0.5)
    assert "ious" not in scores["by_threshold"]["0.50"]
    assert len(DSB_THRESHOLDS) == 10 and DSB_THRESHOLDS[-1] == 0.95


def test_bad_input_raises_input_error() -> None:
    labels = _squares()
    with pytest.raises(InputError, match="same shape"):
        match_instances(labels, labels[:10])
    with pytest.raises(InputError, match="integer"):
        match_instances(labels.astype(float), labels)
    with pytest.raises(InputError, match="integer"):
        match_instances(labels > 0, labels)
    with pytest.raises(InputError, match="negative"):
        match_instances(labels.astype(np.int32) - 1, labels)


def test_bad_threshold_raises_config_error() -> None:
    """A threshold is a setting, not data: errors.py's rule makes it a ConfigError."""
    labels = _squares()
    with pytest.raises(ConfigError, match="threshold"):
        match_instances(labels, labels, threshold=0.0)
    with pytest.raises(ConfigError, match="threshold"):
        segmentation_scores(labels, labels, thresholds=())
