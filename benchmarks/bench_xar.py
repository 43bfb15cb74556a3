"""xAR sampling speed on this machine, in one run: KV cache on/off, bf16 vs fp32, batch 1 vs 64, and the
achieved GFLOP/s as a fraction of the machine's bf16 matrix-multiply rate measured in the same run.

    python benchmarks/bench_xar.py [--config configs/xar-shapes64.yaml] [--steps 10] [--repeats 3]

The model is the architecture of ``--config`` with random weights (speed does not depend on training).
FLOPs of a sampling call are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products
and attention), so "achieved" = counted FLOPs / wall time. Cases:

- ``cache``: every entity type (token, cell, subsample, scale, image), batch 64 (CFG doubles it),
  KV cache on and off: with the cache each entity costs the same, so time grows linearly with the
  number of entities; without it every step re-runs the whole prefix.
- ``precision``: the configured entity, batch 1 and 64, fp32 and bf16 autocast.

Writes ``benchmarks/results/xar_speed.json`` and ``xar_speed.md``.
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
import yaml
from torch.utils.flop_counter import FlopCounterMode

from mmtok.generation.xar import XAR
from mmtok.runtime import autocast

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_rate(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix product (median of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        times.append((time.perf_counter() - t) / 4)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_sampling(model, n: int, steps: int, bf16: bool, cache: bool, repeats: int) -> tuple[float, float]:
    """(median seconds per call, counted GFLOP per call)."""
    prompts = ["a small red circle in the middle"] * n if model.condition == "text" else [1] * n

    def run():
        with torch.no_grad(), autocast("cpu", enabled=bf16):
            model.sample(
                prompts, steps=steps, cfg=3.0, generator=torch.Generator().manual_seed(0), kv_cache=cache
            )

    run()  # warm-up
    # Count FLOPs on the reference path: the fused MHA fast path of nn.TransformerEncoder (the text
    # encoder) does not run under the counter's dispatch mode; its FLOPs are the same.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/xar-shapes64.yaml")
    ap.add_argument("--steps", type=int, default=10, help="flow steps per entity")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    kwargs = yaml.safe_load(Path(args.config).read_text())["model"]["kwargs"]
    torch.manual_seed(0)

    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    print(f"matmul 1024^3: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s", flush=True)

    rows = []
    for entity in ("token", "cell", "subsample", "scale", "image"):
        model = XAR(**{**kwargs, "entity": entity}).eval()
        E = model.entities.num_entities
        for cache in (True, False):
            if entity == "image" and not cache:
                continue  # one entity: nothing to cache
            sec, gflop = time_sampling(model, args.batch, args.steps, True, cache, args.repeats)
            row = {"case": "cache", "entity": entity, "entities": E, "kv_cache": cache, "batch": args.batch}
            row.update(bf16=True, seconds=sec, images_per_s=args.batch / sec, gflop=gflop)
            row.update(gflops_achieved=gflop / sec, ms_per_entity=1000 * sec / E)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    model = XAR(**kwargs).eval()
    for batch in (1, args.batch):
        for bf16 in (False, True):
            sec, gflop = time_sampling(model, batch, args.steps, bf16, True, args.repeats)
            peak = rates["bf16" if bf16 else "fp32"]
            row = {"case": "precision", "entity": kwargs.get("entity", "cell"), "batch": batch, "bf16": bf16}
            row.update(kv_cache=True, seconds=sec, images_per_s=batch / sec, gflop=gflop)
            row.update(gflops_achieved=gflop / sec, fraction_of_matmul_rate=gflop / sec / peak)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)

    prec = {(r["batch"], r["bf16"]): r for r in rows if r["case"] == "precision"}
    cache = {(r["entity"], r["kv_cache"]): r for r in rows if r["case"] == "cache"}
    summary = {
        "bf16_over_fp32_batch64": prec[(args.batch, True)]["images_per_s"]
        / prec[(args.batch, False)]["images_per_s"],
        "bf16_over_fp32_batch1": prec[(1, True)]["images_per_s"] / prec[(1, False)]["images_per_s"],
        "batch64_bf16_fraction_of_bf16_matmul_rate": prec[(args.batch, True)]["fraction_of_matmul_rate"],
        "cache_speedup": {
            e: cache[(e, True)]["images_per_s"] / cache[(e, False)]["images_per_s"]
            for e in ("token", "cell", "subsample", "scale")
        },  # fmt: skip
    }
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "config": args.config,
            "steps": args.steps, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "matmul_gflops": rates, "rows": rows, "summary": summary}
    (args.out / "xar_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    head = f"# xAR sampling speed ({meta['machine']}, {meta['threads']} threads, torch {meta['torch']})"
    lines = [
        head,
        "",
        f"`python benchmarks/{meta['command']}`; random weights of `{args.config}`, {args.steps} steps per "
        f"entity, CFG (doubled batch). Matrix-multiply rate measured in the same run: fp32 "
        f"{rates['fp32']:.0f}, bf16 {rates['bf16']:.0f} GFLOP/s.",
        "",
        "| case | entity (n) | batch | bf16 | KV cache | images/s | ms per entity | GFLOP/s achieved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = f"{r['ms_per_entity']:.0f}" if "ms_per_entity" in r else ""
        ent = f"{r['entity']} ({r['entities']})" if "entities" in r else r["entity"]
        cells = [r["case"], ent, r["batch"], r["bf16"], r["kv_cache"], f"{r['images_per_s']:.2f}", ms]
        lines.append("| " + " | ".join(map(str, cells)) + f" | {r['gflops_achieved']:.0f} |")
    frac = 100 * summary["batch64_bf16_fraction_of_bf16_matmul_rate"]
    lines += [
        "",
        f"- bf16 / fp32 throughput: {summary['bf16_over_fp32_batch64']:.2f}x at batch {args.batch}, "
        f"{summary['bf16_over_fp32_batch1']:.2f}x at batch 1",
        f"- batch-{args.batch} bf16 sampling reaches {frac:.0f}% of the measured bf16 matmul rate",
        "- KV cache speed-up (images/s with / without): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in summary["cache_speedup"].items()),
        "",
    ]
    (args.out / "xar_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
