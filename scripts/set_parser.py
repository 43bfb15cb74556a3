"""Put a trained prompt parser into a layout xAR generator (``XAR(text_encoder="slots")``).

    python scripts/set_parser.py runs/export/xar-shapes64 runs/export/parser-shapes64

The generator trains on the scenes' own layouts and never calls its parser in training
(``train_layout="labels"``), so the parser (``configs/parser-shapes64.yaml``) trains on its own, side
by side, and the two meet here: the generator folder's ``text.*`` tensors become the parser's (in the
parser's own dtype: it is small; it may have another vocabulary size than the placeholder the
generator was built with) and its ``config.json`` takes the parser's constructor arguments. Both
files are written atomically, and the result is loaded once to check it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import safetensors.torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtok.errors import CheckpointError  # noqa: E402

PARSER_KEYS = ("slots", "slot_heads", "global_heads", "dim", "heads", "length", "embed_dim", "layers",
               "grammar", "compact_vocab")  # fmt: skip


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    shutil.copymode(path, tmp)  # keep the file's permissions
    os.replace(tmp, path)


def set_parser(generator: str | os.PathLike, parser: str | os.PathLike) -> int:
    """Returns the number of parser tensors written; ``CheckpointError`` (one line) when they do not go
    together (not a layout generator, not a parser, or another prompt length)."""
    from mmtok import hub

    generator, parser = Path(generator), Path(parser)
    try:
        gen_cfg = json.loads((generator / "config.json").read_text())
        par_cfg = json.loads((parser / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read a config.json: {e}") from None
    if gen_cfg.get("_class_name") != "XAR" or gen_cfg.get("text_encoder") != "slots":
        raise CheckpointError(f"{generator} is not a layout xAR generator (XAR with text_encoder=slots)")
    if par_cfg.get("_class_name") != "PromptParser":
        raise CheckpointError(f"{parser} is not a PromptParser")
    if par_cfg.get("length") != gen_cfg.get("text_length"):
        raise CheckpointError(
            f"{parser} reads prompts of {par_cfg.get('length')} tokens, "
            f"{generator} of {gen_cfg.get('text_length')}"
        )
    state = safetensors.torch.load_file(str(generator / "model.safetensors"))
    part = safetensors.torch.load_file(str(parser / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("text.")}
    state.update({f"text.{k}": v.contiguous() for k, v in part.items()})
    gen_cfg["parser"] = {k: par_cfg[k] for k in PARSER_KEYS if k in par_cfg}
    save = safetensors.torch.save_file
    _atomic_write(generator / "model.safetensors", lambda p: save(state, p, metadata={"format": "pt"}))
    _atomic_write(generator / "config.json", lambda p: p.write_text(json.dumps(gen_cfg, indent=2) + "\n"))
    hub.load(str(generator))  # raises CheckpointError if anything does not fit
    return len(part)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", help="exported layout xAR folder")
    p.add_argument("parser", help="exported PromptParser folder")
    args = p.parse_args(argv)
    try:
        n = set_parser(args.generator, args.parser)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.generator}: its prompt parser is now {args.parser} ({n} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
