"""``mmtok eval weaklabel``: the weak-labelling pipeline scored on fresh phantoms.

For each case: parse its report, weak-label every finding on its SUV volume, and compare with the
truth. A truth lesion whose report sentence is unambiguous (and correct) counts as *located correctly*
when its finding is "located" and the weak peak lies inside the true lesion mask. Sentences with a
reporting error (misquoted SUVmax or side, about 8 % by design) are scored apart: they must come
out not found (or at their own lesion), never at another place. Wrong locations are located
findings whose peak is not inside the lesion the sentence names (or any located distractor); the
target is none at high confidence (>= 0.8). Dice compares each correctly located weak mask with its
true lesion mask. Lesion-level F1s (SUV match, overlap, Dice > 0.5) compare the union of weak masks
with the SEG volume.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .metrics import dice, evaluate_case, pool
from .phantom import make_case
from .reports import parse_report
from .weaklabel import HIGH_CONFIDENCE, WeakLabelConfig, weak_label

TARGETS = {"located_correct": 0.98, "wrong_high_confidence": 0, "mean_dice": 0.8}


def _match(lesion: dict, results: list[dict]) -> dict | None:
    """The finding whose stated SUVmax and slice are this lesion's (sentences may be split)."""
    for r in results:
        if r["suvmax"] == lesion["stated_suvmax"] and r["slice"] == lesion["slice"]:
            return r
    for r in results:  # ambiguous sentences carry no single value; match them by text
        if lesion["sentence"] and lesion["sentence"] in r["sentence"]:
            return r
    return None


def evaluate_weaklabel(
    n: int = 200,
    seed: int = 0,
    shape=(96, 96, 160),
    config: WeakLabelConfig | None = None,
    progress: bool = False,
) -> dict:
    config = config or WeakLabelConfig()
    start = time.perf_counter()
    n_unamb = n_correct = n_ambiguous_truth = n_ambiguous_flagged = n_misquoted = n_misquoted_safe = 0
    wrong_high, wrong_low, parse_ok, dices, per_case, statuses = 0, 0, 0, [], [], {}
    by_size: dict[str, list[float]] = {"<15mm": [], "15-25mm": [], ">25mm": []}
    misses: list[str] = []
    for i in range(n):
        case = make_case(seed, i, shape=shape)
        results = weak_label(parse_report(case.report, config.min_suv), case.pet_image(), config=config)
        for r in results:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        used: set[int] = set()
        for les in case.truth["lesions"]:
            r = _match(les, results)
            if les["expect"] == "ambiguous":
                n_ambiguous_truth += 1
                n_ambiguous_flagged += bool(r is not None and r["status"] == "ambiguous")
                continue
            if les["expect"] == "not_found":  # a misquoted SUV or side: must not land anywhere else
                n_misquoted += 1
                at_lesion = r is not None and r["status"] == "located"
                at_lesion = at_lesion and case.seg[tuple(r["peak_voxel"])] == les["label"]
                n_misquoted_safe += bool(r is None or r["status"] != "located" or at_lesion)
                continue
            n_unamb += 1
            if r is None:
                misses.append(f"case {i} lesion {les['label']}: no finding parsed")
                continue
            used.add(id(r))
            if (r["side"], r["organ"]) == (les["side"], les["organ"]):
                parse_ok += 1
            else:
                misses.append(f"case {i} lesion {les['label']}: parsed side/organ {r['side']}/{r['organ']}, "
                              f"truth {les['side']}/{les['organ']} in {r['sentence']!r}")  # fmt: skip
            true_mask = case.seg == les["label"]
            if r["status"] == "located" and true_mask[tuple(r["peak_voxel"])]:
                n_correct += 1
                d = dice(r["_mask"], true_mask)
                dices.append(d)
                size = (
                    "<15mm" if les["diameter_mm"] < 15 else "15-25mm" if les["diameter_mm"] <= 25 else ">25mm"
                )
                by_size[size].append(d)
            else:
                misses.append(f"case {i} lesion {les['label']}: {r['status']} ({r['reason']})")
        for r in results:  # every located finding must sit in the lesion its sentence names
            if r["status"] != "located":
                continue
            lab = int(case.seg[tuple(r["peak_voxel"])])
            named = [les for les in case.truth["lesions"] if _match(les, [r]) is r]
            if not (named and named[0]["label"] == lab):
                wrong_high += r["confidence"] >= HIGH_CONFIDENCE
                wrong_low += r["confidence"] < HIGH_CONFIDENCE
                misses.append(
                    f"case {i}: WRONG location for {r['sentence']!r} (confidence {r['confidence']})"
                )
        pred = np.zeros(case.seg.shape, bool)
        for r in results:
            if "_mask" in r:
                pred |= r["_mask"]
        per_case.append(
            evaluate_case(pred, case.seg, case.suv, float(np.prod(case.truth["spacing_mm"])) / 1000)
        )
        if progress:
            print(f"\reval weaklabel: {i + 1}/{n} cases", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    pooled = pool(per_case)
    located = n_correct / n_unamb if n_unamb else float("nan")
    mean_dice = float(np.mean(dices)) if dices else float("nan")
    return {
        "cases": n,
        "seed": seed,
        "shape": list(shape),
        "method": config.method,
        "unambiguous_findings": n_unamb,
        "located_correct": located,
        "wrong_high_confidence": wrong_high,
        "wrong_low_confidence": wrong_low,
        "mean_dice": mean_dice,
        "median_dice": float(np.median(dices)) if dices else float("nan"),
        "dice_by_diameter": {k: round(float(np.mean(v)), 4) if v else None for k, v in by_size.items()},
        "lesions_by_diameter": {k: len(v) for k, v in by_size.items()},
        "side_and_organ_parsed": parse_ok / n_unamb if n_unamb else float("nan"),
        "ambiguous_sentences": n_ambiguous_truth,
        "ambiguous_flagged": n_ambiguous_flagged,
        "misquoted_sentences": n_misquoted,
        "misquoted_not_misplaced": n_misquoted_safe,
        "statuses": statuses,
        **pooled,
        "targets_met": bool(
            located >= TARGETS["located_correct"] and wrong_high == 0 and mean_dice >= TARGETS["mean_dice"]
        ),
        "targets": TARGETS,
        "misses": misses[:20],
        "seconds": round(time.perf_counter() - start, 1),
    }
