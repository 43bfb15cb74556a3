"""One comparison of every shipped shapes generator, in one run: xAR, ECAR, ELM (plain, without KV
cache, and with Token Recycling speculative decoding) and the DiT baseline.

    python benchmarks/compare_generators.py [--n 64] [--repeats 3]

Per model: whole-scene prompt accuracy on seen prompts (1 and 2 objects) and judge-FID from
``mmtok eval generation`` (``--n`` prompts per object count; the shipped cards hold the 256-prompt
figures), network evaluations per image, and images/s at batch 1 and 64 (bf16 autocast, sampling +
decoding, median of ``--repeats``). ELM rows add: decoding without a KV cache (what ELM's release
does) and speculative decoding at batch 1 (greedy and sampled), with the measured tokens per forward
pass. Speculative decoding is lossless, so its accuracy is ELM's (greedy: identical images, a test
checks it; sampling: the same distribution).

Models that are not shipped yet are listed as missing, not skipped silently. Writes
``benchmarks/results/generators.json`` and ``docs/generators.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mmtok.errors import MmtokError
from mmtok.generation.pipeline import GenerationPipeline, decode
from mmtok.runtime import autocast

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "a small red circle in the middle"
# Sampling settings per family: what each model's card is evaluated with.
STEPS = {"XAR": 20, "ECAR": 6, "DiTBaseline": 20, "ELM": 1}


def nfe(model, steps: int) -> int:
    """Network evaluations per image (CFG doubles the batch, not the count)."""
    kind = type(model).__name__
    if kind == "ECAR":
        return model.network_evaluations(steps)
    if kind == "XAR":
        return model.entities.num_entities * steps
    if kind == "ELM":
        return model.seq_len
    return steps


def images_per_s(
    pipe, batch: int, steps: int, repeats: int, decode_images: bool = True, cfg: float = 3.0, **kw
) -> float:
    """Images/s of sampling (+ the tokenizer's decoding unless ``decode_images`` is off)."""
    model = pipe.model
    cond = [PROMPT if pipe.condition == "text" else 0] * batch

    def run():
        # no_grad, not inference_mode: under inference_mode autocast does not cache the bf16 copies
        # of the weights, so every call would re-cast them (the pipeline runs under no_grad too).
        with torch.no_grad(), autocast(pipe.device, enabled=True):
            out = model.sample(cond, steps=steps, cfg=cfg, generator=torch.Generator().manual_seed(0), **kw)
            if decode_images:
                decode(pipe.tokenizer, out)

    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def speculative_rows(pipe, repeats: int) -> list[dict]:
    from mmtok.generation.speculative import SpeculativeELM

    model, rows = pipe.model, []
    for temperature in (0.0, 1.0):
        spec = SpeculativeELM(model)
        with torch.no_grad(), autocast(pipe.device, enabled=True):
            spec.sample([PROMPT], temperature=temperature)  # warm the adjacency table once
            spec.stats = type(spec.stats)()
            plain, fast = [], []
            for r in range(repeats):
                g = torch.Generator().manual_seed(r)
                t = time.perf_counter()
                model.sample([PROMPT], temperature=temperature, generator=g)
                plain.append(time.perf_counter() - t)
                g = torch.Generator().manual_seed(r)
                t = time.perf_counter()
                spec.sample([PROMPT], temperature=temperature, generator=g)
                fast.append(time.perf_counter() - t)
        L = model.seq_len
        rows.append({"decoding": "greedy" if temperature == 0 else "sampled", "batch": 1,
                     "plain_tokens_per_s": L / statistics.median(plain),
                     "speculative_tokens_per_s": L / statistics.median(fast),
                     "speedup": statistics.median(plain) / statistics.median(fast),
                     **spec.stats.as_dict()})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=["xar-shapes64", "ecar-shapes64", "elm-shapes64", "dit-shapes64"]
    )
    ap.add_argument("--n", type=int, default=64, help="prompts per object count for accuracy and FID")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-quality", action="store_true", help="speed only")
    ap.add_argument(
        "--trained", nargs="*", default=[], metavar="NAME=STEPS",
        help="training steps per model, shown in the table (budgets differ unless you say so)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from mmtok.eval.generation import evaluate_generation

    trained = dict(_pair(t) for t in args.trained)
    rows, missing, spec = [], [], []
    for name in args.models:
        try:
            pipe = GenerationPipeline(name, device="cpu")
        except MmtokError as e:
            missing.append({"model": name, "why": str(e).splitlines()[0]})
            print(f"{name}: missing ({missing[-1]['why']})", flush=True)
            continue
        model, kind = pipe.model, type(pipe.model).__name__
        steps = STEPS.get(kind, 20)
        row = {"model": name, "family": kind, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "steps": steps, "nfe_per_image": nfe(model, steps),
               "trained_steps": trained.get(name)}  # fmt: skip
        if not args.skip_quality:
            m = evaluate_generation(name, n=args.n, steps=steps, cfg=3.0, max_objects=2, progress=False)
            row["exact_seen_1obj"] = m["seen/1obj"]["exact"]["rate"]
            row["exact_seen_2obj"] = m["seen/2obj"]["exact"]["rate"]
            row["judge_fid"] = m["judge_fid"]
        for batch in (1, args.batch):
            row[f"images_per_s_b{batch}"] = images_per_s(pipe, batch, steps, args.repeats)
        if kind == "ELM":
            for batch in (1, args.batch):
                row[f"no_cache_images_per_s_b{batch}"] = images_per_s(
                    pipe, batch, steps, max(1, args.repeats - 2), kv_cache=False
                )
                row[f"kv_cache_speedup_b{batch}"] = (
                    row[f"images_per_s_b{batch}"] / row[f"no_cache_images_per_s_b{batch}"]
                )
                # The cache target is about decoding tokens: the image decoder is the same either way,
                # so it is timed out here (tokens/s = positions x images/s).
                reps = max(1, args.repeats - 2)
                cached, plain = (
                    images_per_s(pipe, batch, steps, reps, decode_images=False, kv_cache=kv)
                    for kv in (True, False)
                )
                row[f"tokens_per_s_b{batch}"] = cached * model.seq_len
                row[f"no_cache_tokens_per_s_b{batch}"] = plain * model.seq_len
                row[f"kv_cache_token_speedup_b{batch}"] = cached / plain
            spec = speculative_rows(pipe, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "n": args.n,
            "command": " ".join(["python benchmarks/compare_generators.py", *sys.argv[1:]])}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "rows": rows, "speculative": spec, "missing": missing}
    (RESULTS / "generators.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record)


def _pair(text: str) -> tuple[str, int]:
    name, _, steps = text.partition("=")
    if not name or not steps.isdigit():
        raise SystemExit(f"--trained takes NAME=STEPS, got {text!r}")
    return name, int(steps)


def _f(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def write_markdown(record: dict) -> None:
    meta = record["meta"]
    lines = [
        "# Generators compared on shapes",
        "",
        f"Measured by `{meta['command']}`",
        f"({meta['machine']}, {meta['threads']} threads, torch {meta['torch']}),",
        f"{meta['n']} seen prompts per object count; bf16 autocast; images/s include decoding.",
        "",
        "| model | family | params (M) | trained steps | sampling steps | NFE / image | exact 1 obj |"
        " exact 2 obj | judge-FID | images/s b1 | images/s b64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['model']} | {r['family']} | {r['params_m']:.1f} | {_f(r.get('trained_steps'), '{:,}')} | "
            f"{r['steps']} | {r['nfe_per_image']} | "
            f"{_f(r.get('exact_seen_1obj'), '{:.1%}')} | {_f(r.get('exact_seen_2obj'), '{:.1%}')} | "
            f"{_f(r.get('judge_fid'))} | {r['images_per_s_b1']:.2f} | {r['images_per_s_b64']:.1f} |"
        )
    for r in record["rows"]:
        if r["family"] == "ELM":
            b1, b64 = r["no_cache_images_per_s_b1"], r["no_cache_images_per_s_b64"]
            s1, s64 = r["kv_cache_speedup_b1"], r["kv_cache_speedup_b64"]
            lines += ["", f"ELM decoding without a KV cache (ELM's release): {b1:.2f} images/s at batch 1, "
                      f"{b64:.1f} at batch 64; the cache is {s1:.1f}x / {s64:.1f}x faster."]  # fmt: skip
            if "kv_cache_token_speedup_b1" in r:
                t1, t64 = r["kv_cache_token_speedup_b1"], r["kv_cache_token_speedup_b64"]
                lines += ["", f"Token decoding alone (no image decoder): {r['tokens_per_s_b1']:.0f} vs "
                          f"{r['no_cache_tokens_per_s_b1']:.0f} positions/s at batch 1 ({t1:.1f}x), "
                          f"{r['tokens_per_s_b64']:.0f} vs {r['no_cache_tokens_per_s_b64']:.0f} at batch 64 "
                          f"({t64:.1f}x) with and without the cache."]  # fmt: skip
    if record["speculative"]:
        lines += ["", "| ELM speculative decoding (batch 1) | plain tokens/s | speculative tokens/s |"
                  " speed-up | tokens per pass |", "|---|---|---|---|---|"]  # fmt: skip
        for s in record["speculative"]:
            plain, fast = s["plain_tokens_per_s"], s["speculative_tokens_per_s"]
            lines.append(f"| {s['decoding']} | {plain:.0f} | {fast:.0f} | {s['speedup']:.2f}x | "
                         f"{s['tokens_per_pass']:.2f} |")  # fmt: skip
    if record["missing"]:
        lines += [
            "",
            "Not measured (not shipped yet): " + ", ".join(m["model"] for m in record["missing"]) + ".",
        ]
    (ROOT / "docs" / "generators.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
