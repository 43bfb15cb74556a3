"""Average the weights of models fine-tuned from one start (a uniform "model soup", Wortsman et al.
2022) and save the result as a model folder (bf16 safetensors, like ``mmtok train --export``).

    python scripts/average_weights.py OUT INGREDIENT... [--require-equal encoder.]

An INGREDIENT is a model name or folder (``mmtok.load``), or ``CONFIG.yaml@CHECKPOINT.pt``: the EMA
weights of a training checkpoint of that config. Every ingredient must have the first one's class and
parameter names. ``--require-equal PREFIX`` refuses ingredients whose parameters under PREFIX differ:
for decoder-only fine-tunes of an image tokenizer, ``encoder.`` proves that the average keeps every
image's codes (and so every generator trained on them) exactly. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _load(spec: str) -> torch.nn.Module:
    import mmtok

    if "@" not in spec:
        return mmtok.load(spec, device="cpu")
    from mmtok.errors import InputError
    from mmtok.train.checkpoint import load_checkpoint
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    config, checkpoint = spec.split("@", 1)
    model = _build_model(load_config(config))
    ema = load_checkpoint(checkpoint).get("ema")
    if not ema:
        raise InputError(f"{checkpoint}: no EMA weights in this checkpoint")
    model.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("ingredients", nargs="+", help="model names / folders, or CONFIG.yaml@CHECKPOINT.pt")
    parser.add_argument("--require-equal", action="append", default=[], metavar="PREFIX")
    args = parser.parse_args(argv)

    import mmtok
    from mmtok.errors import InputError, MmtokError

    try:
        if len(args.ingredients) < 2:
            raise InputError("give at least two ingredients")
        models = [_load(spec) for spec in args.ingredients]
        base = models[0]
        states = [m.state_dict() for m in models]
        for spec, m, state in zip(args.ingredients, models, states, strict=True):
            if type(m) is not type(base) or state.keys() != states[0].keys():
                raise InputError(f"{spec}: not the same model as {args.ingredients[0]}")
            for key in state:
                if any(key.startswith(p) for p in args.require_equal) and not torch.equal(
                    state[key].float(), states[0][key].float()
                ):
                    raise InputError(f"{spec}: {key} differs from {args.ingredients[0]}'s")
        average = {
            key: (sum(s[key].float() for s in states) / len(states)).to(states[0][key].dtype)
            if states[0][key].is_floating_point()
            else states[0][key]
            for key in states[0]
        }
        base.load_state_dict(average)
        readme = (
            f"# {args.out.name}\n\nThe uniform average of the weights of:\n\n"
            + "".join(f"- `{spec}`\n" for spec in args.ingredients)
            + "\nMade by\n\n```bash\npython scripts/average_weights.py "
            + " ".join(
                [str(args.out), *args.ingredients, *(f"--require-equal {p}" for p in args.require_equal)]
            )
            + "\n```\n"
        )
        mmtok.hub.save(base, args.out, readme=readme, dtype=torch.bfloat16)
    except MmtokError as err:
        parser.exit(2, f"average_weights: {err}\n")
    print(json.dumps({"out": str(args.out), "ingredients": args.ingredients, "equal": args.require_equal}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
