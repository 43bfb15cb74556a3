"""A folder of class sub-folders (the ImageNet / torchvision ``ImageFolder`` layout) as a dataset.

    <folder>/<split>/<class name>/<image files>      e.g. imagenet/train/n01440764/n01440764_10026.JPEG

Classes are the sorted sub-folder names of ``<folder>/train`` (so ``train`` and ``val`` share labels);
every image is read by content (``mmtok.data.imagefile.read_image``), resized so its shorter side is
``resolution`` (bicubic, antialiased) and centre-cropped -- ADM's ImageNet preprocessing. Items are
``{"image": float32 [3, R, R] in [-1, 1], "label": int, "caption": class name}``, deterministic by
index, so the latent cache (``latents`` with ``source: imagefolder``) can encode them once.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from .imagefile import read_image

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolderDataset(Dataset):
    """Images of ``<folder>/<split>/<class>/`` with integer labels (see the module docstring).

    Args:
        split: sub-folder of ``folder`` (``train``, ``val`` ...).
        folder: the dataset folder (not ``root``: the latent cache takes that name for its own folder).
        resolution: output side in pixels (default 256).
        size: use only the first ``size`` images of the sorted list (default: all).
    """

    def __init__(
        self,
        split: str = "train",
        folder: str = "data/imagenet",
        resolution: int = 256,
        size: int | None = None,
    ):
        self.split, self.folder, self.resolution = split, str(folder), int(resolution)
        base = Path(folder).expanduser()
        classes_from = base / "train" if (base / "train").is_dir() else base / split
        where = base / split
        if not where.is_dir():
            raise ConfigError(f"imagefolder: {where} is not a folder (expected <folder>/<split>/<class>/...)")
        self._classes = sorted(
            p.name for p in classes_from.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self._classes:
            raise ConfigError(f"imagefolder: {classes_from} has no class sub-folders")
        index = {name: i for i, name in enumerate(self._classes)}
        self._files = [
            (path, index[path.parent.name])
            for path in sorted(where.glob("*/*"))
            if path.suffix.lower() in SUFFIXES and path.parent.name in index
        ]
        if size is not None:
            if not isinstance(size, int) or size < 1:
                raise ConfigError(f"imagefolder size must be a positive integer, got {size!r}")
            self._files = self._files[:size]
        if not self._files:
            raise ConfigError(f"imagefolder: no images ({', '.join(SUFFIXES)}) under {where}/<class>/")
        self.size, self.num_classes = len(self._files), len(self._classes)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict:
        path, label = self._files[index]
        image = read_image(path)
        h, w = image.shape[-2:]
        scale = self.resolution / min(h, w)
        size = (max(self.resolution, round(h * scale)), max(self.resolution, round(w * scale)))
        image = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        crop = image[:, top : top + self.resolution, left : left + self.resolution]
        return {"image": crop.clamp(-1, 1).contiguous(), "label": label, "caption": self._classes[label]}
