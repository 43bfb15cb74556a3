import math

import numpy as np
import pytest

from mmtok.grounding.metrics import (
    Counts,
    dice,
    evaluate_case,
    false_negative_volume,
    false_positive_volume,
    lesion_counts,
    pool,
)


def _scene():
    """Truth: lesions 1 (max 5.0) and 2 (max 8.0); prediction hits 1 (right SUV), hits 2 but only its
    cooler rim (max 6.0), and adds a far false positive of 2 voxels."""
    suv = np.ones((20, 20, 20), np.float32)
    truth = np.zeros(suv.shape, np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    suv[3, 3, 3] = 5.0
    truth[10:14, 10:14, 10:14] = 2
    suv[12, 12, 12] = 8.0
    suv[10, 10, 10] = 6.0
    pred = np.zeros(suv.shape, bool)
    pred[2:5, 2:5, 2:4] = True  # lesion 1: 18 of 27 voxels, includes the 5.0 peak
    pred[10:11, 10:11, 10:12] = True  # lesion 2: 2 voxels, misses the 8.0 peak
    pred[17, 17, 17:19] = True  # false positive
    return suv, truth, pred


def test_suv_match_overlap_and_dice_criteria():
    suv, truth, pred = _scene()
    assert lesion_counts(pred, truth, suv, "suv") == Counts(tp=1, fp=2, fn=1)
    # Overlap alone: lesion 2 counts, but its 2-voxel component is noise (<= 3 voxels) -> ignored;
    # so is the 2-voxel false positive.
    assert lesion_counts(pred, truth, criterion="overlap") == Counts(tp=1, fp=0, fn=1)
    assert lesion_counts(pred, truth, criterion="overlap", min_voxels=0) == Counts(tp=2, fp=1, fn=0)
    # Dice > 0.5: lesion 1 has 2*18/(18+27) = 0.8, lesion 2 2*2/(2+64) < 0.5.
    assert lesion_counts(pred, truth, criterion="dice") == Counts(tp=1, fp=2, fn=1)
    with pytest.raises(ValueError):
        lesion_counts(pred, truth, criterion="suv")


def test_binary_truth_uses_components():
    suv, truth, pred = _scene()
    assert lesion_counts(pred, truth > 0, suv, "suv") == Counts(tp=1, fp=2, fn=1)


def test_dice_and_volumes():
    suv, truth, pred = _scene()
    inter = 18 + 2
    assert dice(pred, truth) == pytest.approx(2 * inter / (pred.sum() + (truth > 0).sum()))
    assert math.isnan(dice(pred, np.zeros_like(truth)))
    assert false_positive_volume(pred, truth, voxel_ml=0.5) == pytest.approx(1.0)  # the 2-voxel FP
    assert false_negative_volume(pred, truth, voxel_ml=0.5) == 0.0
    assert false_negative_volume(np.zeros_like(pred), truth, voxel_ml=0.5) == pytest.approx((27 + 64) * 0.5)


def test_evaluate_and_pool():
    suv, truth, pred = _scene()
    a = evaluate_case(pred, truth, suv, voxel_ml=0.064)
    b = evaluate_case(truth > 0, truth, suv, voxel_ml=0.064)  # perfect
    assert b["suv_match"] == Counts(tp=2, fp=0, fn=0) and b["dice"] == 1.0
    out = pool([a, b])
    assert out["counts_suv_match"] == {"tp": 3, "fp": 2, "fn": 1}
    assert out["f1_suv_match"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert out["mean_case_dice"] == pytest.approx((a["dice"] + 1.0) / 2)
