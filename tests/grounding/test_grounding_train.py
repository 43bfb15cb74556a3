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
from mmtok.errors import ConfigError, InputError
from mmtok.grounding.dataset import GroundingPhantomDataset
from mmtok.grounding.model import ContextualNet3D

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

    # Fine-tune it with a text gate on one more decoder level and sentence-contrastive pairs: the new
    # gate is missing from the init weights, which only init_strict: false allows.
    cfg2 = dict(cfg, name="contextual3d-tiny-ft")
    cfg2["model"] = dict(
        cfg["model"], init=str(tmp_path / "w"), kwargs=dict(cfg["model"]["kwargs"], text_levels=[0, 1])
    )
    cfg2["data"] = dict(cfg["data"], kwargs=SMALL | {"cache": cache, "contrast": True})
    path.write_text(yaml.safe_dump(cfg2))
    with pytest.raises(ConfigError, match="does not fit"):
        train_from_config(str(path), out=str(tmp_path / "run2"), export=str(tmp_path / "w2"))
    cfg2["model"]["init_strict"] = False
    path.write_text(yaml.safe_dump(cfg2))
    summary = train_from_config(str(path), out=str(tmp_path / "run3"), export=str(tmp_path / "w2"))
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    tuned = hub.load(tmp_path / "w2")
    assert tuned.text_levels == (0, 1)
    # The shared gate started from the first model's weights (then trained); unexpected tensors fail.
    assert not torch.equal(
        tuned.gates["0"].proj[1].weight, ContextualNet3D(**cfg2["model"]["kwargs"]).gates["0"].proj[1].weight
    )


def test_contrast_pairs_share_the_crop_and_name_another_finding(cache):
    ds = GroundingPhantomDataset(cache=cache, augment=False, contrast=True, **SMALL)
    plain = GroundingPhantomDataset(cache=cache, augment=False, **SMALL)
    for index in range(10):
        item = ds[index]
        case_i, value, text = ds.queries[index % len(ds.queries)]
        full = ds.load_case(case_i)
        box = tuple(slice(a, a + p) for a, p in zip(item["start"], ds.patch, strict=True))
        torch.testing.assert_close(item["image"], plain[index]["image"])  # same crop as without pairs
        assert item["text_other"] != text
        others = {t: v for c, v, t in ds.queries if c == case_i and v != value}
        if others:  # another finding of the same case: its own weak mask inside the same crop
            assert item["text_other"] in others
            want = (full["weak"][box] == others[item["text_other"]]).astype(np.uint8)
        else:  # a sentence from another case names nothing here
            want = np.zeros_like(item["label"][0].numpy())
        np.testing.assert_array_equal(item["label_other"][0].numpy(), want)


def test_training_step_doubles_the_batch_under_contrast_pairs():
    model = ContextualNet3D(filters=[8, 16, 24], strides=[1, 2, 2], text_levels=[0], patch=[16, 16, 16])
    seen = {}
    real = model.forward

    def spy(image, tokens, mask):
        seen["batch"], seen["tokens"] = image.shape[0], tokens.shape[0]
        return real(image, tokens, mask)

    model.forward = spy
    batch = {
        "image": torch.rand(2, 2, 16, 16, 16),
        "label": torch.zeros(2, 1, 16, 16, 16, dtype=torch.uint8),
        "text": ["right axillary node", "left inguinal node"],
        "text_other": ["hepatic segment 4 lesion", "right axillary node"],
        "label_other": torch.ones(2, 1, 16, 16, 16, dtype=torch.uint8),
    }
    loss, _ = model.training_step(batch)
    assert seen == {"batch": 4, "tokens": 4} and torch.isfinite(loss)
