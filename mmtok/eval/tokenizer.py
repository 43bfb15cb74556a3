"""``mmtok eval tokenizer``: reconstruction quality of an image tokenizer on held-out test-bed data.

PSNR and SSIM (uint8-rounded pixels, per image, averaged) on held-out shapes (the ``heldout``
compositions), digits (test split) and photos (test photos and faces); on shapes also judge-FID
between originals and reconstructions (``judge-shapes64`` per-slot features) and the judge's
accuracy on reconstructions next to its accuracy on the originals: per object (an occupied slot with
shape, colour and size all right) and per scene (all nine slots right).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import hub
from ..data import build_dataset
from ..errors import MmtokError
from ..runtime import pick_device
from .fid import frechet_distance

# (dataset, split, extra kwargs): the held-out data every tokenizer is measured on.
BEDS = (("shapes", "heldout", {}), ("digits", "test", {}), ("photos", "test", {}))
# Images per test bed: every held-out shapes scene (2000), every test photo (1000) and digit (355).
# 512 was too few to rank decoders a few scenes apart.
DEFAULT_N = 2000


@torch.no_grad()
def evaluate_tokenizer(
    name: str,
    n: int = DEFAULT_N,
    device: str = "cpu",
    seed: int = 0,
    judge: str = "judge-shapes64",
    batch_size: int = 64,
    progress: bool = True,
    write: bool = False,
) -> dict[str, Any]:
    from ..tokenizers.image_kl import reconstruction_metrics  # diffusers: loaded on use

    device = pick_device(device)
    model = hub.load(name, device=device)
    if not hasattr(model, "encode") or not hasattr(model, "decode"):
        raise MmtokError(f"{name} is not an image tokenizer: `mmtok models` lists the tokenizers")
    scorer = hub.load(judge, device=device)  # before any work: a missing judge fails fast
    reconstruct = lambda x: model.decode(model.encode(x)).float().clamp(-1, 1)  # noqa: E731
    metrics: dict[str, Any] = {}
    for bed, split, kwargs in BEDS:
        options = dict(kwargs, resolution=64, seed=seed)
        dataset = build_dataset(bed, split, **options)
        subset = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
        if progress:
            print(f"evaluating {name} on {bed}/{split} ({len(subset)} images)", flush=True)
        out = reconstruction_metrics(reconstruct, subset, device, batch_size)
        metrics[f"{bed}_{split}/psnr"] = out["psnr"]
        metrics[f"{bed}_{split}/ssim"] = out["ssim"]
        metrics[f"{bed}_{split}/n"] = out["n"]

    metrics.update(judge_reconstructions(reconstruct, scorer, n, seed, device, batch_size))
    if write:
        command = f"mmtok eval tokenizer --model {name} --n {n} --seed {seed} --json"
        hub.record_metrics(name, metrics, command, title="Held-out evaluation")
    return metrics


@torch.no_grad()
def judge_reconstructions(
    reconstruct,
    scorer,
    n: int = DEFAULT_N,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> dict[str, float]:
    """The judge on the first ``n`` held-out shapes scenes and on ``reconstruct``'s uint8-rounded
    reconstructions of them: judge-FID of its per-slot features, and objects / scenes / attributes
    right, by object size (the ``shapes_heldout/judge_*`` keys of ``mmtok eval tokenizer``)."""
    from ..tokenizers.image_kl import to_pixels  # diffusers: loaded on use

    dataset = build_dataset("shapes", "heldout", resolution=64, seed=seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(min(n, len(dataset)))), batch_size=batch_size
    )
    real_feats, fake_feats = [], []
    # Per occupied slot: all three attributes right (object) and per scene: all nine slots right.
    # Per attribute too (which one the codes lose), and split by object size (small ones lose most).
    attrs = ("shape", "colour", "size")
    hits = {
        k: {"object": 0, "scene": 0, **dict.fromkeys(attrs, 0), "small": 0, "large": 0}
        for k in ("original", "reconstruction")
    }
    small_total = 0
    occupied_total = 0
    for batch in loader:
        images = batch["image"].to(device)
        recon = reconstruct(images)
        # Score what a saved PNG would hold: uint8-rounded pixels.
        recon = to_pixels(recon).float() / 127.5 - 1
        occupied = batch["shape"].to(device) > 0
        occupied_total += int(occupied.sum())
        small = occupied & (batch["size"].to(device) == 1)
        small_total += int(small.sum())
        for feats, key, x in ((real_feats, "original", images), (fake_feats, "reconstruction", recon)):
            feats.append(scorer.features(x).reshape(len(x) * 9, -1).cpu())
            pred = scorer.predict(x)
            right = [pred[k] == batch[k].to(device) for k in attrs]
            slot_ok = torch.stack(right).all(0)
            hits[key]["object"] += int(slot_ok[occupied].sum())
            for attr, ok in zip(attrs, right, strict=True):
                hits[key][attr] += int(ok[occupied].sum())
            hits[key]["small"] += int(slot_ok[small].sum())
            hits[key]["large"] += int(slot_ok[occupied & ~small].sum())
            hits[key]["scene"] += int(slot_ok.all(1).sum())
    count = len(loader.dataset)
    metrics = {"shapes_heldout/judge_fid": frechet_distance(torch.cat(real_feats), torch.cat(fake_feats))}
    for key, h in hits.items():
        metrics[f"shapes_heldout/judge_object_acc_{key}"] = h["object"] / max(1, occupied_total)
        metrics[f"shapes_heldout/judge_exact_{key}"] = h["scene"] / count
        for attr in attrs:
            metrics[f"shapes_heldout/judge_{attr}_acc_{key}"] = h[attr] / max(1, occupied_total)
        metrics[f"shapes_heldout/judge_small_object_acc_{key}"] = h["small"] / max(1, small_total)
        large_total = occupied_total - small_total
        metrics[f"shapes_heldout/judge_large_object_acc_{key}"] = h["large"] / max(1, large_total)
    return metrics
