"""Grounding training data (phantoms + WEAK labels, cached) and a tiny `mmtok train` run."""

import json
import re

import numpy as np
import pytest
import torch
import yaml

import mmtok.grounding.model  # noqa: F401  (registers the grounding classes)
from mmtok import hub
from mmtok.data import build_dataset
from mmtok.errors import InputError
from mmtok.grounding.dataset import GroundingPhantomDataset

SMALL = dict(n_cases=2, shape=(32, 32, 48), spacing=8.0, patch=(16, 16, 16))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("grounding-cache"))


def test_items_are_weak_labels_of_the_named_finding_only(cache):
    ds = build_dataset("grounding-phantom", "train", cache=cache, augment=False, **SMALL)
    assert len(ds.queries) >= 2
    meta = json.loads((ds.root / "case_0000.json").read_text())
    arrays = ds.load_case(0)
    assert set(np.unique(arrays["weak"])) == {0} | {q["weak"] for q in meta["queries"]}
    for index in range(12):
        item = ds[index]
        case_i, value, text = ds.queries[index % len(ds.queries)]
        full = ds.load_case(case_i)
        s = item["start"]
        box = tuple(slice(a, a + p) for a, p in zip(s, ds.patch, strict=True))
        # No flips or rotations: the patch is the cached volume at `start`, the label the named mask.
        np.testing.assert_array_equal(
            item["image"].numpy(), full["image"][(slice(None), *box)].astype(np.float32)
        )
        np.testing.assert_array_equal(item["label"][0].numpy(), (full["weak"][box] == value).astype(np.uint8))
        assert item["text"] == text and not re.search(r"SUV\s*max\D{0,8}\d|(slice|image)\s*\d", text, re.I)
    again = GroundingPhantomDataset(cache=cache, augment=False, **SMALL)  # from the cache, same items
    torch.testing.assert_close(again[5]["image"], ds[5]["image"])


def test_augmentation_is_intensity_only_and_deterministic(cache):
    ds = GroundingPhantomDataset(cache=cache, **SMALL)
    names = [type(t).__name__ for t in ds.augment.transforms]
    assert names and not any(("Flip" in n) or ("Rot" in n) or ("Affine" in n) for n in names)
    a, b = ds[3], ds[3]
    torch.testing.assert_close(a["image"], b["image"])
    plain = GroundingPhantomDataset(cache=cache, augment=False, **SMALL)[3]
    torch.testing.assert_close(a["label"], plain["label"])  # geometry untouched


def test_patches_visit_the_target_other_lesions_and_background(cache):
    ds = GroundingPhantomDataset(cache=cache, augment=False, p_target=1.0, p_other=0.0, **SMALL)
    assert all(ds[i]["label"].any() for i in range(8))  # centred on the named lesion
    vol = GroundingPhantomDataset(cache=cache, mode="volume", **SMALL)[0]
    assert vol["image"].shape == (2, 32, 32, 48)


def test_bad_dataset_options():
    with pytest.raises(InputError):
        GroundingPhantomDataset(split="test")
    with pytest.raises(InputError):
        GroundingPhantomDataset(labels="gold")


def test_tiny_training_run_exports_a_loadable_model(cache, tmp_path):
    from mmtok.train import train_from_config

    cfg = {
        "name": "contextual3d-tiny",
        "model": {
            "class": "ContextualNet3D",
            "kwargs": {
                "filters": [8, 16, 24],
                "strides": [1, 2, 2],
                "text_levels": [0],
                "patch": [16, 16, 16],
                "spacing_mm": 8.0,
            },
        },  # fmt: skip
        "data": {
            "name": "grounding-phantom",
            "split": "train",
            "batch_size": 2,
            "kwargs": SMALL | {"cache": cache},
        },
        "optim": {"lr": 1e-3, "max_steps": 3, "warmup_steps": 0},
        "train": {"mixed_precision": "bf16", "threads": 1, "ckpt_every": 0, "log_every": 1},
        "ema": {"enabled": False},
        "export": {"dtype": "bf16"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = train_from_config(str(path), out=str(tmp_path / "run"), export=str(tmp_path / "w"))
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    model = hub.load(tmp_path / "w")
    assert type(model).__name__ == "ContextualNet3D" and model.uses_text
