"""Judges: fixed attribute classifiers that score generated images.

``ShapesJudge`` reads a shapes scene slot by slot (3x3 layout): for each slot, empty or a shape, its
colour and its size -- relations ("above", "left of") follow from the slots. ``DigitsJudge`` reads a
handwritten digit. Both are small CNNs trained on *real* test-bed images (``configs/judge-*.yaml``)
and shipped in ``weights/``; their held-out accuracy is reported next to every score they give
(``mmtok eval judge``). ``features(images)`` gives the penultimate activations used for judge-FID.

Images are float tensors in [-1, 1], Bx3xHxW; other sizes are resized to the judge's resolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..data import build_dataset
from ..data.mixture import rotate_hue
from ..errors import InputError, MmtokError
from ..hub import MmtokModel, register_model
from ..runtime import pick_device

SLOTS = 9  # 3x3 layout of the shapes test bed


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = max(1, cout // 8)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class _Trunk(nn.Module):
    """Conv trunk: a stride-2 stem then one block per width, each halving the resolution but the first.

    GroupNorm rather than BatchNorm so that train and eval behave the same and the judge's output for
    an image never depends on the rest of its batch.
    """

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1), nn.SiLU())
        self.blocks = nn.Sequential(
            *[_block(widths[max(i - 1, 0)], w, 1 if i == 0 else 2) for i, w in enumerate(widths)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def _augment(images: torch.Tensor, max_shift: float, max_rot: float, max_scale: float, noise: float):
    """Small random affine warp + Gaussian noise, drawn from torch's global RNG (seeded by the trainer,
    so resumed runs replay the same augmentations). Judges must tolerate the slight blur, jitter and
    noise of generated images without being fooled on attributes."""
    b = images.shape[0]
    angle = (torch.rand(b) * 2 - 1) * max_rot * math.pi / 180
    scale = 1 + (torch.rand(b) * 2 - 1) * max_scale
    shift = (torch.rand(b, 2) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    # Border padding: the background continues instead of a black frame the real data never has.
    out = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    out = out + noise * torch.rand(b, 1, 1, 1, device=images.device) * torch.randn_like(out)
    return out.clamp(-1, 1)


def _rotate_hue(images: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the hue of each image with probability ``prob`` by an amount in [-0.5, 0.5) (torch's
    global RNG, as ``_augment``); returns the images and a bool mask of the rotated ones."""
    rotated = torch.rand(images.shape[0]) < prob
    amounts = torch.rand(images.shape[0]) - 0.5
    out = images.clone()
    for i in torch.nonzero(rotated).flatten().tolist():
        out[i] = rotate_hue(images[i], float(amounts[i]))
    return out, rotated.to(images.device)


