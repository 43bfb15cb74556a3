"""scripts/tokenizer_checkpoint.py: a training checkpoint's EMA read without an export."""

import json
from pathlib import Path

import torch
import yaml


def test_reads_init_weights_and_a_checkpoints_ema(load_script, tmp_path, capsys):
    script = load_script("tokenizer_checkpoint")
    # The head config, started from the shipped kl-f8-64 (the stage configs start from earlier stages,
    # which only their own commands export).
    data = yaml.safe_load(Path("experiments/configs/kl-f8-64-ref.yaml").read_text())
    data["model"]["init"] = "kl-f8-64"
    config = tmp_path / "head.yaml"
    config.write_text(yaml.safe_dump(data))
    assert script.main([str(config), "none", "--photos", "16", "--judge", "16"]) == 0
    base = json.loads(capsys.readouterr().out)
    # Step 0 decodes as the shipped kl-f8-64.
    assert base["step"] == 0 and 20 < base["photos_psnr"] < 40 and base["judge_scenes"] >= 0.9

    from mmtok.train.checkpoint import FORMAT, VERSION
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    model = _build_model(load_config(config))
    with torch.no_grad():  # an EMA copy whose head paints every pixel black
        model.vae.decoder.conv_out.refine[-1].bias.fill_(-10.0)
    ema = {f"module.{k}": v for k, v in model.state_dict().items()}
    live = {k: v.clone() for k, v in model.state_dict().items()}
    live["vae.decoder.conv_out.refine.4.bias"].fill_(10.0)  # the live weights paint every pixel white
    state = {"format": FORMAT, "version": VERSION, "step": 7, "model": live, "optimizer": {}, "scheduler": {},
             "config": {}, "rng": {}, "ema": ema}  # fmt: skip
    torch.save(state, tmp_path / "step_00000007.pt")
    assert script.main([str(config), str(tmp_path / "step_00000007.pt"), "--photos", "16",
                        "--judge", "0"]) == 0  # fmt: skip
    dark = json.loads(capsys.readouterr().out)
    assert dark["step"] == 7 and "judge_scenes" not in dark
    assert dark["photos_psnr"] < base["photos_psnr"] - 5
    # --weights model reads the live weights instead: also far off, and not the EMA's reading.
    assert script.main([str(config), str(tmp_path / "step_00000007.pt"), "--photos", "16", "--judge", "0",
                        "--weights", "model"]) == 0  # fmt: skip
    white = json.loads(capsys.readouterr().out)
    assert white["weights"] == "model" and dark["weights"] == "ema"
    assert white["photos_psnr"] < base["photos_psnr"] - 5
    assert abs(white["photos_psnr"] - dark["photos_psnr"]) > 0.5
