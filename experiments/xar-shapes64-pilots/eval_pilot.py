"""Score one pilot on ``mmtok eval generation`` prompts of a seed other than 0.

    python experiments/xar-shapes64-pilots/eval_pilot.py runs/export/pilot-layout-cell --n 64 --seed 1

Every evaluation prompt is a caption of the shapes grammar, so a layout pilot reads it exactly
(``PromptParser(grammar=True)``) whatever its parser's weights: the pilots compare generators.
``--parser FOLDER`` puts an exported parser in first (``scripts/set_parser.py``). ``MODEL`` may also
be a training checkpoint (``step_*.pt``) with ``--config``: its EMA weights are exported to a temporary
folder first (a point on the learning curve of a run still training). Prints the flat metrics as
one JSON line and writes them next to this file as ``<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from set_parser import set_parser  # noqa: E402

from mmtok import hub  # noqa: E402
from mmtok.eval.generation import _flatten, evaluate_generation  # noqa: E402


def export_checkpoint(config: str, checkpoint: str) -> str:
    """The checkpoint's EMA weights (what export ships), saved as a model folder; returns its path."""
    import tempfile

    from mmtok.train.checkpoint import load_checkpoint
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    model = _build_model(load_config(config))
    state = load_checkpoint(checkpoint)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items()
                           if k.startswith("module.")})  # fmt: skip
    out = Path(tempfile.mkdtemp()) / Path(checkpoint).stem
    hub.save(model, out, dtype=torch.bfloat16)
    return str(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--parser", default=None)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", default=None, help="the run's config, when MODEL is a checkpoint")
    p.add_argument("--name", default=None, help="name of the JSON written (default: MODEL's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = args.name or Path(args.model).name
    if args.model.endswith(".pt"):
        args.model = export_checkpoint(args.config, args.model)
    if args.parser:
        set_parser(args.model, args.parser)
    t0 = time.perf_counter()
    m = evaluate_generation(
        args.model, n=args.n, seed=args.seed, steps=args.steps, cfg=args.cfg, progress=False
    )
    keep = _flatten(m)
    keep["eval_seconds"] = time.perf_counter() - t0
    keep["parser"] = args.parser
    line = json.dumps(keep)
    print(line)
    (Path(__file__).parent / f"{name}.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
