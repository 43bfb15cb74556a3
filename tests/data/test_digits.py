"""The digits test bed: fixed stratified split, item format, captions, deterministic augmentation."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmtok.data import build_dataset
from mmtok.data import digits as D
from mmtok.errors import ConfigError


def test_split_is_fixed_disjoint_complete_and_stratified():
    train, test = D.split_indices("train"), D.split_indices("test")
    assert len(train) == 1442 and len(test) == 355
    assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
    assert np.array_equal(train, D.split_indices("train"))  # no randomness at all
    labels = D.load_raw()[1].numpy()
    per_class = np.bincount(labels, minlength=10)
    in_test = np.bincount(labels[test], minlength=10)
    assert np.array_equal(in_test, per_class // 5)
    assert np.all(np.abs(in_test / per_class - 0.2) < 0.01)


def test_items_at_64_and_32():
    for resolution in (64, 32):
        ds = D.DigitsDataset("test", resolution=resolution)
        assert len(ds) == 355
        item = ds[5]
        image = item["image"]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey as RGB
        # Light ink on a dark background, with an empty border.
        assert image[:, 0].max() < -0.9 and image.max() > 0.5
        assert isinstance(item["label"], int) and 0 <= item["label"] <= 9


def test_labels_and_images_match_sklearn():
    ds = D.DigitsDataset("train")
    images, labels = D.load_raw()
    for i in (0, 100, 1440):
        source = int(D.split_indices("train")[i])
        assert ds[i]["label"] == int(labels[source])
        # Downsampled back to the 8x8 grid (inside the 1-pixel border), the image is the original digit.
        small = torch.nn.functional.adaptive_avg_pool2d((ds[i]["image"][:1] + 1) / 2, 10)[0, 1:-1, 1:-1]
        assert (
            torch.corrcoef(torch.stack([small.flatten(), images[source, 0, 1:-1, 1:-1].flatten()]))[0, 1]
            > 0.95
        )


def test_captions_name_the_digit():
    ds = D.DigitsDataset("train")
    captions = set()
    for i in range(60):
        item = ds[i]
        text = item["caption"].replace(",", "")
        assert D.NUMBER_WORDS[item["label"]] in text.split() or str(item["label"]) in text.split(), text
        captions.add(text)
    assert len(captions) >= 30


def test_augmentation_is_small_deterministic_and_varies_by_index():
    plain = D.DigitsDataset("train", size=2884)
    a = D.DigitsDataset("train", augment=True, size=2884, seed=1)
    b = D.DigitsDataset("train", augment=True, size=2884, seed=1)
    assert torch.equal(a[7]["image"], b[7]["image"])
    assert [b[i]["image"] for i in (9, 8, 7)][2].equal(a[7]["image"])
    assert not torch.equal(a[7]["image"], plain[7]["image"])
    # Item i + 1442 is the same digit, with different augmentation.
    assert a[7]["label"] == a[7 + 1442]["label"]
    assert not torch.equal(a[7]["image"], a[7 + 1442]["image"])
    # Small: still strongly correlated with the un-augmented digit.
    x, y = a[7]["image"][0].flatten(), plain[7]["image"][0].flatten()
    assert torch.corrcoef(torch.stack([x, y]))[0, 1] > 0.5
    batch = next(iter(DataLoader(a, batch_size=8)))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["label"].shape == (8,)


def test_bad_options():
    with pytest.raises(ConfigError):
        D.DigitsDataset("heldout")
    with pytest.raises(ConfigError):
        D.DigitsDataset(resolution=28)
    with pytest.raises(ConfigError):
        build_dataset("digits", augmentation=True)
    with pytest.raises(IndexError):
        D.DigitsDataset("test")[355]


def test_digit_negatives_name_another_digit():
    import re

    from mmtok.data.digits import NUMBER_WORDS

    data, plain = (
        build_dataset("digits", "train", size=8, negatives=True),
        build_dataset("digits", "train", size=8),
    )
    for i in range(8):
        item, label = data[i], data[i]["label"]
        named = lambda text: {d for d in range(10) if re.search(rf"\b({NUMBER_WORDS[d]}|{d})\b", text)}  # noqa: E731
        assert named(item["caption"]) == {label}
        assert len(named(item["negative"])) == 1 and label not in named(item["negative"])
        assert plain[i]["caption"] == item["caption"] and torch.equal(plain[i]["image"], item["image"])
