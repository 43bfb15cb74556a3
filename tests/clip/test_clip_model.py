"""LightCLIP model: open_clip config registry, towers and tokens, training objectives, lean export."""

import open_clip
import pytest
import safetensors.torch
import torch

from mmtok import hub
from mmtok.clip.model import LightCLIP, create_open_clip, list_archs
from mmtok.errors import ConfigError, InputError

CAPTIONS = ["a small red circle at the top", "a big blue square in the centre", "the digit 7", "a green star"]


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, "caption": CAPTIONS[:n]}


def test_configs_are_registered_with_open_clip():
    assert {"lightclip-vit-p8-64", "lightclip-cnn-64", "lightclip-tiny"} <= set(list_archs())
    assert set(list_archs()) <= set(open_clip.list_models())


def test_open_clip_create_model_builds_the_same_network():
    torch.manual_seed(0)
    ours = LightCLIP(arch="lightclip-tiny").eval()
    theirs = create_open_clip("lightclip-tiny").eval()
    mine = ours.clip.state_dict()
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in mine.items()}
    theirs.load_state_dict(mine, strict=True)
    batch = _batch()
    text = ours.tokenize(batch["caption"])
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(batch["image"], normalize=False)["embeds"], theirs.encode_image(batch["image"])
        )
        # Our text walk (pooling at the last real token) equals open_clip's argmax-at-EOT encode_text.
        torch.testing.assert_close(
            ours.encode_text(batch["caption"], normalize=False)["embeds"], theirs.encode_text(text.input_ids)
        )


@pytest.mark.parametrize(
    ("arch", "tokens"), [("lightclip-vit-p8-64", 64), ("lightclip-cnn-64", 16), ("lightclip-tiny", 16)]
)
def test_image_tower_exposes_patch_tokens(arch, tokens):
    model = LightCLIP(arch=arch).eval()
    with torch.no_grad():
        out = model.encode_image(_batch(2)["image"])
    assert out["embeds"].shape == (2, 128 if arch != "lightclip-tiny" else 32)
    assert out["tokens"].shape[:2] == (2, tokens)
    torch.testing.assert_close(out["embeds"].norm(dim=-1), torch.ones(2))


def test_text_tokens_and_mask_token():
    model = LightCLIP(arch="lightclip-tiny")
    assert model.tokenizer.mask_token_id == 49408 and model.clip.text.vocab_size == 49409
    out = model.encode_text(["a red circle", "a blue square on a striped background"])
    assert out["word_mask"].sum(1).tolist() == [3, 7]  # words only: no SOT/EOT/padding
    assert out["tokens"].shape[:2] == out["word_mask"].shape


def test_every_objective_trains_and_logs():
    torch.manual_seed(0)
    model = LightCLIP(
        arch="lightclip-tiny", contrastive="soft", soft_ramp_steps=4, token_weight=0.5, mlm_weight=0.5
    )
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _batch()
    losses = []
    for _ in range(12):
        loss, logs = model.training_step(batch)
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert {"itc", "token", "mlm", "mlm_acc", "soft_alpha", "logit_scale"} <= set(logs)
    assert logs["soft_alpha"] == pytest.approx(0.2)  # ramp of 4 steps is over by step 11
    assert int(model.train_steps) == 12
    assert losses[-1] < losses[0] * 0.8


