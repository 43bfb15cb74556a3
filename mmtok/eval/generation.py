"""``mmtok eval generation``: does a generator draw what it was asked for?

Text models (shapes): prompts are the captions of fixed scenes of the shapes ``test`` split (seen
attribute combinations) and of the ``heldout`` split (combinations never trained on), grouped by
object count. One image per prompt is judged by ``judge-shapes64``:

- ``exact``: whole scene right -- every object's shape, colour, size and place, and nothing else;
- per attribute: shape / colour / size accuracy over the objects of the scene;
- ``swapped`` (two objects): the judge reads the scene with the two objects exchanged (each drawn
  where the other should be). ``exact`` should be far above it: that is the binding check.
- binding diagnostics, which split "wrong" into its causes: ``place`` (a named slot holds some
  object), ``count`` (as many objects drawn as named), ``anywhere`` (a named object -- shape,
  colour and size together -- is drawn in some slot, right or wrong) and ``all_anywhere`` (every
  named object is drawn somewhere: the scene is right up to placement).

Class models (digits): ``n`` images per class, ``judge-digits64`` class accuracy.

Both report judge-FID: the Fréchet distance of the judge's features of the generated images against
real held-out images. Proportions come with 95% Wilson intervals.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import hub
from ..data import build_dataset
from ..generation.pipeline import GenerationPipeline, decode
from ..runtime import autocast
from .fid import frechet_distance


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else float("nan"), "ci95": [lo, hi], "n": n}


def _scenes(split: str, objects: int, n: int, seed: int):
    """The first ``n`` items of ``split`` with exactly ``objects`` objects (deterministic)."""
    ds = build_dataset("shapes", split, resolution=64, min_objects=objects, max_objects=objects, seed=seed)
    return [ds[i] for i in range(min(n, len(ds)))]


@torch.no_grad()
def evaluate_generation(
    name: str,
    n: int = 256,
    seed: int = 0,
    steps: int = 20,
    cfg: float = 3.0,
    device: str = "cpu",
    batch_size: int = 64,
    max_objects: int = 3,
    progress: bool = True,
    write: bool = False,
) -> dict[str, Any]:
    pipe = GenerationPipeline(name, device=device)
    if pipe.condition == "class":
        metrics = _evaluate_classes(pipe, n, seed, steps, cfg, batch_size, progress)
    else:
        metrics = _evaluate_scenes(
            pipe, n, seed, steps, cfg, batch_size, max_objects, progress, frechet_distance
        )
    if write:
        command = (
            f"mmtok eval generation --model {name} --n {n} --seed {seed} --steps {steps} --cfg {cfg:g} --json"
        )
        flat = _flatten(metrics)
        hub.record_metrics(name, flat, command, title="Generation evaluation")
    return metrics


def _generate(pipe, conds: list[Any], seed: int, steps: int, cfg: float, batch_size: int) -> torch.Tensor:
    """One image per condition; batches of equal conditions are not needed: the model takes lists."""
    model, out = pipe.model, []
    generator = torch.Generator().manual_seed(seed)
    for i in range(0, len(conds), batch_size):
        with autocast(pipe.device, enabled=pipe.bf16):
            latents = model.sample(conds[i : i + batch_size], steps=steps, cfg=cfg, generator=generator)
            out.append(decode(pipe.tokenizer, latents).float().clamp(-1, 1))
    # What a saved PNG holds: uint8-rounded pixels.
    return ((torch.cat(out) + 1) * 127.5).round().div(127.5).sub(1)


def _evaluate_scenes(pipe, n, seed, steps, cfg, batch_size, max_objects, progress, fid) -> dict[str, Any]:
    judge = hub.load("judge-shapes64", device=pipe.device)
    metrics: dict[str, Any] = {}
    fake_feats, real_feats = [], []
    for split, label in (("test", "seen"), ("heldout", "heldout")):
        for objects in range(1, max_objects + 1):
            scenes = _scenes(split, objects, n, seed)
            if progress:
                print(f"generating {len(scenes)} {label} scenes with {objects} object(s)", flush=True)
            images = _generate(pipe, [s["caption"] for s in scenes], seed, steps, cfg, batch_size)
            truth = {
                k: torch.stack([s[k] for s in scenes]).to(pipe.device) for k in ("shape", "colour", "size")
            }
            pred = {}
            for i in range(0, len(images), batch_size):
                chunk = images[i : i + batch_size].to(pipe.device)
                p = judge.predict(chunk)
                for k, v in p.items():
                    pred.setdefault(k, []).append(v)
                fake_feats.append(judge.features(chunk).reshape(len(chunk) * 9, -1).cpu())
                real = torch.stack([s["image"] for s in scenes[i : i + batch_size]]).to(pipe.device)
                real_feats.append(judge.features(real).reshape(len(real) * 9, -1).cpu())
            pred = {k: torch.cat(v) for k, v in pred.items()}
            ok = {k: pred[k] == truth[k] for k in truth}
            occupied = truth["shape"] > 0
            exact = (ok["shape"] & ok["colour"] & ok["size"]).all(1)
            entry = {"exact": _rate(int(exact.sum()), len(scenes))}
            for k in ("shape", "colour", "size"):
                entry[k] = _rate(int(ok[k][occupied].sum()), int(occupied.sum()))
            drawn = pred["shape"] > 0
            entry["place"] = _rate(int((drawn & occupied).sum()), int(occupied.sum()))
            entry["count"] = _rate(int((drawn.sum(1) == occupied.sum(1)).sum()), len(scenes))
            found = _found_anywhere(truth, pred)
            entry["anywhere"] = _rate(int(found[occupied].sum()), int(occupied.sum()))
            entry["all_anywhere"] = _rate(int((found | ~occupied).all(1).sum()), len(scenes))
            if objects == 2:
                swapped = _swap_two(truth)
                hit = torch.stack([pred[k] == swapped[k] for k in truth]).all(0).all(1)
                entry["swapped"] = _rate(int(hit.sum()), len(scenes))
            metrics[f"{label}/{objects}obj"] = entry
    metrics["judge_fid"] = fid(torch.cat(real_feats), torch.cat(fake_feats))
    metrics["settings"] = {"n": n, "seed": seed, "steps": steps, "cfg": cfg}
    return metrics


def _found_anywhere(truth: dict[str, torch.Tensor], pred: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 9] bool: the named object of each occupied slot (shape, colour, size) is drawn in some slot,
    each drawn object matched at most once."""
    found = torch.zeros_like(truth["shape"], dtype=torch.bool)
    keys = ("shape", "colour", "size")
    for b in range(truth["shape"].shape[0]):
        drawn = [tuple(int(pred[k][b, j]) for k in keys) for j in range(9) if int(pred["shape"][b, j]) > 0]
        for i in (truth["shape"][b] > 0).nonzero().flatten().tolist():
            want = tuple(int(truth[k][b, i]) for k in keys)
            if want in drawn:
                drawn.remove(want)
                found[b, i] = True
    return found