class _Judge(MmtokModel):
    task = "judge"
    resolution: int

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"judge expects Bx3xHxW images, got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(
                images,
                size=(self.resolution, self.resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return images.float()

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's activations after the stem and after each block (differentiable), for an
        LPIPS-style perceptual loss (``BinaryTokenizer(perceptual=...)``)."""
        x = self.trunk.stem(self._prepare(images))
        maps = [x]
        for block in self.trunk.blocks:
            x = block(x)
            maps.append(x)
        return maps

    @torch.no_grad()
    def evaluate(
        self, dataset, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> dict[str, float]:
        """Accuracy on ``dataset`` (real images with labels)."""
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        was_training = self.training
        self.eval()
        totals: dict[str, float] = {}
        count = 0
        for batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            stats = self.score(batch["image"], batch)
            n = batch["image"].shape[0]
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value) * n
            count += n
        self.train(was_training)
        return {key: value / count for key, value in totals.items()} | {"n": count}


@register_model
class ShapesJudge(_Judge):
    """Per-slot attribute classifier for the shapes test bed.

    The trunk's feature map is pooled onto the 3x3 slot grid; each slot's vector (plus a learned slot
    embedding) goes through one shared MLP that predicts shape (0 = empty), colour and size.

    Args:
        n_shapes: number of shape classes (without "empty").
        n_colours: number of colour classes (without "empty").
        n_sizes: number of size classes (without "empty").
        widths: channel widths of the conv stages.
        hidden: width of the per-slot MLP.
        resolution: input side the judge was trained at; other sizes are resized.
        hue_prob: in training, the share of images whose hue is rotated by a random amount; their
            colour labels no longer hold, so only their shape and size terms count. Why: trained on
            the ``train`` compositions alone, a network learns which colour each shape comes in and
            reads held-out pairs by it; shown every shape in every hue, it must read the outline.
    """

    def __init__(
        self,
        n_shapes: int = 8,
        n_colours: int = 8,
        n_sizes: int = 2,
        widths: tuple[int, ...] = (32, 64, 128),
        hidden: int = 256,
        resolution: int = 64,
        hue_prob: float = 0.0,
    ):
        super().__init__()
        if not 0 <= hue_prob <= 1:
            raise ValueError(f"hue_prob must be a probability in [0, 1], got {hue_prob}")
        self.resolution = resolution
        self.hue_prob = float(hue_prob)
        self.n_out = (n_shapes + 1, n_colours + 1, n_sizes + 1)
        self.trunk = _Trunk(tuple(widths))
        self.slot_embed = nn.Parameter(torch.zeros(SLOTS, widths[-1]))
        self.head = nn.Sequential(
            nn.LayerNorm(widths[-1]),
            nn.Linear(widths[-1], hidden),
            nn.SiLU(),
            nn.Linear(hidden, sum(self.n_out)),
        )

    def slot_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(self._prepare(images))
        slots = F.adaptive_avg_pool2d(fmap, 3).flatten(2).transpose(1, 2)  # B x 9 x C, row-major slots
        return slots + self.slot_embed

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per slot: ``shape`` Bx9x(S+1), ``colour`` Bx9x(C+1), ``size`` Bx9x(Z+1)."""
        logits = self.head(self.slot_features(images)).float()
        shape, colour, size = logits.split(self.n_out, dim=-1)
        return {"shape": shape, "colour": colour, "size": size}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the slots' hidden MLP activations, concatenated) for judge-FID."""
        h = self.head[:3](self.slot_features(images))
        return h.flatten(1).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-slot labels (LongTensor Bx9 each; 0 = empty), in the dataset's encoding."""
        out = self(images)
        shape = out["shape"].argmax(-1)
        empty = shape == 0
        # An empty slot has no colour or size: keep the prediction consistent with the label encoding.
        colour = out["colour"][..., 1:].argmax(-1).add(1).masked_fill(empty, 0)
        size = out["size"][..., 1:].argmax(-1).add(1).masked_fill(empty, 0)
        return {"shape": shape, "colour": colour, "size": size}

    def score(self, images: torch.Tensor, labels: dict[str, Any]) -> dict[str, float]:
        """Accuracies of the predictions against ``labels`` (per slot attribute and whole scene)."""
        pred = self.predict(images)
        ok = {k: pred[k] == labels[k].to(pred[k].device) for k in ("shape", "colour", "size")}
        occupied = labels["shape"].to(pred["shape"].device) > 0
        slot_ok = ok["shape"] & ok["colour"] & ok["size"]
        return {
            "shape_acc": ok["shape"].float().mean().item(),
            "colour_acc": ok["colour"].float().mean().item(),
            "size_acc": ok["size"].float().mean().item(),
            # Attribute accuracy on occupied slots only: empty slots are easy and would flatter the mean.
            "object_acc": slot_ok[occupied].float().mean().item() if occupied.any() else 1.0,
            "scene_exact": slot_ok.all(1).float().mean().item(),
        }

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        colour = batch["colour"]
        if self.training and self.hue_prob > 0:
            images, rotated = _rotate_hue(images, self.hue_prob)
            colour = colour.masked_fill(rotated[:, None], -100)  # cross_entropy's ignore_index
        if self.training:
            images = _augment(images, max_shift=0.03, max_rot=4.0, max_scale=0.04, noise=0.08)
        out = self(images)
        targets = {"shape": batch["shape"], "colour": colour, "size": batch["size"]}
        # Mean over the slots that count (cross_entropy's own mean is NaN when none does: a batch of
        # rotated images only).
        counted = {k: (t != -100).sum().clamp(min=1) for k, t in targets.items()}
        loss = sum(
            F.cross_entropy(out[k].flatten(0, 1), t.flatten(), reduction="sum") / counted[k]
            for k, t in targets.items()
        )
        with torch.no_grad():
            # A rotated image's colour counts as right: its label no longer names it.
            exact = torch.stack([(out[k].argmax(-1) == t) | (t == -100) for k, t in targets.items()]).all(0)
        return loss, {"scene_exact": exact.all(1).float().mean().item()}


@register_model
class ShapesPerceptual(ShapesJudge):
    """A ``ShapesJudge`` kept as a perceptual network, not as a judge: its ``feature_maps`` give the
    binary tokenizer's LPIPS-style loss (``BinaryTokenizer(perceptual=...)``). Same architecture and
    training; the task differs so that ``mmtok eval judge`` and every score leave it out -- a
    network a model was trained against must not also grade it."""

    task = "perceptual"


@register_model
class DigitsJudge(_Judge):
    """Digit classifier (0-9) for the digits test bed.

    Args:
        n_classes: number of classes.
        widths: channel widths of the conv stages.
        dropout: dropout before the classifier (the digits set is small: 1.4k training images).
        resolution: input side the judge was trained at; other sizes are resized.
    """

    def __init__(
        self,
        n_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        dropout: float = 0.2,
        resolution: int = 64,
    ):
        super().__init__()
        self.resolution = resolution
        self.trunk = _Trunk(tuple(widths))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], n_classes))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(self._prepare(images)).mean((2, 3)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self._prepare(images)).mean((2, 3))).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(-1)

    def score(self, images: torch.Tensor, labels: dict[str, Any]) -> dict[str, float]:
        pred = self.predict(images)
        return {"accuracy": (pred == labels["label"].to(pred.device)).float().mean().item()}

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        if self.training:
            images = _augment(images, max_shift=0.08, max_rot=10.0, max_scale=0.1, noise=0.08)
        logits = self(images)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=0.05)
        return loss, {"accuracy": (logits.argmax(-1) == batch["label"]).float().mean().item()}


