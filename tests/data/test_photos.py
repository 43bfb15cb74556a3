"""The photos test bed: offline loading, held-out sources, determinism, item format."""

import socket
import sys

import pytest
import torch

from mmtok.data import build_dataset
from mmtok.data import photos as P
from mmtok.errors import ConfigError


@pytest.fixture
def offline(monkeypatch):
    """No network, and neither skimage.data nor pooch importable: loading must use local files only."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(sys.modules, "pooch", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    P.load_photo.cache_clear()
    P.load_faces.cache_clear()
    yield
    P.load_photo.cache_clear()
    P.load_faces.cache_clear()


def test_every_source_loads_offline(offline):
    for name in P.PHOTOS:
        photo = P.load_photo(name)
        assert photo.dtype == torch.uint8 and photo.shape[0] == 3 and min(photo.shape[1:]) >= 256, name
    faces = P.load_faces()
    assert faces.shape == (100, 1, 25, 25) and 0 <= faces.min() and faces.max() <= 1
    ds = P.PhotosDataset("train", size=20)
    assert all(ds[i]["image"].shape == (3, 64, 64) for i in range(20))


def test_test_sources_never_appear_in_train():
    train_photos, train_faces = P.split_sources("train")
    test_photos, test_faces = P.split_sources("test")
    assert sorted(test_photos) == sorted(P.TEST_PHOTOS) and test_faces == list(P.TEST_FACES)
    assert not set(train_photos) & set(test_photos) and not set(train_faces) & set(test_faces)
    held_out = set(P.TEST_PHOTOS) | {f"lfw_face_{i}" for i in P.TEST_FACES}
    train = [P.PhotosDataset("train", size=400)[i]["source"] for i in range(400)]
    test = [P.PhotosDataset("test", size=100)[i]["source"] for i in range(100)]
    assert not held_out & set(train)
    assert set(test) <= held_out and set(P.TEST_PHOTOS) <= set(test)
    assert len(set(train) & set(P.PHOTOS)) == len(P.PHOTOS) - len(P.TEST_PHOTOS)
    assert 0.1 < sum(s.startswith("lfw_face_") for s in train) / len(train) < 0.3


def test_items_deterministic_at_64_and_32():
    for resolution in (64, 32):
        a = P.PhotosDataset("train", size=30, resolution=resolution, seed=3)
        b = P.PhotosDataset("train", size=30, resolution=resolution, seed=3)
        first = [a[i] for i in range(30)]
        reverse = [b[i] for i in reversed(range(30))][::-1]
        for x, y in zip(first, reverse, strict=True):
            assert torch.equal(x["image"], y["image"]) and x["source"] == y["source"]
            assert x["caption"] == y["caption"]
            assert x["image"].shape == (3, resolution, resolution) and x["image"].dtype == torch.float32
            assert -1 <= x["image"].min() and x["image"].max() <= 1
            assert x["image"].std() > 0.01  # a real picture, not a flat fill
    other = P.PhotosDataset("train", size=30, seed=4)
    assert any(not torch.equal(first[i]["image"], other[i]["image"]) for i in range(5))


def test_captions_and_face_fraction():
    faces = P.PhotosDataset("test", size=20, face_fraction=1.0)
    for i in range(20):
        item = faces[i]
        assert item["source"].startswith("lfw_face_") and "face" in item["caption"]
    photos = P.PhotosDataset("train", size=20, face_fraction=0.0)
    for i in range(20):
        item = photos[i]
        assert item["source"] in P.PHOTOS and item["caption"] in P.PHOTOS[item["source"]][1]


def test_bad_options():
    for kwargs in ({"split": "heldout"}, {"face_fraction": 1.5}, {"resolution": 100}, {"size": -1}):
        with pytest.raises(ConfigError):
            P.PhotosDataset(**kwargs)
    with pytest.raises(ConfigError):
        build_dataset("photos", crop=0.5)


def _dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return turns + [torch.rot90(image.flip(-1), k, dims=(-2, -1)) for k in range(4)]


def test_augment_turns_crops_and_keeps_everything_else():
    plain = P.PhotosDataset("train", size=60, seed=5)
    turned = P.PhotosDataset("train", size=60, seed=5, augment=True)
    changed, variants = 0, set()
    for i in range(60):
        a, b = plain[i], turned[i]
        # Augmentation draws come last: the same source, caption and crop, only turned.
        assert a["source"] == b["source"] and a["caption"] == b["caption"]
        matches = [k for k, v in enumerate(_dihedral(a["image"])) if torch.equal(v, b["image"])]
        assert matches, i
        if a["source"].startswith("lfw_face_"):
            assert set(matches) & {0, 4}  # faces are only mirrored, never turned
        changed += not torch.equal(a["image"], b["image"])
        variants.add(matches[0])
    assert changed > 30 and len(variants) >= 6
    assert torch.equal(
        turned[7]["image"], P.PhotosDataset("train", size=60, seed=5, augment=True)[7]["image"]
    )
