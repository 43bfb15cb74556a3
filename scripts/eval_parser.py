"""How often the prompt parser's network reads a whole caption right (every slot's shape, colour and
size, and the background when the caption names it), per split and object count.

    python scripts/eval_parser.py [--model xar-shapes64] [--n 1000] [--seed 1]

``--model`` is a ``PromptParser`` folder or a layout xAR generator (its ``text`` part is read). The
grammar path is switched off: this measures the learned tagger, which reads the prompts the caption
grammar cannot parse. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from mmtok import hub
from mmtok.data.shapes import ShapesDataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="xar-shapes64")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = hub.load(args.model)
    parser = model if model.task == "prompt-parser" else model.text
    parser.eval()
    out = {}
    for split in ("test", "heldout"):
        for k in (1, 2, 3):
            ds = ShapesDataset(split, size=args.n, render=False, seed=args.seed, min_objects=k, max_objects=k)
            out[f"{split}/{k}obj"] = round(parser.evaluate(ds, batch_size=250)["val_exact"], 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
