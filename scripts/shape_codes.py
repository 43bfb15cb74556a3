"""Do a binary tokenizer's codes tell small shapes apart, and does its decoder draw them apart?

    python scripts/shape_codes.py [--model bin-f8-64] [--pair diamond cross] [--png out.png]

Renders one small white object of each shape on black, in each of the nine slots, encodes them, and
prints per slot the bits that differ between the two shapes of ``--pair`` (of 8 x 8 positions x K) and
per shape the judge's reading of the reconstructions (how many of the nine it calls that shape).
``--png`` writes the originals above their reconstructions for the pair.
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bin-f8-64")
    parser.add_argument("--pair", nargs=2, default=["diamond", "cross"])
    parser.add_argument("--colour", default="white")
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import mmtok
    from mmtok.data.shapes import COLOURS, SHAPES, scene_from_labels

    tok, judge = mmtok.load(args.model).float().eval(), mmtok.load("judge-shapes64").eval()

    def render(shape: str, slot: int) -> torch.Tensor:
        labels = [[0] * 9 for _ in range(3)]
        labels[0][slot], labels[1][slot], labels[2][slot] = (
            SHAPES.index(shape) + 1,
            COLOURS.index(args.colour) + 1,
            1,
        )
        return scene_from_labels(*labels, background=0).render(64)  # float, [-1, 1]

    images = {s: torch.stack([render(s, slot) for slot in range(9)]) for s in SHAPES}
    out: dict = {"model": args.model, "pair": args.pair, "bits_per_image": None, "judge_right": {}}
    with torch.no_grad():
        codes = {s: tok.encode(x) for s, x in images.items()}
        recon = {s: tok(x).float().clamp(-1, 1) for s, x in images.items()}
        for s in SHAPES:
            pred = judge.predict(recon[s])["shape"]
            out["judge_right"][s] = int(
                (pred.gather(1, torch.arange(9)[:, None]) == SHAPES.index(s) + 1).sum()
            )
    a, b = (tok.bits(codes[s]) for s in args.pair)  # 9 x 8 x 8 x K
    out["bits_per_image"] = int(a[0].numel())
    out["bits_differing_per_slot"] = [int(n) for n in (a != b).flatten(1).sum(1)]
    print(json.dumps(out))
    if args.png:
        import torchvision

        x = torch.cat([images[args.pair[0]], images[args.pair[1]], recon[args.pair[0]], recon[args.pair[1]]])
        torchvision.utils.save_image((x + 1) / 2, args.png, nrow=18, padding=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
