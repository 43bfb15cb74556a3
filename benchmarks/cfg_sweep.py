"""Guidance-scale sweep: judge-FID and accuracy of class-conditional (or text) generators over CFG
scales, so a quality comparison (the xAR / DiT frontier) is made at each model's own best guidance
rather than at one shared scale that may suit one family better than the other.

    python benchmarks/cfg_sweep.py --models xar-digits64=8 dit-digits64=16 --cfg 1.5 2 3 4 5 --n 50

``NAME=STEPS`` gives each model its sampling steps (per entity for xAR, per image for DiT; the
frontier's best setting). Every point is ``mmtok eval generation --n N --seed 0 --steps STEPS
--cfg W``: the same seeds and held-out reference images for every model and scale. Writes
``benchmarks/results/cfg_sweep.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from mmtok.eval.generation import evaluate_generation

RESULTS = Path(__file__).resolve().parent / "results"


def parse_model(spec: str) -> tuple[str, int]:
    name, _, steps = spec.partition("=")
    if not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"cfg_sweep: expected NAME=STEPS, got {spec!r}")
    return name, int(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["xar-digits64=8", "dit-digits64=16"])
    ap.add_argument("--cfg", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0, 5.0])
    ap.add_argument("--n", type=int, default=50, help="images per class (per object count for text)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = []
    for spec in args.models:
        name, steps = parse_model(spec)
        for w in args.cfg:
            m = evaluate_generation(name, n=args.n, steps=steps, cfg=w, max_objects=2, progress=False)
            quality = m["accuracy"]["rate"] if "accuracy" in m else m["seen/1obj"]["exact"]["rate"]
            row = {"model": name, "steps": steps, "cfg": w, "judge_fid": m["judge_fid"], "quality": quality}
            rows.append(row)
            print(json.dumps(row), flush=True)
    best = {}
    for r in rows:
        if r["model"] not in best or r["judge_fid"] < best[r["model"]]["judge_fid"]:
            best[r["model"]] = r
    command = " ".join(["python", "benchmarks/cfg_sweep.py", *sys.argv[1:]])
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "n": args.n, "command": command}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "rows": rows, "best": best}
    (args.out / "cfg_sweep.json").write_text(json.dumps(record, indent=1) + "\n")
    scales = list(dict.fromkeys(r["cfg"] for r in rows))
    lines = [
        "# Guidance-scale sweep",
        "",
        f"`{command}` ({meta['machine']}, {meta['threads']} thread(s), torch {meta['torch']}); "
        f"{args.n} images per class, seed 0; judge-FID (accuracy). Bold: each model's lowest judge-FID.",
        "",
        "| model | steps | " + " | ".join(f"CFG {w:g}" for w in scales) + " |",
        "|---|---|" + "---|" * len(scales),
    ]
    for name in best:
        cells = []
        for w in scales:
            r = next(r for r in rows if r["model"] == name and r["cfg"] == w)
            cell = f"{r['judge_fid']:.3f} ({100 * r['quality']:.1f}%)"
            cells.append(f"**{cell}**" if r is best[name] else cell)
        lines.append(f"| {name} | {best[name]['steps']} | " + " | ".join(cells) + " |")
    (args.out / "cfg_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
