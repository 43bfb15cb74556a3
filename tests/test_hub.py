import json

import pytest
import torch

import mmtok
from mmtok.errors import CheckpointError, MmtokError
from mmtok.eval.judge import ShapesJudge
from mmtok.hub import resolve

TINY = dict(widths=(8, 16), hidden=16, resolution=32)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return ShapesJudge(**TINY)


def test_save_load_round_trip_by_name(weights_dir):
    model = _tiny()
    mmtok.save(model, weights_dir / "tiny-judge", metrics={"acc": 0.5}, readme="# tiny\n")
    loaded = mmtok.load("tiny-judge")
    assert isinstance(loaded, ShapesJudge) and not loaded.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x)["shape"], model.eval()(x)["shape"])
    config = json.loads((weights_dir / "tiny-judge" / "config.json").read_text())
    assert config["_class_name"] == "ShapesJudge" and config["widths"] == [8, 16]
    listed = {m["name"]: m for m in mmtok.list_models()}
    assert listed["tiny-judge"]["task"] == "judge"
    assert listed["tiny-judge"]["metrics"] == {"acc": 0.5}
    assert listed["tiny-judge"]["size_mb"] > 0


def test_bf16_save_halves_size_and_loads_fp32(tmp_path):
    model = _tiny()
    mmtok.save(model, tmp_path / "fp32")
    mmtok.save(model, tmp_path / "bf16", dtype=torch.bfloat16)
    a = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    b = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert b < 0.6 * a
    loaded = mmtok.load(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # The caller's model keeps its precision.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_local_dir_prefix_and_overwrite(tmp_path):
    mmtok.save(_tiny(0), tmp_path / "m")
    mmtok.save(_tiny(1), tmp_path / "m")  # atomic replace of an existing folder
    loaded = mmtok.load(f"local-dir:{tmp_path / 'm'}")
    torch.testing.assert_close(loaded.slot_embed, _tiny(1).slot_embed)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_corrupt_weights_name_the_file(tmp_path):
    mmtok.save(_tiny(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        mmtok.load(tmp_path / "m")


def test_mismatched_config_names_the_file(tmp_path):
    mmtok.save(_tiny(), tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    config = json.loads(cfg_file.read_text())
    config["hidden"] = 32  # weights were saved with hidden=16
    cfg_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        mmtok.load(tmp_path / "m")
    config["no_such_arg"] = 1
    cfg_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        mmtok.load(tmp_path / "m")
    cfg_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        mmtok.load(tmp_path / "m")


def test_unknown_name_and_offline_hub_id(weights_dir):
    with pytest.raises(MmtokError, match="unknown model 'nope'"):
        resolve("nope")
    with pytest.raises(MmtokError, match="HF_HUB_OFFLINE"):
        resolve("someone/some-model")


def test_unknown_class(tmp_path):
    mmtok.save(_tiny(), tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    config = json.loads(cfg_file.read_text())
    config["_class_name"] = "NoSuchModel"
    cfg_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="NoSuchModel"):
        mmtok.load(tmp_path / "m")


def test_record_metrics_updates_card_in_place(tmp_path):
    from mmtok.hub import record_metrics

    mmtok.save(_tiny(), tmp_path / "m", metrics={"a": 0.5}, readme="# m\n\n## Other\n\ntext\n")
    record_metrics(tmp_path / "m", {"b": 0.25, "n": 10}, "mmtok eval x", title="Held-out evaluation")
    record_metrics(tmp_path / "m", {"b": 0.75}, "mmtok eval y", title="Held-out evaluation")
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics == {"a": 0.5, "b": 0.75, "n": 10}
    readme = (tmp_path / "m" / "README.md").read_text()
    assert readme.count("## Held-out evaluation") == 1 and "## Other" in readme
    assert "mmtok eval y" in readme and "0.7500" in readme and "mmtok eval x" not in readme
