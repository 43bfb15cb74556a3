"""``mmtok eval grounding``: a grounding model scored on fresh held-out phantoms against the true masks.

Cases are drawn with phantom seed ``10000 + seed`` (training uses seeds 0 and 1000) and 2-4 lesions
each. Every lesion whose report sentence names it alone and correctly (``expect == "located"``) is
one query: the model gets the sentence (numbers stripped inside the model), predicts one mask
(sliding window, best component, SUV >= 1), and that mask is compared with that lesion's true mask
alone, so segmenting another lesion of the case is a false positive plus a false negative.

Reported: SUV-match F1 (headline), overlap F1, Dice > 0.5 F1, mean Dice, FP/FN volume (pooled over
queries), SUV-match F1 per lesion diameter and SUV band, how often the mask landed on another lesion
("wrong lesion"), and seconds per case.

The harness imports the model module, never the other way: during training ``ContextualNet3D.evaluate``
asks its dataset to score it (``GroundingPhantomDataset.score``, which calls ``evaluate_model_on_cases``).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..hub import load
from .metrics import Counts, dice, evaluate_case, pool
from .model import normalise, postprocess
from .phantom import make_case

HELDOUT_SEED_OFFSET = 10_000
SIZE_BANDS = (("<15mm", 0, 15), ("15-25mm", 15, 25.0001), (">25mm", 25.0001, 1e9))
SUV_BANDS = (("2.5-4", 0, 4), ("4-8", 4, 8), (">8", 8, 1e9))
TARGETS = {"f1_suv_match": 0.85}


def evaluate_model_on_cases(
    model, cases, device="cpu", overlap: float = 0.5, threshold: float = 0.5, progress: bool = False
) -> dict:
    model = model.to(device).eval()
    per_query, dices = [], []
    bands = {f"size {b[0]}": Counts() for b in SIZE_BANDS} | {f"suv {b[0]}": Counts() for b in SUV_BANDS}
    wrong_lesion = n_queries = 0
    start = time.perf_counter()
    for n, case in enumerate(cases, 1):
        lesions = [les for les in case.truth["lesions"] if les["expect"] == "located"]
        if not lesions:
            continue
        voxel_ml = float(np.prod(case.truth["spacing_mm"])) / 1000
        image = normalise(case.suv, case.ct)
        prob = model.probabilities(image, [les["sentence"] for les in lesions], overlap=overlap)
        prob = prob.cpu().numpy()
        for q, les in enumerate(lesions):
            mask = postprocess(prob[q], case.suv, threshold)
            truth = case.seg == les["label"]
            result = evaluate_case(mask, truth, case.suv, voxel_ml)
            per_query.append(result)
            dices.append(dice(mask, truth))
            others = set(np.unique(case.seg[mask]).tolist()) - {0, les["label"]}
            wrong_lesion += bool(others) and not (mask & truth).any()
            n_queries += 1
            for name, lo, hi in SIZE_BANDS:
                if lo <= les["diameter_mm"] < hi:
                    bands[f"size {name}"] += result["suv_match"]
            for name, lo, hi in SUV_BANDS:
                if lo <= les["suvmax"] < hi:
                    bands[f"suv {name}"] += result["suv_match"]
        if progress:
            print(f"\reval grounding: {n}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    pooled = pool(per_query) if per_query else {}
    pooled.pop("mean_case_dice", None)  # every query is a positive case: report the per-query mean below
    return {
        "cases": len(cases),
        "queries": n_queries,
        **pooled,
        "mean_dice": float(np.mean(dices)) if dices else math.nan,
        "wrong_lesion": wrong_lesion,
        "f1_suv_match_by_band": {
            k: (round(v.f1, 4) if not math.isnan(v.f1) else None) for k, v in bands.items()
        },
        "queries_by_band": {k: v.tp + v.fn for k, v in bands.items()},
        "seconds_per_case": round((time.perf_counter() - start) / max(len(cases), 1), 2),
    }


def evaluate_grounding(
    model_name: str,
    n: int = 100,
    seed: int = 0,
    device: str = "cpu",
    overlap: float = 0.5,
    shape=(96, 96, 160),
    progress: bool = False,
) -> dict:
    """Load ``model_name`` and score it on ``n`` fresh phantoms (seed ``10000 + seed``, 2-4 lesions)."""
    model = load(model_name, device=device)
    spacing = getattr(model, "spacing_mm", 4.0)
    cases = (
        make_case(HELDOUT_SEED_OFFSET + seed, i, shape=shape, spacing=(spacing,) * 3, n_lesions=(2, 4))
        for i in range(n)
    )

    out = evaluate_model_on_cases(model, _Lazy(cases, n), device=device, overlap=overlap, progress=progress)
    out.update(model=str(model_name), seed=seed, phantom_seed=HELDOUT_SEED_OFFSET + seed, overlap=overlap)
    out["targets"] = TARGETS
    return out


class _Lazy:
    """An iterable of cases that knows its length (cases are built one at a time, not all in memory)."""

    def __init__(self, it, n: int):
        self.it, self.n = it, n

    def __iter__(self):
        return iter(self.it)

    def __len__(self) -> int:
        return self.n
