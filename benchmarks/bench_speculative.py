"""Token Recycling speculative decoding against plain KV-cache decoding, for ELM models, in one run.

    python benchmarks/bench_speculative.py [--models elm-shapes64] [--trees 2,1,1 3,2,1,1,1,1,1,1]
        [--prompts 6] [--repeats 3] [--bf16]

Batch 1 (speculative decoding accepts drafts per sequence), greedy and sampled, the same prompts and
seeds for both decoders: tokens/s of each (median over ``--repeats`` of each prompt), their ratio,
the tokens accepted per forward pass and, for greedy decoding, whether every image's codes are
identical (they must be: the method is lossless). The adjacency table is warmed on one image first
and then persists, as it does in use. Writes ``benchmarks/results/speculative.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mmtok import hub
from mmtok.generation.speculative import DEFAULT_TREE, SpeculativeELM, SpeculativeStats
from mmtok.runtime import autocast

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = [
    "a small red circle in the middle",
    "a big blue star at the top left",
    "a green heart at the bottom and a small yellow square on the right",
    "a white ring on the left",
    "a small orange cross at the top right",
    "a big cyan diamond in the middle",
]


def measure(model, prompts: list[str], temperature: float, repeats: int, tree=DEFAULT_TREE) -> dict:
    spec = SpeculativeELM(model, tree=tuple(tree))
    spec.sample([prompts[0]], temperature=temperature, generator=torch.Generator().manual_seed(99))  # warm
    spec.stats = SpeculativeStats()
    plain, fast, identical = [], [], True
    for i, prompt in enumerate(prompts):
        tp, tf = [], []
        for r in range(repeats):
            g = torch.Generator().manual_seed(1000 * i + r)
            t = time.perf_counter()
            a = model.sample([prompt], temperature=temperature, generator=g)
            tp.append(time.perf_counter() - t)
            g = torch.Generator().manual_seed(1000 * i + r)
            t = time.perf_counter()
            b = spec.sample([prompt], temperature=temperature, generator=g)
            tf.append(time.perf_counter() - t)
            identical &= bool(torch.equal(a, b))
        plain.append(statistics.median(tp))
        fast.append(statistics.median(tf))
    L = model.seq_len
    row = {
        "decoding": "greedy" if temperature == 0 else "sampled",
        "plain_tokens_per_s": round(L * len(prompts) / sum(plain), 2),
        "speculative_tokens_per_s": round(L * len(prompts) / sum(fast), 2),
        "speedup": round(sum(plain) / sum(fast), 3),
        **spec.stats.as_dict(),
    }
    if temperature == 0:
        row["identical_codes"] = identical
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["elm-shapes64"])
    ap.add_argument("--prompts", type=int, default=6, help=f"how many of the {len(PROMPTS)} prompts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--trees",
        nargs="+",
        default=[",".join(map(str, DEFAULT_TREE)), "3,2,1,1,1,1,1,1"],
        help="draft branchings to compare, e.g. 2,1,1 (default: the default tree, then the old default)",
    )
    ap.add_argument("--bf16", action="store_true", help="under bf16 autocast (as compare_generators.py)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        trees = [tuple(int(w) for w in t.split(",")) for t in args.trees]
    except ValueError:
        raise SystemExit(
            f"--trees takes comma-separated branchings such as 2,1,1, got {args.trees}"
        ) from None
    prompts = PROMPTS[: max(1, min(args.prompts, len(PROMPTS)))]
    command = "python benchmarks/bench_speculative.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    for name in args.models:
        model = hub.load(name).eval()
        if type(model).__name__ != "ELM":
            raise SystemExit(f"{name} is not an ELM model")
        # fp32 by default: emulated bf16 is slower than fp32 on CPUs without native bf16
        with torch.no_grad(), autocast("cpu", enabled=args.bf16):
            for tree, temperature in itertools.product(trees, (0.0, 1.0)):
                row = {"model": name, "bits": model.bits, "sub_tokens": model.sub_tokens, "tree": list(tree)}
                row |= measure(model, prompts, temperature, args.repeats, tree)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "command": command,
        "threads": args.threads,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "prompts": len(prompts),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speculative.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Speculative decoding (Token Recycling) vs plain KV-cache decoding, batch 1",
        "",
        f"Measured by `{command}` ({args.threads} thread(s), {result['precision']}, {len(prompts)} prompts x "
        f"{args.repeats} repeats, torch {torch.__version__}).",
        "",
        "| model | bits (sub-tokens) | tree | decoding | plain tokens/s | speculative tokens/s | speedup "
        "| tokens per pass | drafted accepted | identical codes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['bits']} ({r['sub_tokens']}) | {','.join(map(str, r['tree']))} "
            f"| {r['decoding']} | {r['plain_tokens_per_s']} "
            f"| {r['speculative_tokens_per_s']} | {r['speedup']}x | {r['tokens_per_pass']} "
            f"| {r['accepted']} of {r['drafted']} | {r.get('identical_codes', 'n/a (sampled)')} |"
        )
    (RESULTS / "speculative.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
