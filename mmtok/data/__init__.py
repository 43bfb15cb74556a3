"""Datasets (test beds) and the registry that builds them by name.

Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts with an ``"image"``: float32 CHW
RGB in [-1, 1], deterministic by ``(seed, split, index)``. Items hold only tensors, ints and strings, so
the default collate works. See ``docs/data.md``.

    from mmtok.data import build_dataset
    ds = build_dataset("shapes", "heldout", resolution=32)
"""

from __future__ import annotations

from .digits import DigitsDataset
from .imagefile import from_uint8, to_uint8
from .imagefolder import ImageFolderDataset
from .latents import LatentsDataset
from .mixture import MixtureDataset
from .photos import PhotosDataset
from .registry import DATASETS, DatasetRegistry, build_dataset
from .shapes import Scene, SceneObject, ShapesDataset

DATASETS.update(
    {
        "shapes": ShapesDataset,
        "digits": DigitsDataset,
        "imagefolder": ImageFolderDataset,
        "photos": PhotosDataset,
        "mixture": MixtureDataset,
        "latents": LatentsDataset,
        # PET/CT phantoms: registered by name, imported on first use (data/ does not import grounding/).
        "grounding-phantom": "mmtok.grounding.dataset:GroundingPhantomDataset",
    }
)

__all__ = [
    "DATASETS",
    "DatasetRegistry",
    "DigitsDataset",
    "ImageFolderDataset",
    "LatentsDataset",
    "MixtureDataset",
    "PhotosDataset",
    "Scene",
    "SceneObject",
    "ShapesDataset",
    "build_dataset",
    "from_uint8",
    "to_uint8",
]
