"""Training throughput of the shipped text-to-image recipe: samples/s, per precision and with or
without ``torch.compile``, next to the same-dtype matmul ceiling measured in the same run.

    python benchmarks/bench_train_throughput.py [--config configs/xar-shapes64.yaml] [--threads 2]
        [--batch 32] [--steps 6] [--no-compile]

One optimizer step is what ``mmtok train`` runs: the config's model, ``training_step`` on a batch
of real shapes captions with their scenes' layouts and random latents of the training
shape (the latents' values do not change the cost), backward, gradient clipping and AdamW. bf16 is
timed only where the CPU has native bf16 (``mmtok.runtime.bf16_is_fast``): on an AVX2-only CPU
emulated bf16 is several times slower than fp32, so the trainer never uses it there. The ceiling is
a 2048^3 matmul in the same dtype; ``% of ceiling`` is the step's counted FLOPs (torch's
``FlopCounterMode``) per second over it. Median of ``--steps`` steps after two warm-up steps.
Writes ``benchmarks/results/train_throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtok import hub, runtime  # noqa: E402
from mmtok.data.shapes import ShapesDataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of an n^3 matmul in ``dtype`` (best of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build(config: Path):
    cfg = yaml.safe_load(config.read_text())
    model = hub.model_class(cfg["model"]["class"])(**cfg["model"]["kwargs"])
    return model.train(), cfg


def batch_of(model, batch: int) -> dict:
    ds = ShapesDataset("train", size=batch, render=False)
    items = [ds[i] for i in range(batch)]
    side = model.grid
    out = {k: torch.stack([it[k] for it in items]) for k in ("shape", "colour", "size")}  # the layouts
    out["caption"] = [it["caption"] for it in items]
    out["latent"] = torch.randn(batch, model.latent_channels, side, side)
    return out


def step_flops(model, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss, _ = model.training_step(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_steps(model, batch: dict, bf16: bool, compiled: bool, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    step_fn = model.training_step
    if compiled:
        step_fn = torch.compile(model.training_step)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # two warm-ups: oneDNN kernel caches, and compilation when compiled
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/xar-shapes64.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, cfg = build(args.config)
    B = args.batch or int(cfg["data"]["batch_size"])
    batch = batch_of(model, B)
    flops = step_flops(model, batch)
    native_bf16 = runtime.bf16_is_fast("cpu")
    rows = []
    for bf16 in [False, True] if native_bf16 else [False]:
        dtype = torch.bfloat16 if bf16 else torch.float32
        ceiling = matmul_ceiling(dtype)
        for compiled in [False] if args.no_compile else [False, True]:
            times = time_steps(model, batch, bf16, compiled, args.steps)
            sec = statistics.median(times)
            rate = flops / sec / 1e9
            rows.append({"precision": "bf16" if bf16 else "fp32", "compile": compiled,
                         "seconds_per_step": sec, "samples_per_s": B / sec, "step_gflop": flops / 1e9,
                         "gflop_per_s": rate, "ceiling_gflop_per_s": ceiling,
                         "of_ceiling": rate / ceiling})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["samples_per_s"])
    result = {
        "config": str(args.config), "batch": B, "threads": args.threads, "cpu": cpu_name(),
        "native_bf16": native_bf16, "torch": torch.__version__, "rows": rows,
        "fastest": {"precision": best["precision"], "compile": best["compile"]},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    bf16_note = "yes" if native_bf16 else "no (bf16 not timed: emulated, slower than fp32)"
    lines = [
        f"# Training throughput: `{args.config}` (batch {B}, {args.threads} threads, "
        f"torch {torch.__version__})",
        "",
        f"CPU: {result['cpu']}; native bf16: {bf16_note}.",
        "`python benchmarks/bench_train_throughput.py`",
        "",
        "| precision | torch.compile | s/step | samples/s | GFLOP/step | GFLOP/s | matmul ceiling GFLOP/s "
        "| of ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {'yes' if r['compile'] else 'no'} | {r['seconds_per_step']:.3f} | "
            f"{r['samples_per_s']:.1f} | {r['step_gflop']:.2f} | {r['gflop_per_s']:.1f} | "
            f"{r['ceiling_gflop_per_s']:.1f} | {100 * r['of_ceiling']:.0f}% |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
