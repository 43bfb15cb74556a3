"""Is what the judge misses on a binary tokenizer's reconstructions still in its codes?

    python scripts/code_probe.py --model bin-f8-64 [--train 24000] [--n 1024] [--threads 2]

Trains a small convolutional probe that reads every slot's shape, colour and size straight from the
code bits (K x 8 x 8, +-1) of ``--train`` shapes ``train`` scenes, then reads the first ``--n`` shapes
``test`` scenes (the selection set of ``scripts/judge_errors.py --split test``) both ways: the probe
from their codes, the judge from their decoded reconstructions. If the probe reads right most of the
scenes the judge misreads, the codes hold what the decoder fails to draw; if it misreads them too,
the information is lost at the encoder and no decoder can bring it back. A probe is a lower bound on
what the codes hold (a better probe could read more), never an upper one. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

# scripts/ is not a package: the sibling that reads reconstructions with the judge is imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_oracle import _judge_scenes  # noqa: E402


class CodeProbe(nn.Module):
    """Bits [B, K, h, w] -> per-slot logits: shape [B, 9, 9], colour [B, 9, 9], size [B, 9, 3]."""

    def __init__(self, bits: int, width: int = 128, hw: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(bits, width, 3, padding=1)
        # Residual 3x3 blocks: a small object spans 2x2 positions and jitters across their borders.
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, width), nn.GELU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(4)
        )
        self.head = nn.Linear(width * hw * hw, 9 * (9 + 9 + 3))

    def forward(self, bits: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stem(bits)
        for block in self.blocks:
            h = h + block(h)
        out = self.head(torch.nn.functional.gelu(h).flatten(1)).view(-1, 9, 21)
        return {"shape": out[..., :9], "colour": out[..., 9:18], "size": out[..., 18:]}


def _encode(tok, dataset, n: int, batch_size: int = 64):
    """Bits [n, K, h, w] (int8 0/1) and labels of the first n items, encoded in fp32 exactly as
    ``tok.encode`` does (bf16 would flip the signs of near-zero logits and change codes)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size)
    bits, labels = [], {"shape": [], "colour": [], "size": []}
    with torch.no_grad():
        for batch in loader:
            bits.append((tok.logits(batch["image"]) > 0).to(torch.int8))
            for key in labels:
                labels[key].append(batch[key])
    return torch.cat(bits), {k: torch.cat(v) for k, v in labels.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bin-f8-64")
    parser.add_argument("--train", type=int, default=24000)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 128 or args.n < 1 or args.epochs < 1:
        parser.error("need --train >= 128 (one batch), --n >= 1 and --epochs >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import mmtok
    from mmtok.data import build_dataset

    start = time.time()
    tok = mmtok.load(args.model).eval()
    judge = mmtok.load("judge-shapes64").eval()
    train_bits, train_y = _encode(tok, build_dataset("shapes", "train", resolution=64, seed=0), args.train)
    test_set = build_dataset("shapes", "test", resolution=64, seed=0)
    test_bits, test_y = _encode(tok, test_set, args.n)
    # The probe reads the bits as -1/+1, as the decoder does.
    train_x, test_x = train_bits.float() * 2 - 1, test_bits.float() * 2 - 1
    encoded = time.time() - start

    probe = CodeProbe(train_x.shape[1], hw=train_x.shape[-1])
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    steps = args.epochs * (len(train_x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        perm = torch.randperm(len(train_x))
        for i in range(0, len(perm) - 127, 128):
            idx = perm[i : i + 128]
            out = probe(train_x[idx])  # fp32: bf16 convolutions on an 8x8 grid run 15x slower here
            loss = sum(loss_fn(out[k].flatten(0, 1), train_y[k][idx].flatten()) for k in out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    probe.eval()
    with torch.no_grad():
        out = probe(test_x)
        probe_ok = torch.ones(len(test_x), dtype=torch.bool)
        occupied = test_y["shape"] > 0
        wrong_attr, confusions = Counter(), Counter()
        for key in out:
            pred = out[key].argmax(-1)
            bad = occupied & (pred != test_y[key])
            wrong_attr[key] += int(bad.sum())
            probe_ok &= ~bad.any(1)
            if key == "shape":
                from mmtok.data.shapes import SHAPES

                for s, t in zip(test_y[key][bad].tolist(), pred[bad].tolist(), strict=True):
                    confusions[(SHAPES[s - 1], SHAPES[t - 1] if t > 0 else "empty")] += 1
    _, _, misread = _judge_scenes(tok, judge, test_set, args.n)
    judge_ok = torch.ones(len(test_x), dtype=torch.bool)
    judge_ok[misread] = False
    print(json.dumps({
        "model": args.model, "train_scenes": args.train, "test_scenes": args.n,
        "probe_scenes": round(float(probe_ok.float().mean()), 4),
        "probe_wrong": dict(wrong_attr),
        "probe_shape_confusions": [[*k, v] for k, v in confusions.most_common(8)],
        "judge_on_reconstructions_scenes": round(float(judge_ok.float().mean()), 4),
        "judge_misread": int((~judge_ok).sum()),
        "of_them_probe_reads_right": int((~judge_ok & probe_ok).sum()),
        "both_misread": int((~judge_ok & ~probe_ok).sum()),
        "seconds": {"encode": round(encoded), "total": round(time.time() - start)},
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
