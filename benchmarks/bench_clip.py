"""Image-tower speed of LightCLIP's towers next to open_clip's smallest standard ViT, in one run.

    python benchmarks/bench_clip.py [--threads 1] [--warmup 5] [--runs 30]

Towers (image side only, as used at inference, random weights -- speed does not depend on them):

- ``lightclip-vit-p8-64``: mmtok's timm ViT, patch 8 at 64x64 (64 tokens), width 128, 4 blocks;
- ``lightclip-cnn-64``: mmtok's narrow timm ResNet option (4x4 tokens);
- ``ViT-S-16 @64``: open_clip's smallest standard ViT config (``ViT-S-16``), built with
  ``force_image_size=64`` (patch 16 -> 16 tokens), the same resolution.

Each is timed at batch 1 and 64, fp32 and bf16 autocast, under ``torch.inference_mode`` with
``torch.set_num_threads(threads)``: ``warmup`` untimed calls, then ``runs`` timed ones; images/s is
reported as the median (and the inter-quartile range) over the runs. Writes
``benchmarks/results/clip_towers.json`` and ``clip_towers.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

from mmtok.clip.model import LightCLIP

RESULTS = Path(__file__).resolve().parent / "results"


def towers() -> dict[str, torch.nn.Module]:
    out = {}
    for arch in ("lightclip-vit-p8-64", "lightclip-cnn-64"):
        out[arch] = LightCLIP(arch=arch).clip.visual.eval()
    out["ViT-S-16 @64 (open_clip)"] = open_clip.create_model("ViT-S-16", force_image_size=64).visual.eval()
    return out


def time_tower(tower, batch: int, bf16: bool, warmup: int, runs: int) -> dict[str, float]:
    images = torch.randn(batch, 3, 64, 64)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            tower(images)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    rates = sorted(batch / t for t in times)
    q = statistics.quantiles(rates, n=4)
    return {"images_per_s": statistics.median(rates), "iqr": [q[0], q[2]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)  # 2 on a shared 2-core box: OpenMP waits dominate
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, tower in towers().items():
        params = sum(p.numel() for p in tower.parameters())
        for batch in (1, 64):
            for bf16 in (False, True):
                r = time_tower(tower, batch, bf16, args.warmup, args.runs)
                rows.append(
                    {
                        "tower": name,
                        "params": params,
                        "batch": batch,
                        "dtype": "bf16" if bf16 else "fp32",
                        **r,
                    }
                )
                print(
                    f"{name:28s} batch {batch:3d} {rows[-1]['dtype']}: {r['images_per_s']:9.1f} images/s",
                    flush=True,
                )
    meta = {
        "threads": args.threads,
        "warmup": args.warmup,
        "runs": args.runs,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "clip_towers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    ref = {(r["batch"], r["dtype"]): r["images_per_s"] for r in rows if r["tower"].startswith("ViT-S-16")}
    lines = [
        "# CLIP image towers at 64x64: LightCLIP vs open_clip ViT-S-16",
        "",
        f"CPU, {args.threads} threads, torch {torch.__version__}, open_clip {open_clip.__version__}; "
        f"median images/s over {args.runs} runs after {args.warmup} warm-up runs (IQR in brackets); "
        "ratio = images/s relative to ViT-S-16 at the same batch and dtype.",
        "",
        "| tower | image params | batch | dtype | images/s | IQR | vs ViT-S-16 |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        ratio = r["images_per_s"] / ref[(r["batch"], r["dtype"])]
        lo, hi = r["iqr"]
        lines.append(
            f"| {r['tower']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['dtype']} | "
            f"{r['images_per_s']:,.1f} | {lo:,.0f}-{hi:,.0f} | {ratio:.2f}x |"
        )
    lines += ["", f"Reproduce: `python benchmarks/bench_clip.py --threads {args.threads}`", ""]
    (args.out / "clip_towers.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
