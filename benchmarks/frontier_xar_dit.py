"""Quality-speed frontier of xAR against the DiT baseline, in one run: sweep the sampling steps of
both, measure judge-FID (and accuracy) with ``mmtok eval generation`` and images/s at batch 1 and 64,
and read off how much faster xAR is at the DiT baseline's best judge-FID.

    python benchmarks/frontier_xar_dit.py [--xar xar-digits64] [--dit dit-digits64] [--n 50]

Defaults are the shipped class-conditional digits pair, trained by their configs for the same
number of optimizer steps on the same cached latents, with matched parameter counts. Each point:
``--n`` images per class (per object count for text models), seed 0, Euler-Maruyama, bf16, CFG
``--xar-cfg`` / ``--dit-cfg`` (default 3 both; ``cfg_sweep.py`` finds each family's best).
xAR spends ``steps`` network evaluations per entity (4 cells), DiT ``steps`` per image.

The target (issue 4): at the DiT baseline's best judge-FID, xAR is >= 3x faster. Reading: the DiT
setting with the lowest judge-FID; the fastest xAR setting whose judge-FID is at most that; the
ratio of their images/s. Writes ``benchmarks/results/frontier.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from compare_generators import images_per_s, nfe  # same timing code as the generator comparison

from mmtok.eval.generation import evaluate_generation
from mmtok.generation.pipeline import GenerationPipeline

RESULTS = Path(__file__).resolve().parent / "results"


def sweep(name: str, steps_list: list[int], cfg: float, args) -> list[dict]:
    pipe = GenerationPipeline(name, device="cpu")
    rows = []
    for steps in steps_list:
        m = evaluate_generation(name, n=args.n, steps=steps, cfg=cfg, max_objects=2, progress=False)
        quality = {"accuracy": m["accuracy"]["rate"]} if "accuracy" in m else {
            "exact_seen_1obj": m["seen/1obj"]["exact"]["rate"]}  # fmt: skip
        row = {"model": name, "family": type(pipe.model).__name__, "steps": steps, "cfg": cfg,
               "nfe_per_image": nfe(pipe.model, steps), "judge_fid": m["judge_fid"], **quality,
               "images_per_s_b1": images_per_s(pipe, 1, steps, args.repeats, cfg=cfg),
               f"images_per_s_b{args.batch}": images_per_s(pipe, args.batch, steps, args.repeats, cfg=cfg),
               }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def read_off(xar: list[dict], dit: list[dict], batch: int) -> dict:
    """xAR's speed-up at the DiT baseline's best judge-FID (None where xAR never gets there)."""
    best = min(dit, key=lambda r: r["judge_fid"])
    ok = [r for r in xar if r["judge_fid"] <= best["judge_fid"]]
    out = {
        "dit_best": {k: best[k] for k in ("steps", "judge_fid")},
        "xar_best_fid": min(r["judge_fid"] for r in xar),
    }
    for key in ("images_per_s_b1", f"images_per_s_b{batch}"):
        fastest = max(ok, key=lambda r: r[key]) if ok else None
        out[key] = None if fastest is None else {
            "xar_steps": fastest["steps"], "xar_judge_fid": fastest["judge_fid"],
            "speedup": fastest[key] / best[key]}  # fmt: skip
    return out


def plot(rows: list[dict], path: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("images_per_s_b1", f"images_per_s_b{batch}"), strict=True):
        for family in dict.fromkeys(r["family"] for r in rows):
            pts = sorted((r[key], r["judge_fid"], r["steps"]) for r in rows if r["family"] == family)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=family)
            for x, y, s in pts:
                ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"images/s, batch {key.rsplit('b', 1)[1]}")
        ax.set_ylabel("judge-FID (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--xar", default="xar-digits64")
    ap.add_argument("--dit", default="dit-digits64")
    ap.add_argument("--xar-steps", nargs="+", type=int, default=[2, 4, 8, 16, 32])
    ap.add_argument("--dit-steps", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    ap.add_argument("--xar-cfg", type=float, default=3.0, help="xAR's guidance scale (cfg_sweep.py)")
    ap.add_argument("--dit-cfg", type=float, default=3.0, help="DiT's guidance scale (cfg_sweep.py)")
    ap.add_argument("--n", type=int, default=50, help="images per class (per object count for text)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    xar = sweep(args.xar, args.xar_steps, args.xar_cfg, args)
    dit = sweep(args.dit, args.dit_steps, args.dit_cfg, args)
    verdict = read_off(xar, dit, args.batch)
    command = " ".join(["python", "benchmarks/frontier_xar_dit.py", *sys.argv[1:]])
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "n": args.n, "command": command}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(
        json.dumps({"meta": meta, "rows": xar + dit, "verdict": verdict}, indent=1) + "\n"
    )
    plot(xar + dit, args.out / "frontier.png", args.batch)
    quality = "accuracy" if "accuracy" in xar[0] else "exact_seen_1obj"
    lines = [
        f"# Quality-speed frontier: {args.xar} vs {args.dit}",
        "",
        f"`{meta['command']}` ({meta['machine']}, {meta['threads']} thread(s), torch {meta['torch']}); "
        f"{args.n} images per class, seed 0, CFG {args.xar_cfg:g} (xAR) / {args.dit_cfg:g} (DiT), bf16; "
        "images/s include decoding.",
        "",
        f"| model | steps | evaluations per image | judge-FID | {quality} | images/s b1 "
        f"| images/s b{args.batch} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in xar + dit:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['nfe_per_image']} | {r['judge_fid']:.3f} | "
            f"{100 * r[quality]:.1f}% | {r['images_per_s_b1']:.2f} | {r[f'images_per_s_b{args.batch}']:.1f} |"
        )
    best = verdict["dit_best"]
    lines += ["", f"DiT's best judge-FID: {best['judge_fid']:.3f} at {best['steps']} steps."]
    for key in ("images_per_s_b1", f"images_per_s_b{args.batch}"):
        v = verdict[key]
        where = key.rsplit("_", 1)[1]
        lines.append(
            f"- {where}: xAR never reaches it (best {verdict['xar_best_fid']:.3f})"
            if v is None
            else f"- {where}: xAR at {v['xar_steps']} steps per entity (judge-FID {v['xar_judge_fid']:.3f}) "
            f"is **{v['speedup']:.2f}x** DiT's images/s (target 3x)"
        )
    lines += ["", "![frontier](frontier.png)"]
    (args.out / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
