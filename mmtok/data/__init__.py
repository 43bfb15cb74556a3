"""Datasets (test beds) and the registry that builds them by name.

Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts with an ``"image"``: float32 CHW
RGB in [-1, 1], deterministic by ``(seed, split, index)``. Items hold only tensors, ints and strings, so
the default collate works. See ``docs/data.md``.

    from mmtok.data import build_dataset
    ds = build_dataset("shapes", "heldout", resolution=32)
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from .digits import DigitsDataset
from .imagefolder import ImageFolderDataset
from .mixture import MixtureDataset
from .photos import PhotosDataset
from .shapes import Scene, SceneObject, ShapesDataset

DATASETS: dict[str, type[Dataset]] = {
    "shapes": ShapesDataset,
    "digits": DigitsDataset,
    "imagefolder": ImageFolderDataset,
    "photos": PhotosDataset,
    "mixture": MixtureDataset,
}


def build_dataset(name: str, split: str = "train", **kwargs) -> Dataset:
    """Build the dataset registered as ``name`` for ``split``; unknown names or options raise ConfigError."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    cls = DATASETS[name]
    options = [p for p in inspect.signature(cls).parameters if p != "split"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        bad = ", ".join(map(repr, unknown))
        raise ConfigError(f"dataset {name!r} has no option {bad}: valid options are {', '.join(options)}")
    return cls(split=split, **kwargs)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[-1, 1] float image(s) CHW (or BCHW) -> uint8 HxWx3 (or BxHxWx3) NumPy array."""
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"to_uint8 expects a [3, H, W] or [B, 3, H, W] tensor, got shape {tuple(image.shape)}"
        )
    pixels = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).numpy()


def from_uint8(array) -> torch.Tensor:
    """uint8 HxWx3 / HxW (grey) array or PIL image (or a BxHxWx3 batch) -> float32 [-1, 1] CHW (BCHW)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InputError(f"from_uint8 expects uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise InputError(f"from_uint8 expects an HxWx3 array, got shape {array.shape}")
    image = torch.from_numpy(np.ascontiguousarray(array)).movedim(-1, -3).float()
    return (image / 127.5 - 1.0).contiguous()


__all__ = [
    "DATASETS",
    "DigitsDataset",
    "ImageFolderDataset",
    "MixtureDataset",
    "PhotosDataset",
    "Scene",
    "SceneObject",
    "ShapesDataset",
    "build_dataset",
    "from_uint8",
    "to_uint8",
]


# Last: latents.py builds its source datasets through build_dataset above.
from .latents import LatentsDataset  # noqa: E402

DATASETS["latents"] = LatentsDataset

from ..grounding.dataset import GroundingPhantomDataset  # noqa: E402

DATASETS["grounding-phantom"] = GroundingPhantomDataset
