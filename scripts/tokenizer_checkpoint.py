"""Read a tokenizer's training checkpoint (its EMA weights) without exporting it: photos PSNR and the
judge on held-out shapes, the two figures the tokenizer targets hinge on.

    python scripts/tokenizer_checkpoint.py CONFIG CHECKPOINT [--photos 512] [--judge 256]
    python scripts/tokenizer_checkpoint.py experiments/configs/kl-f8-64-ref128.yaml none   # step 0: init

The model is built from CONFIG exactly as ``mmtok train`` builds it (``model.init`` included), then the
checkpoint's EMA copy (``--weights model``: the live weights) replaces its weights (``none`` keeps the
init). Photos: PSNR over the first ``--photos`` test photos, as ``mmtok eval tokenizer`` computes it;
judge: objects and scenes right on the first ``--judge`` held-out shapes scenes
(``mmtok.eval.tokenizer.judge_reconstructions``), 0 skips either.
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="a step_*.pt of the run, or 'none' for the init weights")
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--judge", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="the EMA copy (what export ships) or the live weights",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmtok import hub
    from mmtok.data import build_dataset
    from mmtok.eval.tokenizer import judge_reconstructions
    from mmtok.tokenizers.image_kl import reconstruction_metrics
    from mmtok.train.checkpoint import load_checkpoint
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    model = _build_model(load_config(args.config))
    step = 0
    if args.checkpoint != "none":
        state = load_checkpoint(args.checkpoint)
        if args.weights == "model":
            model.load_state_dict(state["model"], strict=True)
        elif state.get("ema") is None:
            raise SystemExit(f"{args.checkpoint}: the run kept no EMA copy")
        else:  # timm's ModelEmaV3 keeps the model under "module."
            ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
            model.load_state_dict(ema, strict=True)
        step = int(state["step"])
    model.eval()

    def reconstruct(x):
        return model.decode(model.encode(x)).float().clamp(-1, 1)

    out: dict = {"config": args.config, "checkpoint": args.checkpoint, "step": step, "weights": args.weights}
    with torch.no_grad():
        if args.photos:
            photos = build_dataset("photos", "test", resolution=64, seed=0)
            subset = torch.utils.data.Subset(photos, range(min(args.photos, len(photos))))
            out["photos_psnr"] = reconstruction_metrics(reconstruct, subset, "cpu", 64)["psnr"]
        if args.judge:
            scores = judge_reconstructions(reconstruct, hub.load("judge-shapes64"), args.judge)
            out["judge_objects"] = scores["shapes_heldout/judge_object_acc_reconstruction"]
            out["judge_scenes"] = scores["shapes_heldout/judge_exact_reconstruction"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
