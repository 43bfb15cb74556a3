"""Image tokenizers side by side: mmtok's KL and binary tokenizers and diffusers' VQModel, in one run.

    python benchmarks/bench_image_tokenizers.py [--steps 300] [--batch 16] [--eval-n 256] [--repeats 5]
    python benchmarks/bench_image_tokenizers.py --skip-train          # speed table only

Two tables, both on 64x64 RGB images on the CPU:

- **Speed**: encode + decode (image -> latents or codes -> image, through each model's public API)
  in images/s at batch 64 and batch 1, fp32 and bf16 autocast, under ``torch.inference_mode()``; one
  warm-up pass, then the median of ``--repeats`` passes over the same 64 held-out images. Models: the
  shipped ``kl-f8-64`` and ``bin-f8-64`` (``mmtok.load``; built from their configs with random
  weights, and labelled so, when ``weights/`` lacks them) and the diffusers ``VQModel`` peer.
- **Trained equally**: our ``BinaryTokenizer``, a diffusers ``VQModel`` of matched size and our
  ``KLTokenizer``, each trained from scratch here for ``--steps`` steps on the same batches (the
  tokenizer training mixture of ``configs/bin-f8-64/bin-f8-64.yaml``, same seed), with the same AdamW, LR
  schedule (the configs', warm-up scaled to ``--steps``), gradient clipping and bf16 autocast, no
  EMA; then held-out PSNR / SSIM, bits per image,
  parameters, codebook usage, training s/step and encode + decode speed at batch 64.

The peer: ``VQModel`` with the binary tokenizer's ``block_out_channels`` / ``layers_per_block`` /
``norm_num_groups`` (so f = 8 too), ``latent_channels`` = K and a codebook of 2**K codes, so that a
position carries K bits in both and an image the same ``K * 8 * 8`` bits. Its loss is the same pixel
loss as ours plus the commitment / codebook loss that ``VQModel.decode`` returns. Writes
``image_tokenizers.json`` and ``image_tokenizers.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import VQModel

from mmtok import hub
from mmtok.data import build_dataset
from mmtok.errors import MmtokError
from mmtok.eval.tokenizer import BEDS
from mmtok.runtime import autocast, seed_everything, set_threads
from mmtok.tokenizers.image_binary import BinaryTokenizer
from mmtok.tokenizers.image_kl import KLTokenizer, reconstruction_metrics
from mmtok.train.config import load_config
from mmtok.train.trainer import StepSampler, lr_factor, param_groups

ROOT = Path(__file__).resolve().parent.parent
SPEED_BATCH = 64  # images per timed pass; batch 1 runs 64 single-image calls per pass


# ----------------------------------------------------------------------------- models


def build_vq(bin_kwargs: dict, bits: int) -> VQModel:
    """diffusers VQModel with the binary tokenizer's encoder / decoder shape and 2**bits codes."""
    levels = len(bin_kwargs["block_out_channels"])
    return VQModel(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(bin_kwargs["block_out_channels"]),
        layers_per_block=bin_kwargs["layers_per_block"],
        norm_num_groups=bin_kwargs["norm_num_groups"],
        latent_channels=bits,  # K channels into the bottleneck, as the binary tokenizer's K logits
        num_vq_embeddings=2**bits,
    )


def reconstructor(model):
    """images -> decode(encode(images)) through the model's public API (what a user would call)."""
    if isinstance(model, VQModel):
        return lambda x: model.decode(model.encode(x).latents).sample.clamp(-1, 1)
    return lambda x: model.decode(model.encode(x))


def codes_of(model, images: torch.Tensor) -> torch.Tensor | None:
    """Discrete codes of ``images`` (flattened), or None for the continuous KL tokenizer."""
    if isinstance(model, VQModel):
        _, _, (_, _, indices) = model.quantize(model.encode(images).latents)
        return indices.flatten()
    if isinstance(model, BinaryTokenizer):
        return model.encode(images).flatten()
    return None


