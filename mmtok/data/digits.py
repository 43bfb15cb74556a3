"""Real handwritten digits (the `digits` test bed): scikit-learn's bundled ``load_digits``, upsampled.

The 1,797 8x8 digits (values 0-16) ship inside scikit-learn, so nothing is downloaded. Each is padded by
one source pixel (so strokes do not touch the frame, like MNIST's margin), then resampled bicubically to
64x64 (or 32x32): light ink on a dark background, grey replicated to RGB. The split is fixed and
stratified: within each class, every fifth digit in scikit-learn's order is ``test`` (355), the rest
``train`` (1,442). ``augment=True`` adds a small random affine transform, drawn from
``(seed, split, index)`` so it is deterministic too.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError

SPLITS = ("train", "test")
RESOLUTIONS = (32, 64)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w} = the number as a word, {n} = as a numeral.
CAPTION_TEMPLATES = (
    "a handwritten digit {w}",
    "a handwritten {w}",
    "the number {n} written by hand",
    "the digit {n}",
    "a hand-drawn number {w}",
    "handwritten number {n}",
    "a scanned handwritten {n}",
    "the numeral {w}, handwritten",
    # Synonyms and looser phrasings, so a CLIP trained on these captions ties "digit", "number",
    # "numeral", "figure" and the word and numeral forms to the same picture.
    "a handwritten figure {w}",
    "a digit {w} written by hand",
    "a photo of the handwritten number {w}",
    "a black and white scan of a handwritten {w}",
    "the numeral {n}",
    "a pen-written digit {n}",
    "someone wrote the number {w}",
    "a handwritten digit: {n}",
)
_SPLIT_CODE = {"train": 0, "test": 1}


@lru_cache(maxsize=1)
def load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float32 [N, 1, 10, 10] in [0, 1] (1-pixel zero border) and int64 labels [N]."""
    from sklearn.datasets import load_digits  # lazy: sklearn.datasets takes ~1 s to import

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    return F.pad(images, (1, 1, 1, 1)), torch.from_numpy(data.target.astype(np.int64))


def split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()``: within each class, every 5th digit (rank 4, 9, ...) is test."""
    if split not in SPLITS:
        raise ConfigError(f"unknown digits split {split!r}: use train or test")
    labels = load_raw()[1].numpy()
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in range(10):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    is_test = rank % 5 == 4
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _affine(rng: np.random.Generator) -> torch.Tensor:
    """A small random affine (rotation +-12 deg, scale 0.9-1.1, shear +-0.1, shift +-6%) as a 2x3 theta."""
    angle = math.radians(rng.uniform(-12, 12))
    scale = rng.uniform(0.9, 1.1)
    shear = rng.uniform(-0.1, 0.1)
    tx, ty = rng.uniform(-0.12, 0.12, size=2)  # normalised [-1, 1] coordinates: 0.12 = 6% of the width
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # theta maps output coordinates to input coordinates, so it is the inverse-ish of the visible motion.
    return torch.tensor([[cos, -sin + shear, tx], [sin, cos, ty]], dtype=torch.float32)


class DigitsDataset(Dataset):
    """Real handwritten digits from scikit-learn, upsampled to 64x64 (or 32x32) RGB.

    Args:
        split: ``"train"`` (1,442 digits) or ``"test"`` (355); fixed, disjoint and stratified.
        resolution: 64 (default) or 32.
        augment: apply a small random affine per item (deterministic by ``(seed, split, index)``).
        size: number of items (default: the split's digit count); item ``i`` shows digit ``i % count``,
            so with ``augment=True`` a longer dataset gives fresh variants of each digit.
        seed: base seed for augmentation and caption choice.
        negatives: also give ``negative``: the same caption naming another digit (a CLIP hard negative).

    Items: ``image`` float32 [3, R, R] in [-1, 1] (light ink on dark), ``label`` int 0-9, ``caption`` str.
    """

    def __init__(
        self, split: str = "train", resolution: int = 64, augment: bool = False, size: int | None = None,
        seed: int = 0, negatives: bool = False,
    ):  # fmt: skip
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"digits resolution must be 32 or 64, got {resolution}")
        self.indices = split_indices(split)
        size = len(self.indices) if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"digits size must be a positive integer, got {size!r}")
        self.split, self.resolution, self.augment, self.size, self.seed = (
            split,
            resolution,
            augment,
            size,
            seed,
        )
        # private, as _render: an extra caption, not part of a latent cache's identity (images unchanged)
        self._negatives = bool(negatives)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        images, labels = load_raw()
        source = int(self.indices[index % len(self.indices)])
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], int(index)])
        theta = _affine(rng) if self.augment else torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
        grid = F.affine_grid(theta[None], [1, 1, self.resolution, self.resolution], align_corners=False)
        # One bicubic resampling does both the upsampling and the affine; bicubic overshoots, so clamp.
        grey = F.grid_sample(images[source : source + 1], grid, mode="bicubic", align_corners=False)[0]
        label = int(labels[source])
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        item = {
            "image": grey.clamp(0.0, 1.0).mul(2.0).sub(1.0).expand(3, -1, -1).contiguous(),
            "label": label,
            "caption": template.format(w=NUMBER_WORDS[label], n=label),
        }
        if self._negatives:  # the same sentence naming another digit (ShapesDataset's ``negatives``)
            other = (label + 1 + int(rng.integers(9))) % 10
            item["negative"] = template.format(w=NUMBER_WORDS[other], n=other)
        return item
