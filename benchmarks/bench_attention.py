"""Attention kernels at the generators' sampling shapes, bf16 on CPU, in one run: PyTorch's fused
``F.scaled_dot_product_attention`` against ``mmtok.nn.attention.attention`` (two bf16 matmuls with an
fp32 softmax, what the generators use for bf16 inference on CPU), and the fused kernel's ``MATH``
backend for reference.

    python benchmarks/bench_attention.py [--threads 1] [--repeats 20]

Shapes (batch x heads x queries x keys, head dim 48, CFG doubles the batch): ELM decoding one
position against a 64-position cache (self) or 48 prompt tokens (cross); an xAR cell entity of 16
tokens against the cache; a whole 64-token sequence; batch 1 (2 rows with CFG), where the fused
kernel is kept. Writes ``benchmarks/results/attention.json`` and ``attention.md``.
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
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmtok.nn.attention import attention

RESULTS = Path(__file__).resolve().parent / "results"
HEADS, HEAD_DIM = 4, 48
SHAPES = [  # (what, batch rows, queries, keys)
    ("ELM decode, self", 128, 1, 64),
    ("ELM decode, cross (text)", 128, 1, 48),
    ("xAR cell entity vs cache", 128, 16, 64),
    ("whole sequence (fused kept)", 128, 64, 64),
    ("batch 1 decode (fused kept)", 2, 1, 64),
]


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for what, B, Lq, Lk in SHAPES:
            q, k, v = (torch.randn(B, HEADS, n, HEAD_DIM, generator=g).bfloat16() for n in (Lq, Lk, Lk))
            mask = torch.ones(B, 1, 1, Lk, dtype=torch.bool)
            mask[: B // 2, ..., Lk * 3 // 4 :] = False  # padded keys in half the rows

            def math_backend(q=q, k=k, v=v, mask=mask):
                with sdpa_kernel(SDPBackend.MATH):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            fused = timed(lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                          args.repeats)  # fmt: skip
            ours = timed(lambda q=q, k=k, v=v, m=mask: attention(q, k, v, m), args.repeats)
            err = (attention(q, k, v, mask).float() - F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask)).abs().max().item()  # fmt: skip
            rows.append({"shape": what, "batch_rows": B, "queries": Lq, "keys": Lk, "fused_ms": fused,
                         "mmtok_ms": ours, "math_backend_ms": timed(math_backend, args.repeats),
                         "speedup": fused / ours, "max_abs_err_vs_fp32": err})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "command": "python " + " ".join(["benchmarks/bench_attention.py", *sys.argv[1:]])}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# Attention kernels, bf16 on CPU ({meta['machine']}, {args.threads} thread(s), "
        f"torch {meta['torch']})",
        "",
        f"`{meta['command']}`; {HEADS} heads x head dim {HEAD_DIM}, median of {args.repeats} calls, "
        "key-padding mask on half the rows. `mmtok` = `mmtok.nn.attention.attention` (the fused "
        "kernel below 64 batch x head rows, above 16 queries or with gradients on).",
        "",
        "| shape | B x H x Lq x Lk | fused SDPA ms | mmtok ms | SDPA MATH ms | fused / mmtok "
        "| max abs err vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dims = f"{r['batch_rows']} x {HEADS} x {r['queries']} x {r['keys']}"
        lines.append(
            f"| {r['shape']} | {dims} | {r['fused_ms']:.3f} | {r['mmtok_ms']:.3f} | "
            f"{r['math_backend_ms']:.3f} | {r['speedup']:.2f}x | {r['max_abs_err_vs_fp32']:.4f} |"
        )
    (RESULTS / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if os.environ.get("OMP_NUM_THREADS") is None:
        os.environ["OMP_NUM_THREADS"] = "1"
    main()