def test_mlm_fusion_reaches_the_image_tower():
    # The masked text sees the image only through the fusion blocks: gradients flow into the image tower.
    model = LightCLIP(arch="lightclip-tiny", mlm_weight=1.0)
    assert sorted(model.fusion) == ["1"]  # 2 text layers, a fusion block after every 2nd
    text = model.tokenize(CAPTIONS)
    image = model.image_features(_batch()["image"])
    fused = model.text_features(text.input_ids, text.attention_mask, image_tokens=image["trunk_tokens"])
    grads = torch.autograd.grad(
        fused["hidden"].sum(), list(model.clip.visual.parameters()), allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    plain = model.text_features(text.input_ids, text.attention_mask)  # contrastive branch: no fusion
    assert not torch.allclose(plain["hidden"], fused["hidden"])


def test_siglip_baseline_has_a_bias_and_trains():
    model = LightCLIP(arch="lightclip-tiny", contrastive="siglip")
    assert model.logit_bias is not None and model.logit_bias.item() == pytest.approx(-10)
    loss, _ = model.training_step(_batch())
    assert torch.isfinite(loss)
    assert model(_batch()["image"], CAPTIONS).shape == (4, 4)


def test_export_drops_fusion_and_keeps_outputs(weights_dir):
    torch.manual_seed(0)
    model = LightCLIP(arch="lightclip-tiny", contrastive="soft", token_weight=0.5, mlm_weight=0.5).eval()
    assert any(k.startswith("fusion.") for k in model.state_dict())
    hub.save(model, weights_dir / "tiny-clip")
    keys = safetensors.torch.load_file(str(weights_dir / "tiny-clip" / "model.safetensors")).keys()
    assert not any(k.startswith(("fusion.", "mlm_head.")) for k in keys)
    loaded = hub.load("tiny-clip")
    assert isinstance(loaded, LightCLIP) and not loaded.train_heads and not hasattr(loaded, "fusion")
    assert loaded.num_parameters() < model.num_parameters()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["image"], CAPTIONS), model(batch["image"], CAPTIONS))
    with pytest.raises(ConfigError, match="train_heads"):
        loaded.training_step(batch)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown LightCLIP arch"):
        LightCLIP(arch="nope")
    with pytest.raises(ConfigError, match="contrastive"):
        LightCLIP(arch="lightclip-tiny", contrastive="triplet")
    model = LightCLIP(arch="lightclip-tiny")
    with pytest.raises(InputError, match="Bx3xHxW"):
        model.encode_image(torch.zeros(3, 64, 64))
    # Other sizes are resized to the tower's 64x64.
    assert model.encode_image(torch.zeros(1, 3, 100, 80))["embeds"].shape == (1, 32)


def test_shipped_configs_differ_only_in_the_objective():
    from pathlib import Path

    from mmtok.train.config import load_config

    repo = Path(__file__).resolve().parents[2]
    paths = {  # siglip-shapes64 is a baseline that made no shipped model: an experiment config
        "clip": repo / "configs" / "clip-shapes64.yaml",
        "siglip": repo / "experiments" / "configs" / "siglip-shapes64.yaml",
        "lightclip": repo / "configs" / "lightclip-shapes64.yaml",
    }
    cfgs = {name: load_config(path).to_dict() for name, path in paths.items()}
    for cfg in cfgs.values():  # same data, steps, seeds and schedule for the baselines and LightCLIP
        assert {k: v for k, v in cfg.items() if k not in ("name", "model")} == {
            k: v for k, v in cfgs["lightclip"].items() if k not in ("name", "model")
        }
        assert cfg["data"]["kwargs"]["parts"][0]["name"] == "shapes" and cfg["data"]["split"] == "train"
    assert cfgs["clip"]["model"]["kwargs"] == {"arch": "lightclip-vit-p8-64", "contrastive": "clip"}
    light = cfgs["lightclip"]["model"]["kwargs"]
    assert light["contrastive"] == "soft" and light["token_weight"] > 0 and light["mlm_weight"] > 0


def test_evaluate_reports_retrieval_and_the_zero_shot_curve():
    from mmtok.data import build_dataset

    torch.manual_seed(0)
    model = LightCLIP(arch="lightclip-tiny")
    out = model.evaluate(build_dataset("shapes", "heldout", size=32, resolution=64))
    assert out["n"] == 32 and 0 <= out["image_to_text_R@1"] <= 1
    assert {"zeroshot_heldout/object_acc", "zeroshot_heldout/shape_acc"} <= set(out)
    assert 0 <= out["zeroshot_heldout/object_acc"] <= out["zeroshot_heldout/shape_acc"] <= 1
    assert model.training  # restored


def test_hard_negatives_train_the_true_caption_above_its_swap():
    from torch.utils.data import default_collate

    from mmtok.data import build_dataset
    from mmtok.errors import ConfigError

    torch.manual_seed(0)
    data = build_dataset("shapes", "train", size=16, resolution=64, min_objects=2, negatives=True)
    batch = default_collate([data[i] for i in range(16)])
    model = LightCLIP(arch="lightclip-tiny", negative_weight=1.0)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    accs = []
    for _ in range(30):
        loss, logs = model.training_step(batch)
        loss.backward()
        optim.step()
        optim.zero_grad()
        accs.append(logs["neg_acc"])
    assert {"neg", "neg_acc"} <= set(logs)
    assert sum(accs[-5:]) / 5 > 0.9  # the batch's own captions now beat their swapped versions
    with pytest.raises(ConfigError, match="negatives: true"):
        model.training_step({k: v for k, v in batch.items() if k != "negative"})


def test_binding_test_counts_colour_swaps():
    from mmtok.clip.zeroshot import binding_test

    torch.manual_seed(0)
    out = binding_test(LightCLIP(arch="lightclip-tiny").eval(), n=16, seed=3)
    assert out["n"] == 16 and 0 <= out["colour_swap_acc"] <= 1
