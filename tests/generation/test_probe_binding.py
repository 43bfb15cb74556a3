"""scripts/probe_binding.py: the slot scores, and a parse-trained encoder that XAR can load."""

import types

import pytest
import torch


def test_scores_count_slots_scenes_and_caption_kinds(load_script):
    pb = load_script("probe_binding")
    empty = torch.zeros(9, dtype=torch.long)
    truth = {k: torch.stack([empty.clone(), empty.clone()]) for k in pb.HEADS}
    for k, v in (("shape", 1), ("colour", 2), ("size", 1)):
        truth[k][:, 0], truth[k][:, 8] = v, v + 1  # two objects per scene, in slots 0 and 8
    pred = {k: v.clone() for k, v in truth.items()}
    pred["colour"][1, 0], pred["colour"][1, 8] = 3, 2  # scene 1: the two colours swapped
    caps = ["a red circle in the top left and ...", "a red circle above it and ..."]
    s = pb.score(pred, truth, caps)
    assert s["shape"] == 1.0 and s["size"] == 1.0 and s["place"] == 1.0
    assert s["colour"] == 0.5 and s["exact"] == 0.5 and s["colour_all_slots"] == 0.5
    assert s["colour_all_slots_absolute"] == 1.0 and s["colour_all_slots_relative"] == 0.0
    assert s["n_absolute"] == 1 and s["n_relative"] == 1


def test_scratch_probe_trains_and_saves_an_encoder_xar_loads(load_script, tiny_xar, tmp_path):
    pb = load_script("probe_binding")
    from mmtok import hub
    from mmtok.errors import ConfigError
    from mmtok.train.trainer import _load_part

    args = types.SimpleNamespace(model=str(tiny_xar), steps=30, batch=16, lr=3e-3, seed=0,
                                 save_encoder=tmp_path / "enc.safetensors")  # fmt: skip
    train = pb.captions("train", 64, (1, 2))
    tests = {"2obj": pb.captions("test", 16, (2, 2))}
    result = pb.run("scratch", args, train, tests)
    assert result["encoder"] == "scratch" and result["final_loss"] < 5.0
    assert {"shape", "colour", "size", "place", "exact", "colour_all_slots"} <= set(result["2obj"])
    xar = hub.load(tiny_xar)
    before = {k: v.clone() for k, v in xar.text.state_dict().items()}
    _load_part(xar, "text", str(args.save_encoder))  # what model.init_parts does
    assert any(not torch.equal(before[k], v) for k, v in xar.text.state_dict().items())
    with pytest.raises(ConfigError, match="does not fit"):
        _load_part(xar, "blocks.0", str(args.save_encoder))
