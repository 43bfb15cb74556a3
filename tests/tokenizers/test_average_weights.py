"""scripts/average_weights.py: a uniform average of decoder-only fine-tunes keeps every code."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import mmtok
from mmtok.tokenizers.image_binary import BinaryTokenizer


def _tiny():
    return BinaryTokenizer(bits=8, block_out_channels=[8, 16, 16], norm_num_groups=4)


def test_averages_decoders_and_refuses_different_encoders(load_script, weights_dir, tmp_path, capsys):
    script = load_script("average_weights")
    torch.manual_seed(0)
    a = _tiny()
    b, c = _tiny(), _tiny()
    b.encoder.load_state_dict(a.encoder.state_dict())  # b: a decoder-only fine-tune of a
    for name, model in (("tok-a", a), ("tok-b", b), ("tok-c", c)):
        mmtok.hub.save(model, weights_dir / name, dtype=torch.bfloat16)
    a, b = mmtok.load("tok-a"), mmtok.load("tok-b")

    # b's EMA as a training checkpoint of a config (CONFIG@CHECKPOINT) is the same ingredient as b.
    from mmtok.train.checkpoint import FORMAT, VERSION

    config = tmp_path / "tiny.yaml"
    kwargs = {"bits": 8, "block_out_channels": [8, 16, 16], "norm_num_groups": 4}
    real = Path("configs/bin-f8-64/bin-f8-64-b32-consist2.yaml")
    data = yaml.safe_load(real.read_text())  # a real config, made tiny
    data["model"] = {"class": "BinaryTokenizer", "kwargs": kwargs}
    config.write_text(yaml.safe_dump(data))
    ema = {f"module.{k}": v for k, v in b.state_dict().items()}
    state = {"format": FORMAT, "version": VERSION, "step": 3, "model": a.state_dict(), "optimizer": {},
             "scheduler": {}, "config": {}, "rng": {}, "ema": ema}  # fmt: skip
    torch.save(state, tmp_path / "step_00000003.pt")

    out = weights_dir / "tok-ab"
    for second in ("tok-b", f"{config}@{tmp_path / 'step_00000003.pt'}"):
        assert script.main([str(out), "tok-a", second, "--require-equal", "encoder."]) == 0
        assert json.loads(capsys.readouterr().out)["ingredients"] == ["tok-a", second]
        soup = mmtok.load("tok-ab")
        for key, value in soup.state_dict().items():
            mean = (a.state_dict()[key] + b.state_dict()[key]) / 2
            torch.testing.assert_close(value, mean, atol=0.02 * mean.abs().max().item() + 1e-6, rtol=0.01)
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        with torch.no_grad():
            assert torch.equal(soup.encode(x), a.encode(x))  # the same encoder: the same codes
            assert not torch.allclose(soup.decode(a.encode(x)), a.decode(a.encode(x)))
        assert "tok-a" in (out / "README.md").read_text()

    # c has its own encoder: its average would change the codes.
    with pytest.raises(SystemExit) as err:
        script.main([str(weights_dir / "tok-ac"), "tok-a", "tok-c", "--require-equal", "encoder."])
    assert err.value.code == 2 and "encoder." in capsys.readouterr().err
    assert not (weights_dir / "tok-ac").exists()
    with pytest.raises(SystemExit) as err:
        script.main([str(weights_dir / "tok-x"), "tok-a"])
    assert err.value.code == 2
