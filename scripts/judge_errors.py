"""Where the shapes judge goes wrong on a tokenizer's reconstructions (or on degraded originals).

    python scripts/judge_errors.py --model bin-f8-64 [--split heldout] [--n 512]
    python scripts/judge_errors.py --blur 1.0      # the originals blurred (Gaussian, sigma in pixels)
    python scripts/judge_errors.py --down2         # the originals at half resolution, upsampled again
    python scripts/judge_errors.py --model bin-f8-64 --grid errors.png   # and a picture of the misreadings
    python scripts/judge_errors.py --model bin-f8-64 --split train --percept percept-shapes64

Prints JSON: scenes right overall, by background and by number of objects, and the most frequent
(true shape, read shape) pairs among the objects the judge gets wrong, and how many wrong objects have
a wrong shape, colour or size. ``--grid`` saves the first 16 misread scenes as pairs (original, then
what the judge read), 4x enlarged. Images are rounded to uint8 pixels first, as ``mmtok eval
tokenizer`` scores them. ``--percept NAME`` also reads each original and its reconstruction with that
(perceptual, not judge) network: in how many scenes its two readings differ, how many of the judge's
misread scenes are among them, and its ``logit_consistency`` (KL between the two readings): median
over all scenes and the values on the misread ones.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="an image tokenizer: score decode(encode(x))")
    what.add_argument("--blur", type=float, help="score the originals blurred with this sigma")
    what.add_argument("--down2", action="store_true", help="score the originals down- and upsampled 2x")
    parser.add_argument("--split", default="heldout", choices=("train", "test", "heldout"))
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--percept", help="with --model: a perceptual network's view of the same errors")
    parser.add_argument("--grid", help="save the first 16 misread scenes (original | judged) to this PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import torch.nn.functional as F
    import torchvision.transforms.functional as TF

    import mmtok
    from mmtok.data import build_dataset
    from mmtok.data.shapes import BACKGROUNDS, SHAPES
    from mmtok.tokenizers.image_kl import to_pixels

    judge = mmtok.load("judge-shapes64").eval()
    if args.model:
        tok = mmtok.load(args.model).eval()
        transform = lambda x: tok(x).float()  # noqa: E731
    elif args.down2:
        transform = lambda x: F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")  # noqa: E731
    else:
        transform = lambda x: TF.gaussian_blur(x, 2 * round(3 * args.blur) + 1, args.blur)  # noqa: E731

    dataset = build_dataset("shapes", args.split, resolution=64, seed=0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(min(args.n, len(dataset)))), 64
    )
    scene_ok, backgrounds, counts, confusions, attrs, pairs = [], [], [], Counter(), Counter(), []
    percept = mmtok.load(args.percept).eval() if args.percept and args.model else None
    differ, kls = [], []
    with torch.no_grad():
        for batch in loader:
            x = to_pixels(transform(batch["image"]).clamp(-1, 1)).float() / 127.5 - 1
            pred = judge.predict(x)
            occupied = batch["shape"] > 0
            ok = (pred["shape"] == batch["shape"]) & (pred["colour"] == batch["colour"])
            ok &= pred["size"] == batch["size"]
            scene_ok.append((ok | ~occupied).all(1))
            for key in ("shape", "colour", "size"):
                attrs[key] += int((occupied & (pred[key] != batch[key])).sum())
            for i in (~scene_ok[-1]).nonzero().flatten().tolist()[: max(0, 16 - len(pairs))]:
                pairs.append(torch.stack([batch["image"][i], x[i]]))
            if percept is not None:
                from mmtok.tokenizers.image_binary import logit_consistency

                original, read = percept.predict(batch["image"]), percept.predict(x)
                differ.append(torch.stack([original[k] != read[k] for k in original]).any(0).any(1))
                kls.append(logit_consistency(percept, x, batch["image"]))
            backgrounds.append(batch["background"])
            counts.append(occupied.sum(1))
            for i, j in (occupied & ~ok).nonzero().tolist():
                read = int(pred["shape"][i, j])
                confusions[(SHAPES[int(batch["shape"][i, j]) - 1], SHAPES[read - 1] if read else "none")] += 1
    scene_ok, backgrounds, counts = torch.cat(scene_ok).float(), torch.cat(backgrounds), torch.cat(counts)
    out = {
        "what": args.model or ("down2" if args.down2 else f"blur {args.blur}"),
        "split": args.split,
        "n": len(scene_ok),
        "scenes": float(scene_ok.mean()),
        "by_background": {
            name: float(scene_ok[backgrounds == k].mean())
            for k, name in enumerate(BACKGROUNDS)
            if (backgrounds == k).any()
        },
        "by_objects": {int(c): float(scene_ok[counts == c].mean()) for c in counts.unique().tolist()},
        "confusions": [[t, r, n] for (t, r), n in confusions.most_common(10)],
        "wrong_attribute": dict(attrs),
    }
    if percept is not None:
        differ, kls, wrong = torch.cat(differ), torch.cat(kls), scene_ok == 0
        out["percept"] = {
            "name": args.percept,
            "scenes_read_differently": int(differ.sum()),
            "of_them_judge_misread": int((differ & wrong).sum()),
            "kl_median": float(kls.median()),
            "kl_on_judge_misread": [round(float(v), 4) for v in kls[wrong]],
        }
    if args.grid and pairs:
        from torchvision.utils import save_image

        grid = F.interpolate((torch.cat(pairs) + 1) / 2, scale_factor=4, mode="nearest")
        save_image(grid, args.grid, nrow=8, padding=4, pad_value=1.0)
        out["grid"] = args.grid
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
