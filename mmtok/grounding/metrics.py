"""Lesion-level metrics for PET lesion masks.

- **SUV-match F1** (the grounding paper's headline): components of the prediction and the truth; a
  truth lesion is a true positive if an overlapping, still unmatched predicted component has an
  SUVmax within ``suv_tol`` (0.1) of the lesion's SUVmax. Unmatched truth lesions are false
  negatives, unmatched predicted components false positives; F1 pooled over cases.
- **Overlap F1**: the same matching with overlap alone (predicted components of <= ``min_voxels``
  voxels are ignored as noise, as in the reference evaluation).
- **Dice > 0.5 F1**: overlap and a per-lesion Dice above 0.5.
- **Dice**, **false-positive volume** and **false-negative volume** (autoPET: mL of predicted
  18-connected components with no truth overlap, and of truth components with no predicted
  overlap). Dice is NaN when the truth is empty (a negative case), as in autoPET.

Truth may be a label map (lesion k = label k, as in the phantom's SEG) or a binary mask (then its
connected components are the lesions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_CONN18 = ndimage.generate_binary_structure(3, 2)
_CONN26 = ndimage.generate_binary_structure(3, 3)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else math.nan

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}  # fmt: skip


def components(mask: np.ndarray, connectivity=_CONN26) -> tuple[np.ndarray, int]:
    return ndimage.label(np.asarray(mask) > 0, structure=connectivity)


def _truth_labels(truth: np.ndarray) -> tuple[np.ndarray, int]:
    truth = np.asarray(truth)
    if truth.dtype != bool and truth.max() > 1:
        return truth.astype(np.int32), int(truth.max())
    return components(truth)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if not t.any():
        return math.nan
    return float(2 * (p & t).sum() / (p.sum() + t.sum()))


def lesion_counts(
    pred: np.ndarray,
    truth: np.ndarray,
    suv: np.ndarray | None = None,
    criterion: str = "suv",
    suv_tol: float = 0.1,
    min_voxels: int = 3,
) -> Counts:
    """TP/FP/FN of one case under ``criterion`` "suv" (needs ``suv``), "overlap" or "dice"."""
    if criterion not in ("suv", "overlap", "dice"):
        raise ValueError(f"criterion must be suv, overlap or dice, not {criterion!r}")
    if criterion == "suv" and suv is None:
        raise ValueError("the SUV-match criterion needs the SUV volume")
    gt, n_gt = _truth_labels(truth)
    pr, n_pr = components(pred)
    sizes = ndimage.sum_labels(np.ones_like(pr), pr, index=np.arange(1, n_pr + 1)) if n_pr else []
    ignored = {i + 1 for i, s in enumerate(sizes) if criterion == "overlap" and s <= min_voxels}
    matched: set[int] = set()
    tp = 0
    for g in range(1, n_gt + 1):
        g_mask = gt == g
        if not g_mask.any():
            continue
        overlapping = [int(p) for p in np.unique(pr[g_mask]) if p and p not in matched and p not in ignored]
        for p in sorted(overlapping, key=lambda p: -int(((pr == p) & g_mask).sum())):
            p_mask = pr == p
            if criterion == "suv" and abs(float(suv[g_mask].max()) - float(suv[p_mask].max())) > suv_tol:
                continue
            if criterion == "dice" and dice(p_mask, g_mask) <= 0.5:
                continue
            matched.add(p)
            tp += 1
            break
    n_lesions = len([g for g in range(1, n_gt + 1) if (gt == g).any()])
    return Counts(tp=tp, fp=n_pr - len(matched) - len(ignored), fn=n_lesions - tp)


def false_positive_volume(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> float:
    """mL of predicted 18-connected components that touch no truth voxel (autoPET FPV)."""
    pr, n = components(pred, _CONN18)
    t = np.asarray(truth) > 0
    hit = set(np.unique(pr[t]).tolist())
    return float(sum((pr == p).sum() for p in range(1, n + 1) if p not in hit) * voxel_ml)


def false_negative_volume(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> float:
    """mL of truth 18-connected components that no predicted voxel touches (autoPET FNV)."""
    return false_positive_volume(truth, pred, voxel_ml)


def evaluate_case(pred, truth, suv, voxel_ml: float, suv_tol: float = 0.1) -> dict:
    """All metrics of one case; F1 counts are returned raw so they can be pooled over cases."""
    return {
        "suv_match": lesion_counts(pred, truth, suv, "suv", suv_tol),
        "overlap": lesion_counts(pred, truth, criterion="overlap"),
        "dice_0.5": lesion_counts(pred, truth, criterion="dice"),
        "dice": dice(pred, truth),
        "fpv_ml": false_positive_volume(pred, truth, voxel_ml),
        "fnv_ml": false_negative_volume(pred, truth, voxel_ml),
    }


def pool(cases: list[dict]) -> dict:
    """Pooled F1s (sum of counts), mean Dice over positive cases, mean FPV/FNV."""
    out = {}
    for key in ("suv_match", "overlap", "dice_0.5"):
        total = sum((c[key] for c in cases), Counts())
        out[f"f1_{key}"] = total.f1
        out[f"counts_{key}"] = {"tp": total.tp, "fp": total.fp, "fn": total.fn}
    dices = [c["dice"] for c in cases if not math.isnan(c["dice"])]
    out["mean_case_dice"] = float(np.mean(dices)) if dices else math.nan
    out["mean_fpv_ml"] = float(np.mean([c["fpv_ml"] for c in cases])) if cases else math.nan
    out["mean_fnv_ml"] = float(np.mean([c["fnv_ml"] for c in cases])) if cases else math.nan
    return out
