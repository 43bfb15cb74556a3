"""LightCLIP ablation: baseline, +soft labels, +token alignment, +MLM-fusion, +token+mlm, all -- over seeds.

    python benchmarks/bench_clip_ablation.py [--seeds 0 1 2] [--steps 500] [--variants baseline all]

Every run trains ``configs/lightclip-shapes64.yaml`` (same data, schedule, batch, steps) with the
variant's objective switches and the seed replaced (``train.seed``: initial weights, data order, masks),
into ``runs/clip-ablation/<variant>-s<seed>`` (export there too, not to ``weights/``), then measures
zero-shot accuracy on held-out single-object scenes (``shapes_heldout/object_acc``: all three attributes
right for shape-colour combinations never seen in training), its attribute accuracies, seen-combination
accuracy, held-out retrieval mean R@1 and digits zero-shot accuracy. Finished runs are reused, so an
interrupted ablation resumes. Writes ``benchmarks/results/clip_ablation.json`` and ``clip_ablation.md``
(mean +- sample sd over seeds, and per-seed numbers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASE_CONFIG = ROOT / "configs" / "lightclip-shapes64.yaml"
OFF = {"contrastive": "clip", "token_weight": 0.0, "mlm_weight": 0.0}
VARIANTS = {
    "baseline": OFF,
    "+soft": OFF | {"contrastive": "soft"},
    "+token": OFF | {"token_weight": 0.5},
    "+mlm": OFF | {"mlm_weight": 0.5},
    # both objectives that helped alone, without the soft labels (which did not): is the full model's
    # loss the soft labels, or the combination?
    "+token+mlm": OFF | {"token_weight": 0.5, "mlm_weight": 0.5},
    "all": {"contrastive": "soft", "token_weight": 0.5, "mlm_weight": 0.5},
}
# Seed 0 at the config's steps *is* a shipped run: `all` = configs/lightclip-shapes64.yaml and `baseline` =
# configs/clip-shapes64.yaml (the switched-off kwargs build the same network from the same seed, and data,
# schedule and steps are shared), so those runs are measured from weights/ instead of trained again.
SHIPPED = {("all", 0): "lightclip-shapes64", ("baseline", 0): "clip-shapes64"}
METRICS = {
    "shapes_heldout/object_acc": "held-out object",
    "shapes_heldout/shape_acc": "held-out shape",
    "shapes_heldout/colour_acc": "held-out colour",
    "shapes_test/object_acc": "seen object",
    "retrieval_heldout/mean_R@1": "retrieval R@1",
    "digits_test/accuracy": "digits",
}


def _slug(variant: str) -> str:
    """Run-folder and run-name form of a variant: ``+token+mlm`` -> ``token-mlm`` (names allow no '+')."""
    return variant.strip("+").replace("+", "-")


def run_one(variant: str, seed: int, steps: int | None, n: int) -> dict[str, float]:
    import mmtok.clip.model  # noqa: F401  (registers LightCLIP)
    from mmtok.clip.zeroshot import evaluate_clip
    from mmtok.train.config import config_from_dict
    from mmtok.train.trainer import Trainer, _release

    out = ROOT / "runs" / "clip-ablation" / f"{_slug(variant)}-s{seed}"
    done = out / "zeroshot.json"
    if done.is_file():
        return json.loads(done.read_text())
    shipped = SHIPPED.get((variant, seed)) if steps is None else None
    if shipped is not None:
        metrics = evaluate_clip([shipped], n=n, progress=False, probe=False)[shipped]
        out.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    raw["name"] = f"clip-ablation-{_slug(variant)}-s{seed}"
    raw["model"]["kwargs"] |= VARIANTS[variant]
    raw["train"]["seed"] = seed
    raw["eval"] = None
    if steps is not None:
        raw["optim"]["max_steps"] = steps
        raw["model"]["kwargs"]["soft_ramp_steps"] = max(1, steps // 2)
    cfg = config_from_dict(raw)
    import torch

    threads = torch.get_num_threads()
    trainer = Trainer(cfg, out=out, export=out / "model", command=f"python {Path(__file__).name}")
    try:
        trainer.fit(resume="latest")
    finally:
        _release(trainer.accelerator, threads)
    metrics = evaluate_clip([str(out / "model")], n=n, progress=False, probe=False)[str(out / "model")]
    done.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def summarise(results: dict[str, dict[int, dict[str, float]]], steps, n, argv: str = "") -> str:
    seeds = sorted({s for per in results.values() for s in per})
    lines = [
        "# LightCLIP ablation (zero-shot, held-out shapes)",
        "",
        f"`configs/lightclip-shapes64.yaml` with each variant's switches; {steps or 'config'} steps; seeds "
        f"{', '.join(map(str, seeds))}; zero-shot on {n} single-object scenes per split. "
        "Mean +- sample sd over seeds (sd needs >= 2 seeds).",
        "",
        "| variant | " + " | ".join(METRICS.values()) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for variant, per in results.items():
        cells = []
        for key in METRICS:
            values = [per[s][key] * 100 for s in sorted(per)]
            sd = f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{sd}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (held-out object accuracy, %):", ""]
    for variant, per in results.items():
        values = ", ".join(f"s{s}: {per[s]['shapes_heldout/object_acc'] * 100:.1f}" for s in sorted(per))
        lines.append(f"- {variant}: {values}")
    lines += ["", f"Reproduce: `python benchmarks/bench_clip_ablation.py{argv}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override optim.max_steps (ramp = half)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n", type=int, default=1000, help="single-object scenes per zero-shot split")
    args = parser.parse_args(argv)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for seed in args.seeds:
        for variant in args.variants:
            metrics = run_one(variant, seed, args.steps, args.n)
            results.setdefault(variant, {})[seed] = metrics
            print(
                f"{variant} s{seed}: held-out object {metrics['shapes_heldout/object_acc']:.3f}", flush=True
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clip_ablation.json").write_text(
        json.dumps({"steps": args.steps, "n": args.n, "results": results}, indent=2) + "\n"
    )
    argv = "".join(
        [f" --variants {' '.join(args.variants)}" if args.variants != list(VARIANTS) else ""]
        + [f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else ""]
        + [f" --steps {args.steps}" if args.steps else ""]
    )
    table = summarise(results, args.steps, args.n, argv)
    (RESULTS / "clip_ablation.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