def shipped(name: str, kwargs: dict, cls) -> tuple[torch.nn.Module, str]:
    """The shipped checkpoint when ``weights/`` has it, else the same architecture, random weights."""
    try:
        folder = hub.resolve(name)
    except MmtokError:
        seed_everything(0)
        return cls(**kwargs).eval(), f"random weights ({name} not in weights/)"
    return hub.load(folder), f"shipped weights/{name}"


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- speed


def throughput(fn, images: torch.Tensor, batch: int, bf16: bool, repeats: int) -> float:
    """Images/s of ``fn`` over ``images`` in chunks of ``batch``: 1 warm-up pass, median of the rest."""
    times = []
    with torch.inference_mode(), autocast("cpu", enabled=bf16):
        for i in range(repeats + 1):
            start = time.perf_counter()
            for chunk in images.split(batch):
                fn(chunk)
            if i:  # pass 0 warms up (allocator, oneDNN kernel choice)
                times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def speed_row(label: str, weights: str, model, images, batch: int, repeats: int) -> dict:
    fn = reconstructor(model.eval())
    fp32 = throughput(fn, images, batch, False, repeats)
    bf16 = throughput(fn, images, batch, True, repeats)
    return {
        "model": label,
        "weights": weights,
        "batch": batch,
        "fp32_images_per_s": round(fp32, 1),
        "bf16_images_per_s": round(bf16, 1),
        "bf16_speedup": round(bf16 / fp32, 2),
    }


# ----------------------------------------------------------------------------- training


