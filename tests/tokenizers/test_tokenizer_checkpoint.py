"""scripts/tokenizer_checkpoint.py: a training checkpoint's EMA read without an export."""

import json

import torch


def test_reads_init_weights_and_a_checkpoints_ema(load_script, tmp_path, capsys):
    script = load_script("tokenizer_checkpoint")
    assert script.main(["configs/kl-f8-64-ref.yaml", "none", "--photos", "16", "--judge", "16"]) == 0
    base = json.loads(capsys.readouterr().out)
    # Step 0 of the head config decodes exactly as the shipped kl-f8-64 (the head starts at zero).
    assert base["step"] == 0 and 20 < base["photos_psnr"] < 40 and base["judge_scenes"] >= 0.9

    from mmtok.train.checkpoint import FORMAT, VERSION
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    model = _build_model(load_config("configs/kl-f8-64-ref.yaml"))
    with torch.no_grad():  # an EMA copy whose head paints every pixel black
        model.vae.decoder.conv_out.refine[-1].bias.fill_(-10.0)
    ema = {f"module.{k}": v for k, v in model.state_dict().items()}
    state = {"format": FORMAT, "version": VERSION, "step": 7, "model": {}, "optimizer": {}, "scheduler": {},
             "config": {}, "rng": {}, "ema": ema}  # fmt: skip
    torch.save(state, tmp_path / "step_00000007.pt")
    assert script.main(["configs/kl-f8-64-ref.yaml", str(tmp_path / "step_00000007.pt"), "--photos", "16",
                        "--judge", "0"]) == 0  # fmt: skip
    dark = json.loads(capsys.readouterr().out)
    assert dark["step"] == 7 and "judge_scenes" not in dark
    assert dark["photos_psnr"] < base["photos_psnr"] - 5
