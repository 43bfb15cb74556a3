"""Diagnostic, never a training recipe: can any decoder of a binary tokenizer's codes be read right?

    python scripts/decoder_oracle.py --model bin-f8-64 [--steps 200] [--weight 0.1] [--n 1024]

Trains a copy of the tokenizer's decoder (the encoder, and so every code, stays frozen) against the
shapes judge itself: L2 to the original plus ``--weight`` x the judge's cross-entropy on the scene's
true labels, on shapes ``train`` scenes. Then reads the first ``--n`` shapes ``test`` scenes (the
selection set of ``scripts/judge_errors.py --split test``) through the untouched and the oracle
decoder. The oracle is allowed what no shipped model is (the judge in its loss): a scene it reads right
that the untouched decoder misreads is one whose codes hold the answer; one both misread may be lost in
the codes, or beyond what a short fine-tune finds. The JSON also gives the judge's mean cross-entropy
on the first and last 50 training batches (fresh scenes every step). Nothing is saved. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F


def _judge_scenes(tok, judge, dataset, n: int) -> tuple[float, dict[str, int], list[int]]:
    """Share of scenes read right, wrong objects by attribute, and the misread indices (uint8 pixels,
    as ``mmtok eval tokenizer`` scores them)."""
    from mmtok.tokenizers.image_kl import to_pixels

    wrong, misread = {"shape": 0, "colour": 0, "size": 0}, []
    with torch.no_grad():
        for start in range(0, n, 64):
            items = [dataset[i] for i in range(start, min(n, start + 64))]
            images = torch.stack([it["image"] for it in items])
            x = to_pixels(tok(images).float().clamp(-1, 1)).float() / 127.5 - 1
            pred = judge.predict(x)
            ok = torch.ones(len(items), dtype=torch.bool)
            for key in wrong:
                labels = torch.stack([it[key] for it in items])
                bad = (labels > 0) & (pred[key] != labels)
                wrong[key] += int(bad.sum())
                ok &= ~bad.any(1)
            misread += [start + i for i in (~ok).nonzero().flatten().tolist()]
    return 1 - len(misread) / n, wrong, misread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bin-f8-64")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--weight", type=float, default=0.1, help="of the judge's cross-entropy")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.n < 1:
        parser.error("--steps, --batch and --n must be positive")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import mmtok
    from mmtok.data import build_dataset

    start = time.time()
    tok = mmtok.load(args.model).eval()
    if not hasattr(tok, "decode_bits"):
        parser.error(f"{args.model} is not a binary tokenizer")
    judge = mmtok.load("judge-shapes64").eval().requires_grad_(False)
    test_set = build_dataset("shapes", "test", resolution=64, seed=0)
    before, before_wrong, before_misread = _judge_scenes(tok, judge, test_set, args.n)

    oracle = copy.deepcopy(tok).float()
    oracle.requires_grad_(False)
    oracle.decoder.requires_grad_(True)
    oracle.decoder.train()
    opt = torch.optim.AdamW(oracle.decoder.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    # Warm up as the fine-tunes do: Adam's first steps move every weight by ~lr and would blur the decoder.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 30))
    # Palette-coloured train scenes (seed 7: not the test scenes), so every label is the judge's own.
    train_set = build_dataset("shapes", "train", resolution=64, seed=7, size=args.steps * args.batch)
    loader = torch.utils.data.DataLoader(train_set, args.batch, shuffle=True)
    losses = []
    for batch in loader:
        with torch.no_grad():
            bits = (oracle.logits(batch["image"]) > 0).float()
        recon = oracle.decode_bits(bits)  # fp32: bf16 autocast is far slower for this decoder on CPU
        out = judge(recon.clamp(-1, 1))
        ce = sum(
            F.cross_entropy(out[k].flatten(0, 1), batch[k].flatten()) for k in ("shape", "colour", "size")
        )
        loss = F.mse_loss(recon, batch["image"]) + args.weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(oracle.decoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(ce.detach()))
    oracle.eval()
    after, after_wrong, after_misread = _judge_scenes(oracle, judge, test_set, args.n)
    still = sorted(set(before_misread) & set(after_misread))
    print(json.dumps({
        "model": args.model, "steps": args.steps, "weight": args.weight, "test_scenes": args.n,
        "before": {"scenes": round(before, 4), "wrong": before_wrong, "misread": len(before_misread)},
        "oracle": {"scenes": round(after, 4), "wrong": after_wrong, "misread": len(after_misread)},
        "misread_by_both": len(still),
        "judge_ce_first_last_50": [round(sum(part) / len(part), 4) for part in (losses[:50], losses[-50:])],
        "seconds": round(time.time() - start),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
