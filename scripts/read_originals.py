"""How well a shapes classifier (a judge or a perceptual network) reads the original scenes of a split.

    python scripts/read_originals.py --model percept-shapes64 --split heldout --n 2000

Prints JSON: per-slot shape / colour / size accuracy, objects right (occupied slots with all three
attributes right) and scenes right (all nine slots), from ``ShapesJudge.evaluate``. A perceptual
network that misreads held-out compositions pulls a tokenizer's reconstructions towards its own
misreadings; this is how percept-shapes64 (84.3% of 2000 held-out scenes) and percept-shapes64-hue
were compared.
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a ShapesJudge or ShapesPerceptual name or folder")
    parser.add_argument("--split", default="heldout", choices=("train", "test", "heldout"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import mmtok
    from mmtok.data import build_dataset

    net = mmtok.load(args.model)
    dataset = build_dataset("shapes", args.split, resolution=64)
    subset = torch.utils.data.Subset(dataset, range(min(args.n, len(dataset))))
    scores = net.evaluate(subset)
    print(json.dumps({"model": args.model, "split": args.split, **scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
