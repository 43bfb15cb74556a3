import collections

import pytest
import torch

from mmtok.data import DATASETS, MixtureDataset, build_dataset
from mmtok.errors import ConfigError

PARTS = [
    {"name": "shapes", "kwargs": {"resolution": 32}, "weight": 3},
    {"name": "digits", "kwargs": {"resolution": 32}, "weight": 1},
    {"name": "photos", "kwargs": {"resolution": 32, "size": 50}, "weight": 1, "source": "real"},
]


def test_registered_and_common_keys():
    assert DATASETS["mixture"] is MixtureDataset
    ds = build_dataset("mixture", "train", parts=PARTS, size=40)
    assert len(ds) == 40
    item = ds[0]
    # photos' own "source" (the photo name) is replaced by the part label
    assert set(item) == {"image", "caption", "source"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert {ds[i]["source"] for i in range(40)} <= {"shapes", "digits", "real"}
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 32, 32) and len(batch["source"]) == 8


def test_deterministic_by_index_in_any_order():
    a = build_dataset("mixture", "train", parts=PARTS, size=30, seed=3)
    b = build_dataset("mixture", "train", parts=PARTS, size=30, seed=3)
    reference = {i: b[i] for i in range(30)}  # in order
    for i in [7, 2, 29, 0, 7]:  # out of order, repeated
        x = a[i]
        assert x["source"] == reference[i]["source"] and torch.equal(x["image"], reference[i]["image"])
    c = build_dataset("mixture", "train", parts=PARTS, size=30, seed=4)
    assert [a.locate(i) for i in range(30)] != [c.locate(i) for i in range(30)]


def test_weights_set_the_part_frequencies():
    ds = MixtureDataset(parts=PARTS, size=5000)
    counts = collections.Counter(ds.locate(i)[0] for i in range(len(ds)))
    assert counts[0] / 5000 == pytest.approx(0.6, abs=0.03)
    assert counts[1] / 5000 == pytest.approx(0.2, abs=0.03)
    assert counts[2] / 5000 == pytest.approx(0.2, abs=0.03)
    assert all(0 <= ds.locate(i)[1] < len(ds.datasets[ds.locate(i)[0]]) for i in range(200))


def test_split_default_and_per_part_split():
    ds = MixtureDataset("test", parts=[{"name": "shapes", "split": "heldout"}, {"name": "digits"}], size=4)
    assert ds.datasets[0].split == "heldout" and ds.datasets[1].split == "test"


@pytest.mark.parametrize(
    "parts, size",
    [
        ([], 10),
        ([{"name": "nope"}], 10),
        ([{"name": "shapes", "weight": 0}], 10),
        ([{"name": "shapes", "colour": 1}], 10),
        (
            [
                {"name": "shapes", "kwargs": {"resolution": 32}},
                {"name": "digits", "kwargs": {"resolution": 64}},
            ],
            10,
        ),
        ([{"name": "shapes"}], 0),
        ([{"name": "shapes", "hue": 1.5}], 10),
        ([{"name": "shapes", "hue": True}], 10),
    ],
)
def test_bad_configs_raise_config_error(parts, size):
    with pytest.raises(ConfigError):
        build_dataset("mixture", "train", parts=parts, size=size)
    with pytest.raises(IndexError):
        MixtureDataset(parts=[{"name": "digits"}], size=3)[3]


def test_hue_part_rotates_colours_deterministically_and_drops_captions():
    part = {"name": "shapes", "kwargs": {"resolution": 32}}
    plain = MixtureDataset(parts=[part], size=40, seed=2)
    hued = MixtureDataset(parts=[{**part, "hue": 0.5}], size=40, seed=2)
    again = MixtureDataset(parts=[{**part, "hue": 0.5}], size=40, seed=2)
    # The hue draw comes after the image draw: the same items, some of them recoloured.
    assert [plain.locate(i) for i in range(40)] == [hued.locate(i) for i in range(40)]
    assert "caption" in plain[0] and set(hued[0]) == {"image", "source"}
    changed = 0
    for i in range(40):
        a, b = plain[i]["image"], hued[i]["image"]
        assert torch.equal(b, again[i]["image"])
        assert b.shape == a.shape and b.min() >= -1 and b.max() <= 1
        if not torch.allclose(a, b, atol=2e-2):
            changed += 1
            # Hue rotation keeps each pixel's max and min channel (value and chroma) and moves only
            # the coloured pixels: the neutral background stays put.
            assert torch.allclose(a.max(0).values, b.max(0).values, atol=2e-2)
            neutral = (a.max(0).values - a.min(0).values) < 1e-3
            assert torch.allclose(a[:, neutral], b[:, neutral], atol=2e-2)
    assert 8 <= changed <= 32  # about half of 40, each rotated by a random amount
