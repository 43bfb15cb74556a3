"""xAR ablation: entity type x {noisy context, teacher forcing} on shapes, one table.

    python benchmarks/ablate_xar.py [--steps 3000] [--n 128] [--entities token cell ...] [--device cuda]

Each cell of the table trains ``configs/xar-shapes64.yaml`` with only ``model.kwargs.entity`` and
``model.kwargs.context`` changed (same data, optimizer, steps and seed), then measures it with
``mmtok eval generation`` (whole-scene accuracy on seen / held-out one- and two-object prompts,
judge-FID) and times sampling (images/s at batch 64, bf16, ``--sample-steps`` flow steps per entity).
Writes ``benchmarks/results/xar_ablation.{json,md}``; runs and exports go under ``runs/ablation/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("token", "cell", "subsample", "scale", "image")


def run_one(base: dict, entity: str, context: str, args) -> dict:
    from mmtok.eval.generation import evaluate_generation
    from mmtok.generation.pipeline import GenerationPipeline
    from mmtok.train.trainer import train_from_config

    name = f"xar-abl-{entity}-{context}"
    cfg = copy.deepcopy(base)
    cfg["name"] = name
    cfg["model"]["kwargs"].update(entity=entity, context=context)
    cfg["optim"]["max_steps"] = args.steps
    cfg["optim"]["warmup_steps"] = min(cfg["optim"].get("warmup_steps", 0), max(1, args.steps // 10))
    cfg["train"]["ckpt_every"] = 0
    if args.source_size:
        cfg["data"]["kwargs"]["options"]["size"] = args.source_size
        cfg["eval"]["kwargs"]["options"]["size"] = min(args.source_size, 64)
    work = ROOT / "runs" / "ablation"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    summary = train_from_config(path, out=work / name, export=work / "weights" / name)
    train_s = time.perf_counter() - start
    folder = str(work / "weights" / name)
    metrics = evaluate_generation(
        folder, n=args.n, steps=args.sample_steps, device=args.device, max_objects=2, progress=False
    )
    pipe = GenerationPipeline(folder, device=args.device)
    pipe(prompt="a small red circle in the middle", n=2, steps=args.sample_steps)  # warm-up
    t = time.perf_counter()
    pipe(prompt="a small red circle in the middle", n=args.batch, steps=args.sample_steps)
    ips = args.batch / (time.perf_counter() - t)
    row = {"entity": entity, "context": context, "entities": pipe.model.entities.num_entities,
           "train_s": train_s, "val_mse": summary["eval"].get("val_mse"), "images_per_s": ips,
           "judge_fid": metrics["judge_fid"]}  # fmt: skip
    for key in ("seen/1obj", "heldout/1obj", "seen/2obj", "heldout/2obj"):
        row[key] = metrics[key]["exact"]["rate"]
    row["swapped/2obj"] = metrics["seen/2obj"]["swapped"]["rate"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "xar-shapes64.yaml"))
    ap.add_argument("--steps", type=int, default=3000, help="training steps per cell")
    ap.add_argument("--n", type=int, default=128, help="prompts per group in the evaluation")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="batch of the speed measurement")
    ap.add_argument("--entities", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--contexts", nargs="+", default=["noisy", "clean"], choices=["noisy", "clean"])
    ap.add_argument("--source-size", type=int, default=None, help="shrink the training set (smoke runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    rows = [run_one(base, e, c, args) for e in args.entities for c in args.contexts]
    meta = {"command": " ".join(["python", "benchmarks/ablate_xar.py", *sys.argv[1:]])}
    meta.update(torch=torch.__version__, device=args.device, steps=args.steps, n=args.n)
    meta["sample_steps"] = args.sample_steps
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xar_ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    cols = ["seen/1obj", "heldout/1obj", "seen/2obj", "heldout/2obj", "swapped/2obj"]
    lines = [
        "# xAR ablation: entity type x context",
        "",
        f"`{meta['command']}` ({args.steps} training steps per cell, {args.n} prompts per group, "
        f"{args.sample_steps} flow steps per entity, device {args.device}). Whole-scene exact match.",
        "",
        "| entity (n) | context | " + " | ".join(cols) + " | judge-FID | val MSE | images/s |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for r in rows:
        cells = [f"{100 * r[c]:.1f}%" for c in cols]
        lines.append(
            f"| {r['entity']} ({r['entities']}) | {r['context']} | " + " | ".join(cells)
            + f" | {r['judge_fid']:.2f} | {r['val_mse']:.4f} | {r['images_per_s']:.1f} |"
        )  # fmt: skip
    (args.out / "xar_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
