"""The xAR-B ImageNet-256 recipe of docs/scaling.md: its config is valid and sized as documented, and
the same pipeline (imagefolder -> latent cache -> class-conditional xAR) trains end to end in miniature."""

import copy

import numpy as np
import torch
import yaml
from PIL import Image
from reliability_helpers import REPO

from mmtok.train.config import config_from_dict, load_config

RECIPE = REPO / "configs" / "xar-b-imagenet256.yaml"


def test_recipe_config_is_valid_and_sized_as_documented():
    from mmtok.generation.xar import XAR

    cfg = load_config(RECIPE)
    with torch.device("meta"):  # 174M parameters, no memory
        model = XAR(**cfg.model.kwargs)
    assert 170e6 < sum(p.numel() for p in model.parameters()) < 180e6
    assert cfg.data.batch_size * 8 * cfg.optim.grad_accum == 2048  # 8 GPUs, as the comments say
    assert cfg.data.kwargs["source"] == "imagefolder" and cfg.model.kwargs["grid"] * 8 == 256
    assert cfg.train.mixed_precision == "bf16" and cfg.ema.decay == 0.9999


def _fake_imagenet(root, classes=("n01", "n02"), per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (int(rng.integers(64, 100)), int(rng.integers(64, 100)), 3)
                Image.fromarray(rng.integers(0, 255, size=size, dtype=np.uint8)).save(
                    folder / f"{c}_{i}.JPEG", "JPEG"
                )
    return root


def test_recipe_trains_in_miniature(tmp_path, weights_dir):
    from mmtok.data import build_dataset
    from mmtok.train.trainer import train_from_config

    images = _fake_imagenet(tmp_path / "imagenet")
    folder = build_dataset("imagefolder", "val", folder=str(images), resolution=64)
    item = folder[0]
    assert len(folder) == 8 and item["image"].shape == (3, 64, 64) and item["label"] == 0
    assert folder[7]["label"] == 1 and folder[7]["caption"] == "n02"

    recipe = yaml.safe_load(RECIPE.read_text())
    small = copy.deepcopy(recipe)
    tokenizer = str(REPO / "weights" / "kl-f8-64")
    tiny = {
        "latent_channels": 16,
        "grid": 8,
        "entity_size": 4,
        "dim": 32,
        "depth": 1,
        "heads": 2,
        "num_classes": 2,
    }
    small["model"]["kwargs"] |= {"tokenizer": tokenizer, **tiny}
    for section, size in (("data", 8), ("eval", 4)):
        kwargs = small[section]["kwargs"]
        kwargs |= {
            "tokenizer": str(REPO / "weights" / "kl-f8-64"),
            "root": str(tmp_path / "latents"),
            "batch_size": 8,
        }
        kwargs["options"] = {"folder": str(images), "resolution": 64, "size": size}
    small["data"] |= {"batch_size": 4, "num_workers": 0}
    small["optim"] |= {"max_steps": 2, "warmup_steps": 1, "grad_accum": 1}
    small["train"] |= {"ckpt_every": 0, "log_every": 1, "threads": 1, "mixed_precision": "no"}
    small["eval"]["every"] = 0
    config_from_dict(small)  # valid as a whole
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(small))
    summary = train_from_config(path, out=tmp_path / "run", export=tmp_path / "export")
    assert summary["steps"] == 2 and summary["eval"]["n"] == 4
    assert (tmp_path / "export" / "model.safetensors").is_file()