def _swap_two(truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Labels with the two objects of each scene exchanged (each where the other should be)."""
    occupied = truth["shape"] > 0
    out = {k: v.clone() for k, v in truth.items()}
    for b in range(len(occupied)):
        i, j = occupied[b].nonzero().flatten().tolist()[:2]
        for k in out:
            out[k][b, i], out[k][b, j] = truth[k][b, j], truth[k][b, i]
    return out


def _evaluate_classes(pipe, n, seed, steps, cfg, batch_size, progress) -> dict[str, Any]:
    judge = hub.load("judge-digits64", device=pipe.device)
    classes = pipe.model.num_classes
    conds = [c for c in range(classes) for _ in range(n)]
    if progress:
        print(f"generating {len(conds)} images ({n} per class)", flush=True)
    images = _generate(pipe, conds, seed, steps, cfg, batch_size)
    labels = torch.tensor(conds, device=pipe.device)
    preds, feats = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size].to(pipe.device)
        preds.append(judge.predict(chunk))
        feats.append(judge.features(chunk).cpu())
    pred = torch.cat(preds)
    real = build_dataset("digits", "test", resolution=64)
    real_images = torch.stack([real[i]["image"] for i in range(len(real))]).to(pipe.device)
    real_feats = torch.cat(
        [judge.features(real_images[i : i + batch_size]).cpu() for i in range(0, len(real), 64)]
    )
    metrics: dict[str, Any] = {"accuracy": _rate(int((pred == labels).sum()), len(conds))}
    for c in range(classes):
        sel = labels == c
        metrics[f"class_{c}"] = _rate(int((pred[sel] == c).sum()), int(sel.sum()))
    metrics["judge_fid"] = frechet_distance(real_feats, torch.cat(feats))
    metrics["settings"] = {"n_per_class": n, "seed": seed, "steps": steps, "cfg": cfg}
    return metrics


def _flatten(metrics: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and "rate" in value:
            flat[key] = value["rate"]
        elif isinstance(value, dict):
            for k, v in value.items():
                flat[f"{key}/{k}"] = v["rate"] if isinstance(v, dict) and "rate" in v else v
        else:
            flat[key] = value
    return flat
