"""Real photographs and faces that scikit-image ships (the `photos` test bed), as small crops.

Only files inside the installed scikit-image package are read, straight from its ``data`` folder with
PIL / NumPy: ``skimage.data`` (and its ``pooch`` downloader) is never imported, so nothing can download.
Photo items are square crops at a random position and scale (a quarter of the short side up to all of
it), resized with antialiasing; face items are whole 25x25 LFW faces resized up. Held out for ``test``
only: the photos ``coffee`` and ``coins`` and faces 80-99 of ``lfw_subset``. ``augment=True`` turns each
photo crop by one of the square's eight symmetries (flips and quarter turns) and mirrors faces half the
time: twelve training photos are few, and a decoder fitted to them late in training stops improving
on the held-out ones.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError

# name -> (file in skimage/data, caption variants). Grey photos are replicated to RGB.
PHOTOS = {
    "astronaut": ("astronaut.png", ("a photograph of an astronaut", "a portrait of an astronaut")),
    "camera": (
        "camera.png",
        ("a black and white photograph of a cameraman", "a photo of a man with a camera"),
    ),
    "chelsea": ("chelsea.png", ("a photograph of a cat", "a photo of a tabby cat")),
    "coffee": ("coffee.png", ("a photograph of a cup of coffee", "a photo of a coffee cup")),
    "coins": ("coins.png", ("a photograph of old coins", "a black and white photo of coins")),
    "rocket": ("rocket.jpg", ("a photograph of a rocket", "a photo of a rocket on a launch pad")),
    "immunohistochemistry": (
        "ihc.png",
        ("a microscope image of stained tissue", "a photo of a tissue slide"),
    ),
    "hubble_deep_field": (
        "hubble_deep_field.jpg",
        ("a telescope image of galaxies", "a photo of deep space"),
    ),
    "motorcycle": ("motorcycle_left.png", ("a photograph of a motorcycle", "a photo of a motorbike")),
    "moon": ("moon.png", ("a photograph of the moon's surface", "a photo of lunar craters")),
    "brick": ("brick.png", ("a photograph of a brick wall", "a photo of bricks")),
    "grass": ("grass.png", ("a photograph of grass", "a photo of a lawn")),
    "gravel": ("gravel.png", ("a photograph of gravel", "a photo of small stones")),
    "cell": ("cell.png", ("a microscope image of a cell", "a photo of a cell under a microscope")),
}
FACE_CAPTIONS = ("a photograph of a face", "a photo of a person's face", "a black and white photo of a face")
NUM_FACES = 100  # lfw_subset: images 0-99 are faces (100-199 are non-face patches, unused)
TEST_PHOTOS = ("coffee", "coins")
TEST_FACES = tuple(range(80, 100))
SPLITS = ("train", "test")
RESOLUTIONS = (32, 64)
MIN_CROP = 0.25  # smallest crop side, as a fraction of the photo's short side (keeps crops >= 75 px)
_SPLIT_CODE = {"train": 0, "test": 1}


def data_dir() -> Path:
    """scikit-image's bundled data folder, found without importing skimage."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ConfigError("the photos dataset needs scikit-image: pip install scikit-image")
    return Path(spec.origin).parent / "data"


def _read(filename: str) -> Path:
    path = data_dir() / filename
    if not path.is_file():
        raise ConfigError(
            f"{filename} is missing from scikit-image's data folder {path.parent}: reinstall it"
        )
    return path


@cache
def load_photo(name: str) -> torch.Tensor:
    """A source photo as uint8 [3, H, W] RGB."""
    with Image.open(_read(PHOTOS[name][0])) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@lru_cache(maxsize=1)
def load_faces() -> torch.Tensor:
    """The 100 LFW faces as float32 [100, 1, 25, 25] in [0, 1]."""
    faces = np.load(_read("lfw_subset.npy"), allow_pickle=False)[:NUM_FACES]
    return torch.from_numpy(faces.astype(np.float32))[:, None]


def split_sources(split: str) -> tuple[list[str], list[int]]:
    """(photo names, face indices) used by ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown photos split {split!r}: use train or test")
    test = split == "test"
    photos = [n for n in PHOTOS if (n in TEST_PHOTOS) == test]
    faces = [i for i in range(NUM_FACES) if (i in TEST_FACES) == test]
    return photos, faces


class PhotosDataset(Dataset):
    """Crops of real photographs and LFW faces bundled with scikit-image.

    Args:
        split: ``"train"`` or ``"test"``; test uses only the held-out photos ``TEST_PHOTOS`` and faces
            ``TEST_FACES``, which train never shows.
        size: number of items (default 10,000 for train, 1,000 for test); items are made on the fly.
        resolution: 64 (default) or 32.
        face_fraction: share of items that are faces (0 disables faces, 1 gives only faces).
        augment: turn photo crops by a random flip and quarter turn, mirror faces half the time. The
            draws come after all others, so items without it are unchanged.
        seed: base seed; the same (seed, split, index) always gives the same crop.

    Items: ``image`` float32 [3, R, R] in [-1, 1]; ``source`` str (a ``PHOTOS`` name, or ``lfw_face_<i>``);
    ``caption`` str.
    """

    def __init__(
        self, split: str = "train", size: int | None = None, resolution: int = 64, face_fraction: float = 0.2,
        seed: int = 0, augment: bool = False,
    ):  # fmt: skip
        self.photos, self.faces = split_sources(split)
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"photos resolution must be 32 or 64, got {resolution}")
        if not 0.0 <= face_fraction <= 1.0:
            raise ConfigError(f"face_fraction must be in [0, 1], got {face_fraction}")
        size = (10_000 if split == "train" else 1_000) if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"photos size must be a positive integer, got {size!r}")
        self.split, self.size, self.resolution = split, size, resolution
        self.face_fraction, self.seed, self.augment = face_fraction, seed, bool(augment)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], int(index)])
        r = self.resolution
        if rng.random() < self.face_fraction:
            face = self.faces[int(rng.integers(len(self.faces)))]
            grey = F.interpolate(
                load_faces()[face : face + 1], size=(r, r), mode="bicubic", align_corners=False
            )
            image = grey[0].clamp(0.0, 1.0).expand(3, -1, -1)
            source, captions = f"lfw_face_{face}", FACE_CAPTIONS
        else:
            source = self.photos[int(rng.integers(len(self.photos)))]
            photo = load_photo(source)
            height, width = photo.shape[1:]
            short = min(height, width)
            # Log-uniform crop side, so close-ups and whole views are equally common.
            side = int(round(short * math.exp(rng.uniform(math.log(MIN_CROP), 0.0))))
            top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
            crop = photo[None, :, top : top + side, left : left + side].float() / 255.0
            image = F.interpolate(crop, size=(r, r), mode="bilinear", antialias=True, align_corners=False)[0]
            captions = PHOTOS[source][1]
        caption = captions[int(rng.integers(len(captions)))]
        if self.augment:
            if rng.random() < 0.5:
                image = image.flip(-1)
            if not source.startswith("lfw_face_"):  # faces stay upright, as every test face is
                image = torch.rot90(image, int(rng.integers(4)), dims=(-2, -1))
        return {
            "image": image.clamp(0.0, 1.0).mul(2.0).sub(1.0).contiguous(),
            "source": source,
            "caption": caption,
        }
