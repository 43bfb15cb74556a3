"""Visual token compressors in lightclip-shapes64's image tower: the trade-off table, in one run.

    python benchmarks/bench_compress.py [--threads 1] [--n 1000] [--runs 20] [--warmup 5]

Runs ``mmtok.compression.cli.evaluate`` (the same code as ``mmtok eval compress``): for keep fractions
1, 0.75, 0.5, 0.25, 0.1 and every method -- zero-shot accuracy retained (128-way object classification
of 2 x ``n`` single-object scenes, ``test`` + ``heldout``), tower images/s at batch 64 under bf16
autocast, paired with the uncompressed tower in the same loop (median over ``runs`` after ``warmup``),
at 64x64 (64 tokens, the shipped resolution) and 128x128 (256 tokens, interpolated position
embeddings: speed only), the ideal speed-up L / (l + (L - l) keep) and the share reached; TCC's
density on synthetic documents (Spearman with true ink density). Writes
``benchmarks/results/compression.json`` and ``compression.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmtok.compression.cli import EVAL_METHODS, KEEPS, evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def table(result: dict) -> str:
    acc, speed = result["accuracy"], result["speed"]
    m = result["meta"]
    lines = [
        "# Token compression in the CLIP image tower (lightclip-shapes64)",
        "",
        f"Zero-shot 128-way object accuracy on {m['n_scenes']} single-object scenes (full tower: "
        f"{result['full']['object_acc']:.3f}); retained = compressed / full. Speed: batch {m['batch']}, "
        f"bf16 autocast, {m['threads']} thread(s), median of {m['runs']} paired runs after {m['warmup']} "
        f"warm-up; speed-up = median of (full time / compressed time); ideal = L / (l + (L - l) keep), "
        f"L = {m['depth']}; 'of ideal' = speed-up / ideal.",
        "",
    ]
    resolutions = list(speed)
    head = "| method | l | keep | tokens | acc. retained | agreement |"
    sep = "|---|---:|---:|---:|---:|---:|"
    for res in resolutions:
        head += f" img/s @{res} (full) | speed-up @{res} | of ideal @{res} |"
        sep += "---:|---:|---:|"
    lines += [head, sep]
    for name, rows in acc.items():
        for keep, a in rows.items():
            s0 = speed[resolutions[0]][name][keep]
            row = (
                f"| {name} | {s0['layer']} | {keep} | {s0['tokens_left']} | {a['acc_retained']:.3f} | "
                f"{a['agreement']:.3f} |"
            )
            for res in resolutions:
                s = speed[res][name].get(keep)
                if s is None:
                    row += " | | |"
                    continue
                row += (
                    f" {s['images_per_s']:,.0f} ({s['images_per_s_full']:,.0f}) | {s['speedup']:.2f}x "
                    f"(ideal {s['ideal']:.2f}x) | {s['of_ideal']:.0%} |"
                )
            lines.append(row)
    d = result["documents"]
    lines += [
        "",
        f"Documents ({d['pages']} pages, {d['crops']} sub-images, {d['page']}): Spearman(TCC density, ink) = "
        f"{d['spearman']:.3f}; Spearman(token budget, ink) = {d['spearman_budget']:.3f}; median per page "
        f"{d['median_page_spearman']:.3f}; tau = {d['tau']} (calibrated on other pages: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in d["calibration"].items())
        + ").",
        "",
        "## Targets (keep 0.5)",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for key, t in result["targets"].items():
        v = t["value"]
        v = ", ".join(f"{x:.3f}" for x in v) if isinstance(v, list) else f"{v:.3f}"
        lines.append(f"| {key} | {v} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=1000, help="scenes per split (test, heldout)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--methods", nargs="+", default=list(EVAL_METHODS))
    parser.add_argument("--model", default="lightclip-shapes64")
    parser.add_argument("--predictor", default="explain-shapes64")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = evaluate(
        model=args.model, predictor=args.predictor, n=args.n, keeps=KEEPS, methods=tuple(args.methods),
        batch=args.batch, warmup=args.warmup, runs=args.runs, resolutions=tuple(args.resolutions),
        doc_pages=args.pages,
    )  # fmt: skip
    result["meta"]["command"] = "python benchmarks/bench_compress.py " + " ".join(argv or sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (args.out / "compression.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
