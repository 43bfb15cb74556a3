"""A weighted mixture of registered datasets, deterministic by index (the tokenizers train on one).

    ds = build_dataset("mixture", "train", size=60000, parts=[
        {"name": "shapes", "kwargs": {"resolution": 64}, "weight": 0.45},
        {"name": "photos", "kwargs": {"resolution": 64}, "weight": 0.4},
        {"name": "digits", "kwargs": {"resolution": 64, "augment": True, "size": 20000}, "weight": 0.15},
    ])
    ds[i]   # {"image", "caption", "source": "shapes" | "photos" | "digits"}

Item ``i`` draws its part and the index inside that part from its own
``numpy.random.default_rng([seed, MIXTURE_CODE, i])``, like every mmtok dataset: the same
``(parts, seed, i)`` always gives the same item, in any order, worker or process. Items keep only the
keys every part has (so the default collate works on mixed batches), plus ``"source"``: the part's
label (its ``source`` entry, else its dataset name), which replaces any ``source`` a part had.

A part may set ``hue``: the probability that one of its items comes back with its hue rotated by a
uniform random amount (drawn from the item's own stream, so still deterministic). A tokenizer is a
general image codec: rotating the hue of a blue star shows it a red one, a combination the shapes
train split holds out from the generators. Captions and labels would name the colour before the
rotation, so the items of a mixture with a ``hue`` part keep only ``image`` (and ``source``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

PART_KEYS = ("name", "split", "kwargs", "weight", "source", "hue")
MIXTURE_CODE = 77  # keeps the mixture's draws apart from any part's own (seed, split, index) streams


class MixtureDataset(Dataset):
    """Weighted mixture of datasets built by name.

    Args:
        split: default split of the parts that do not name their own.
        parts: list of dicts ``{name, split?, kwargs?, weight?, source?}``; ``weight`` (default 1) is
            the relative probability of drawing from the part, ``source`` the label in items.
        size: number of items.
        seed: seed of the per-item draws.
    """

    def __init__(
        self,
        split: str = "train",
        parts: list[dict[str, Any]] | None = None,
        size: int = 10000,
        seed: int = 0,
    ):
        from . import build_dataset  # the registry imports this module

        if not isinstance(parts, list | tuple) or not parts:
            raise ConfigError("mixture needs parts: a non-empty list of {name, split, kwargs, weight}")
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"mixture size must be a positive integer, got {size!r}")
        self.datasets, self.sources, self.hues, weights = [], [], [], []
        for i, part in enumerate(parts):
            if not isinstance(part, dict) or "name" not in part:
                raise ConfigError(f"mixture part {i} must be a dict with a dataset name, got {part!r}")
            unknown = sorted(set(part) - set(PART_KEYS))
            if unknown:
                raise ConfigError(
                    f"mixture part {i} has unknown key(s) {unknown}: use {', '.join(PART_KEYS)}"
                )
            weight = part.get("weight", 1.0)
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight <= 0
            ):
                raise ConfigError(
                    f"mixture part {i} ({part['name']}): weight must be a positive number, got {weight!r}"
                )
            hue = part.get("hue", 0.0)
            if isinstance(hue, bool) or not isinstance(hue, int | float) or not 0 <= hue <= 1:
                raise ConfigError(
                    f"mixture part {i} ({part['name']}): hue must be a probability in [0, 1], got {hue!r}"
                )
            kwargs = part.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise ConfigError(f"mixture part {i} ({part['name']}): kwargs must be a mapping")
            dataset = build_dataset(part["name"], part.get("split") or split, **kwargs)
            if len(dataset) == 0:
                raise ConfigError(f"mixture part {i} ({part['name']}) is empty")
            self.datasets.append(dataset)
            self.sources.append(str(part.get("source") or part["name"]))
            self.hues.append(float(hue))
            weights.append(float(weight))
        self.weights = np.asarray(weights) / sum(weights)
        self._cumulative = np.cumsum(self.weights)
        self.size, self.seed, self.split = size, seed, split
        firsts = [d[0] for d in self.datasets]
        self.keys = sorted(set.intersection(*(set(f) for f in firsts)) - {"source"})
        if any(self.hues):  # captions and labels would name the colour before the rotation
            self.keys = [k for k in self.keys if k == "image"]
        if "image" not in self.keys:
            raise ConfigError("mixture parts must all have an 'image'")
        shapes = {tuple(f["image"].shape) for f in firsts}
        if len(shapes) > 1:
            raise ConfigError(
                f"mixture parts give images of different shapes {sorted(shapes)}: use one resolution"
            )

    def __len__(self) -> int:
        return self.size

    def _draw(self, index: int) -> tuple[int, int, float]:
        """(part, index inside the part, hue rotation in [-0.5, 0.5) or 0) of item ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a mixture of {self.size} items")
        rng = np.random.default_rng([self.seed, MIXTURE_CODE, index])
        part = min(int(np.searchsorted(self._cumulative, rng.random(), side="right")), len(self.datasets) - 1)
        inner = int(rng.integers(len(self.datasets[part])))
        # Drawn after (part, inner), so adding a hue part leaves every item's choice of image alone.
        rotate, amount = rng.random(), rng.random() - 0.5
        return part, inner, (amount if rotate < self.hues[part] else 0.0)

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index inside the part) of mixture item ``index``."""
        part, inner, _ = self._draw(index)
        return part, inner

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, inner, hue = self._draw(int(index))
        item = self.datasets[part][inner]
        out = {**{k: item[k] for k in self.keys}, "source": self.sources[part]}
        if hue:
            out["image"] = rotate_hue(out["image"], hue)
        return out


def rotate_hue(image: torch.Tensor, amount: float) -> torch.Tensor:
    """``image`` (3xHxW in [-1, 1], any dtype) with its hue rotated by ``amount`` of a turn."""
    from torchvision.transforms.v2.functional import adjust_hue

    # adjust_hue works on [0, 1].
    return (adjust_hue((image.float() + 1) / 2, amount) * 2 - 1).to(image.dtype)