def pixel_loss(recon: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """The same reconstruction loss as our tokenizers' ``training_step`` (``pixel_loss`` option)."""
    diff = recon.float() - images.float()
    l1, l2 = diff.abs().mean(), diff.pow(2).mean()
    return {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[kind]


def train(model, loss_fn, dataset, optim, steps: int, batch: int, seed: int) -> dict:
    """A plain copy of the trainer's loop (AdamW, warm-up + schedule, clipping, bf16), no EMA.

    Every model gets the same batches: the trainer's StepSampler with the same seed and batch size.
    """
    seed_everything(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(len(dataset), batch, seed))
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps
    )
    factor = lambda s: lr_factor(
        s, warmup=optim.warmup_steps, max_steps=steps, schedule=optim.schedule, min_ratio=optim.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses, batches = [], iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        images = next(batches)["image"]
        with autocast("cpu"):
            loss = loss_fn(model, images)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    model.eval()
    tail = losses[-max(1, steps // 10) :]  # last 10% of steps: less noisy than the last one
    return {
        "train_seconds": round(seconds, 1),
        "s_per_step": round(seconds / steps, 3),
        "final_loss": round(sum(tail) / len(tail), 4),
    }


def vq_loss(kind: str):
    """Pixel loss + the loss VQModel.decode returns: diffusers' VectorQuantizer as it ships (legacy
    weighting: commitment term x 1, codebook term x beta = 0.25; codebook init uniform +-1/n)."""

    def loss(model: VQModel, images: torch.Tensor) -> torch.Tensor:
        out = model.decode(model.encode(images).latents)
        return pixel_loss(out.sample, images, kind) + out.commit_loss.float().mean()

    return loss


def ours_loss(model, images: torch.Tensor) -> torch.Tensor:
    return model.training_step({"image": images})[0]


# ----------------------------------------------------------------------------- evaluation


def held_out(n: int) -> dict[str, torch.utils.data.Dataset]:
    """The first ``n`` images of each held-out bed of ``mmtok eval tokenizer``."""
    beds = {}
    for name, split, kwargs in BEDS:
        dataset = build_dataset(name, split, resolution=64, **kwargs)
        beds[f"{name}_{split}"] = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
    return beds


@torch.no_grad()
def evaluate(model, beds: dict, bits: int | None) -> dict:
    """fp32 PSNR / SSIM per bed (and their mean over beds) and code usage over all beds' images."""
    model.eval()
    out, codes = {}, []
    for bed, dataset in beds.items():
        m = reconstruction_metrics(reconstructor(model), dataset, "cpu", batch_size=64)
        out[f"{bed}/psnr"], out[f"{bed}/ssim"], out[f"{bed}/n"] = m["psnr"], m["ssim"], m["n"]
        loader = torch.utils.data.DataLoader(dataset, batch_size=64)
        codes += [c for b in loader if (c := codes_of(model, b["image"])) is not None]
    out["psnr"] = statistics.mean(out[f"{b}/psnr"] for b in beds)
    out["ssim"] = statistics.mean(out[f"{b}/ssim"] for b in beds)
    if codes:
        # Codebook usage: share of the 2**K codes that occur, and the perplexity (exp of the entropy)
        # of the code histogram -- how many codes are effectively in use.
        counts = torch.bincount(torch.cat(codes), minlength=2**bits).double()
        p = counts[counts > 0] / counts.sum()
        out["codes_used"] = int((counts > 0).sum())
        out["codes_used_fraction"] = out["codes_used"] / 2**bits
        out["code_perplexity"] = float((-(p * p.log()).sum()).exp())
        out["code_positions"] = int(counts.sum())
    return out


# ----------------------------------------------------------------------------- the run


def environment(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        # Other work on the machine slows every number here: the load when the run started.
        "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def run(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    env = environment(threads)
    bin_cfg = load_config(ROOT / "configs" / "bin-f8-64" / "bin-f8-64.yaml")
    kl_cfg = load_config(ROOT / "configs" / "kl-f8-64" / "kl-f8-64.yaml")
    bits = args.bits or bin_cfg.model.kwargs["bits"]
    bin_kwargs = dict(bin_cfg.model.kwargs, bits=bits)
    if bits % bin_kwargs.get("sub_tokens", 1):
        bin_kwargs["sub_tokens"] = 1  # sub-tokens only matter to generators, not to this benchmark
    positions = (64 // 2 ** (len(bin_kwargs["block_out_channels"]) - 1)) ** 2
    beds = held_out(args.eval_n)
    # Speed inputs: 64 held-out images from the three beds (content does not change conv cost).
    pool = torch.cat([torch.stack([ds[i]["image"] for i in range(min(22, len(ds)))]) for ds in beds.values()])
    images = pool.repeat(math.ceil(SPEED_BATCH / len(pool)), 1, 1, 1)[:SPEED_BATCH]

    result: dict = {
        "benchmark": "image tokenizers: mmtok KLTokenizer / BinaryTokenizer vs diffusers VQModel, 64x64 CPU",
        "settings": {
            "steps": args.steps,
            "batch": args.batch,
            "eval_n_per_bed": args.eval_n,
            "repeats": args.repeats,
            "bits_per_position": bits,
            "bits_per_image": bits * positions,
            "statistic": "median over repeats after 1 warm-up pass",
        },
        "environment": env,
        "speed": [],
        "trained": [],
    }

    trained_vq = None
    if not args.skip_train:
        # Same optimizer for all three: the configs' (bin and kl agree), warm-up scaled to --steps.
        o = bin_cfg.optim
        warmup = max(1, round(o.warmup_steps * args.steps / o.max_steps))
        optim = dataclasses.replace(o, warmup_steps=warmup)
        result["settings"].update(
            lr=o.lr, warmup_steps=warmup, schedule=o.schedule, grad_clip=o.grad_clip, seed=bin_cfg.train.seed
        )
        data = bin_cfg.data
        if kl_cfg.data != data:  # the table claims one training set for all three
            raise MmtokError("the kl-f8-64 and bin-f8-64 stage-2 configs train on different data")
        dataset = build_dataset(data.name, data.split, **data.kwargs)
        kind = bin_kwargs["pixel_loss"]
        recipes = (
            ("BinaryTokenizer (mmtok)", lambda: BinaryTokenizer(**bin_kwargs), ours_loss, bits),
            ("VQModel (diffusers)", lambda: build_vq(bin_kwargs, bits), vq_loss(kind), bits),
            ("KLTokenizer (mmtok)", lambda: KLTokenizer(**kl_cfg.model.kwargs), ours_loss, None),
        )
        for label, make, loss_fn, code_bits in recipes:
            seed_everything(bin_cfg.train.seed)  # same initial RNG state for every model
            model = make()
            print(f"training {label} for {args.steps} steps", file=sys.stderr, flush=True)
            stats = train(model, loss_fn, dataset, optim, args.steps, args.batch, bin_cfg.train.seed)
            print(f"evaluating {label}", file=sys.stderr, flush=True)
            row = {"model": label, "params": count_params(model), **stats, **evaluate(model, beds, code_bits)}
            if isinstance(model, VQModel):
                row["codebook_params"] = model.quantize.embedding.weight.numel()
            row["bits_per_image"] = code_bits * positions if code_bits else "continuous"
            if isinstance(model, KLTokenizer):
                row["latent_shape"] = list(model.latent_shape((64, 64)))
            speed = speed_row(label, "trained here", model, images, SPEED_BATCH, args.repeats)
            row.update((k, speed[k]) for k in ("fp32_images_per_s", "bf16_images_per_s"))
            result["trained"].append(row)
            if isinstance(model, VQModel):
                trained_vq = model
        ours, vq = result["trained"][0], result["trained"][1]
        result["trained_ratios_binary_vs_vq"] = {
            "psnr_db_difference": round(ours["psnr"] - vq["psnr"], 2),
            "ssim_difference": round(ours["ssim"] - vq["ssim"], 4),
            "fp32_speed_ratio": round(ours["fp32_images_per_s"] / vq["fp32_images_per_s"], 2),
            "bf16_speed_ratio": round(ours["bf16_images_per_s"] / vq["bf16_images_per_s"], 2),
            "train_step_time_ratio": round(ours["s_per_step"] / vq["s_per_step"], 2),
        }

    # Speed table: the shipped tokenizers and the peer (trained above, or untrained: same cost).
    kl, kl_weights = shipped(kl_cfg.name, kl_cfg.model.kwargs, KLTokenizer)
    bae, bae_weights = shipped(bin_cfg.name, bin_cfg.model.kwargs, BinaryTokenizer)
    # The peer at the shipped tokenizer's bits: the one trained above, else a fresh one (same cost).
    vq_model, vq_weights = trained_vq, "trained here"
    if vq_model is None or bits != bin_cfg.model.kwargs["bits"]:
        seed_everything(0)
        vq_model = build_vq(bin_cfg.model.kwargs, bin_cfg.model.kwargs["bits"])
        vq_weights = "random weights (untrained)"
    for label, model, weights in (
        (kl_cfg.name, kl, kl_weights),
        (bin_cfg.name, bae, bae_weights),
        (f"VQModel {vq_model.config.num_vq_embeddings} codes", vq_model, vq_weights),
    ):
        for batch in (SPEED_BATCH, 1):
            print(f"timing {label} at batch {batch}", file=sys.stderr, flush=True)
            result["speed"].append(speed_row(label, weights, model, images, batch, args.repeats))
    ours, vq = result["speed"][2], result["speed"][4]  # bin-f8-64 and VQModel at batch 64
    result["speed_ratios_binary_vs_vq"] = {
        "batch": SPEED_BATCH,
        "fp32": round(ours["fp32_images_per_s"] / vq["fp32_images_per_s"], 2),
        "bf16": round(ours["bf16_images_per_s"] / vq["bf16_images_per_s"], 2),
    }
    return result


# ----------------------------------------------------------------------------- report


def command(args: argparse.Namespace, threads: int) -> str:
    """The command that repeats this run (without --out: results land in benchmarks/results)."""
    words = ["python", "benchmarks/bench_image_tokenizers.py"]
    if args.skip_train:
        words.append("--skip-train")
    else:
        words += ["--steps", args.steps, "--batch", args.batch, "--eval-n", args.eval_n]
    if args.bits:
        words += ["--bits", args.bits]
    words += ["--repeats", args.repeats, "--threads", threads]
    return shlex.join(map(str, words))


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"


def _cell(row: dict, bed: str) -> str:
    return f"{row[f'{bed}/psnr']:.2f} / {row[f'{bed}/ssim']:.3f}"


def to_markdown(result: dict, reproduce: str) -> str:
    env, s = result["environment"], result["settings"]
    lines = [
        "# Image tokenizers: mmtok vs diffusers VQModel (64x64 images, CPU)",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} torch threads, "
        f"load average {env['load_average_at_start']} at start; torch {env['torch']}, "
        f"diffusers {env['diffusers']}, Python {env['python']}. Speed: {s['statistic']} "
        f"({s['repeats']}), `torch.inference_mode()`, bf16 = `torch.autocast('cpu', torch.bfloat16)`.",
        "",
        "## Encode + decode speed",
        "",
        "| model | weights | batch | fp32 images/s | bf16 images/s | bf16 / fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["speed"]:
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['batch']} | {r['fp32_images_per_s']:,.1f} | "
            f"{r['bf16_images_per_s']:,.1f} | {r['bf16_speedup']}x |"
        )
    q = result["speed_ratios_binary_vs_vq"]
    lines += ["", f"bin-f8-64 / VQModel at batch {q['batch']}: {q['fp32']}x fp32, {q['bf16']}x bf16."]
    if result["trained"]:
        lines += [
            "",
            f"## Trained equally: {s['steps']} steps from scratch, batch {s['batch']}",
            "",
            f"Same batches (the bin-f8-64 training mixture, seed {s['seed']}), AdamW lr {s['lr']}, "
            f"{s['warmup_steps']} warm-up steps then {s['schedule']}, grad clip {s['grad_clip']}, bf16 "
            "autocast, no EMA. Held-out cells: PSNR dB / SSIM on uint8 pixels, fp32, first "
            f"{s['eval_n_per_bed']} images per bed; mean = mean over the three beds. Codes: distinct "
            "codes seen / perplexity of the code histogram over all held-out positions. Speed: encode + "
            f"decode at batch {SPEED_BATCH}.",
            "",
            "| model | params | bits / image | shapes heldout | photos test | digits test | mean "
            "| codes used | code perplexity | train s/step | fp32 images/s | bf16 images/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["trained"]:
            params = _count(r["params"])
            if "codebook_params" in r:
                params += f" ({_count(r['codebook_params'])} codebook)"
            codes = perplexity = "—"
            if "codes_used" in r:
                codes = f"{r['codes_used']:,} / {2 ** s['bits_per_position']:,}"
                perplexity = f"{r['code_perplexity']:,.0f}"
            lines.append(
                f"| {r['model']} | {params} | {r['bits_per_image']} | {_cell(r, 'shapes_heldout')} | "
                f"{_cell(r, 'photos_test')} | {_cell(r, 'digits_test')} | "
                f"{r['psnr']:.2f} / {r['ssim']:.3f} | "
                f"{codes} | {perplexity} | {r['s_per_step']} | {r['fp32_images_per_s']:,.1f} | "
                f"{r['bf16_images_per_s']:,.1f} |"
            )
        q = result["trained_ratios_binary_vs_vq"]
        positions = result["trained"][0]["code_positions"]
        lines += [
            "",
            f"BinaryTokenizer vs VQModel at equal bits ({s['bits_per_image']} per image, "
            f"{s['bits_per_position']} per position): PSNR {q['psnr_db_difference']:+.2f} dB, SSIM "
            f"{q['ssim_difference']:+.4f}; speed {q['fp32_speed_ratio']}x fp32, {q['bf16_speed_ratio']}x "
            f"bf16; training step time {q['train_step_time_ratio']}x. Codes were counted over {positions:,} "
            "positions, so at most that many distinct codes can show up. KLTokenizer latents are "
            f"continuous ({' x '.join(map(str, result['trained'][2]['latent_shape']))} floats), so its "
            "bits per image are not comparable.",
        ]
    lines += ["", f"Reproduce: `{reproduce}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps for each of the 3 models")
    parser.add_argument("--batch", type=int, default=16, help="training batch size (the configs' 16)")
    parser.add_argument("--eval-n", type=int, default=256, help="held-out images per bed (3 beds)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--bits", type=int, default=0, help="K bits per position for both discrete models (0: config's 16)"
    )
    parser.add_argument("--skip-train", action="store_true", help="speed table only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "eval_n", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.bits <= 20:
        parser.error("--bits must be 1 to 20 (VQModel holds 2**bits codes), or 0 for the config's")
    result = run(args)
    markdown = to_markdown(result, command(args, result["environment"]["torch_threads"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image_tokenizers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "image_tokenizers.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
