"""bf16 autocast against fp32 on this machine, in one run, and what ``mmtok.runtime`` chose for it.

    python benchmarks/bench_precision.py [--threads 1] [--repeats 1]

bf16 pays only where the CPU has native bf16 dot products (AVX512-BF16 or AMX on x86, BF16 on Arm);
elsewhere oneDNN emulates it. This times, under ``torch.inference_mode()``, a 1024^3 matmul, a 3x3
conv (64 -> 64 channels, batch 32 at 64x64) and the shipped ``kl-f8-64`` encode + decode of 16 held-out
shapes scenes, each in fp32 and under bf16 autocast (median of ``--repeats`` after one warm-up), and
records the CPU's bf16 flags next to ``mmtok.runtime.bf16_is_fast('cpu')``: the speed ratio says
whether the detection chose right. Writes ``benchmarks/results/precision.json`` and ``precision.md``.
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

from mmtok import runtime

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(fn, bf16: bool, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            ctx = (
                torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
            )
            t0 = time.perf_counter()
            with ctx:
                fn()
            if i:  # the first call warms oneDNN's kernel cache
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    words = line.split(":", 1)[1].split()
                    return sorted(w for w in words if "bf16" in w or w in ("avx2", "avx512f", "amx_tile"))
    except OSError:
        pass
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from mmtok import load
    from mmtok.data import build_dataset

    a = torch.randn(1024, 1024)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    feats = torch.randn(32, 64, 64, 64)
    tokenizer = load("kl-f8-64")
    shapes = build_dataset("shapes", "heldout", resolution=64, seed=0)
    scenes = torch.stack([shapes[i]["image"] for i in range(16)])
    cases = {
        "matmul 1024^3": lambda: a @ a,
        "conv 3x3 64ch, batch 32 at 64x64": lambda: conv(feats),
        "kl-f8-64 encode+decode, batch 16": lambda: tokenizer.decode(tokenizer.encode(scenes)),
    }
    rows = []
    for what, fn in cases.items():
        fp32 = _median_seconds(fn, False, args.repeats)
        bf16 = _median_seconds(fn, True, args.repeats)
        rows.append({"case": what, "fp32_s": fp32, "bf16_s": bf16, "bf16_speedup": fp32 / bf16})
        print(
            f"{what}: fp32 {fp32 * 1e3:.1f} ms, bf16 {bf16 * 1e3:.1f} ms, bf16/fp32 speed {fp32 / bf16:.2f}x"
        )
    chose = runtime.bf16_is_fast("cpu")
    faster = all(r["bf16_speedup"] > 1 for r in rows)
    result = {
        "command": "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "bf16_flags": _cpu_flags(),
        },
        "rows": rows,
        "bf16_is_fast": chose,
        "bf16_faster_on_every_case": faster,
        "detection_right": chose == faster,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# bf16 autocast vs fp32 on this machine",
        "",
        f"`{result['command'].strip()}`; {result['machine']['cpu']}, {args.threads} thread(s), torch "
        f"{torch.__version__}; CPU flags: {', '.join(result['machine']['bf16_flags']) or 'none read'}.",
        "",
        "| case | fp32 | bf16 autocast | bf16 / fp32 speed |",
        "|---|---|---|---|",
        *(
            f"| {r['case']} | {r['fp32_s'] * 1e3:.1f} ms | {r['bf16_s'] * 1e3:.1f} ms "
            f"| {r['bf16_speedup']:.2f}x |"
            for r in rows
        ),
        "",
        f"`mmtok.runtime.bf16_is_fast('cpu')`: **{chose}**; bf16 faster on every case: {faster}; "
        f"the detection chose {'right' if chose == faster else 'WRONG'}.",
        "",
    ]
    (RESULTS / "precision.md").write_text("\n".join(lines))
    print(f"bf16_is_fast: {chose}; detection {'right' if chose == faster else 'WRONG'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