# ----------------------------------------------------------------------------- evaluation entry point

# Which held-out data each shipped judge is measured on: (dataset name, split, kwargs).
JUDGE_EVAL = {
    "judge-shapes64": [("shapes", "test", {"resolution": 64}), ("shapes", "heldout", {"resolution": 64})],
    "judge-digits64": [("digits", "test", {"resolution": 64})],
}


def evaluate_judges(
    names: list[str] | None = None,
    n: int = 2000,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    write: bool = False,
) -> dict[str, dict[str, float]]:
    """Held-out accuracy of the shipped judges (``mmtok eval judge``); ``write`` records the figures in
    each judge's ``metrics.json`` and README."""
    device = pick_device(device)
    names = names or [m["name"] for m in hub.list_models() if m["task"] == "judge"]
    if not names:
        raise MmtokError("no judges found: train them with `mmtok train configs/judge-shapes64.yaml`")
    results: dict[str, dict[str, float]] = {}
    for name in names:
        model = hub.load(name, device=device)

        beds = JUDGE_EVAL.get(name)
        if beds is None:
            bed = "shapes" if isinstance(model, ShapesJudge) else "digits"
            beds = JUDGE_EVAL[f"judge-{bed}64"]
        metrics: dict[str, float] = {}
        for data_name, split, kwargs in beds:
            kwargs = dict(kwargs, resolution=model.resolution)
            if data_name == "shapes":
                kwargs.update(size=n, seed=seed)
            dataset = build_dataset(data_name, split=split, **kwargs)
            if progress:
                print(f"evaluating {name} on {data_name}/{split} ({len(dataset)} images)", flush=True)
            for key, value in model.evaluate(dataset, device=device).items():
                metrics[f"{data_name}_{split}/{key}"] = value
        results[name] = metrics
        if write:
            command = f"mmtok eval judge --model {name} --n {n} --seed {seed} --json"
            hub.record_metrics(name, metrics, command, title="Held-out evaluation")
    return results
