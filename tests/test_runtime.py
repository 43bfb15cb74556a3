"""Precision choice: bf16 autocast only where the hardware runs it natively."""

import pytest
import torch

from mmtok import runtime


@pytest.mark.parametrize(
    ("flags", "fast"),
    [
        ("flags\t\t: fpu sse2 avx2 fma", False),  # AVX2 only: bf16 is emulated
        ("flags\t\t: fpu avx2 avx512f avx512bw", False),  # AVX-512 without the BF16 extension
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile", True),
        ("Features\t: fp asimd bf16 i8mm", True),  # Arm
        ("Features\t: fp asimd", False),
    ],
)
def test_cpu_bf16_detection_reads_the_flags(tmp_path, flags, fast):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert runtime._cpu_has_bf16(str(info)) is fast


def test_missing_cpuinfo_means_no_native_bf16(tmp_path):
    assert runtime._cpu_has_bf16(str(tmp_path / "absent")) is False


def test_env_overrides_and_auto_resolution(monkeypatch):
    monkeypatch.setenv("MMTOK_BF16", "1")
    assert runtime.bf16_is_fast("cpu") and runtime.use_bf16("cpu")
    assert isinstance(runtime.autocast("cpu", None), torch.autocast)
    monkeypatch.setenv("MMTOK_BF16", "0")
    assert not runtime.bf16_is_fast("cpu") and not runtime.use_bf16("cpu", None)
    assert not isinstance(runtime.autocast("cpu", None), torch.autocast)
    # An explicit choice wins over the detection; MPS never gets CPU/CUDA autocast.
    assert runtime.use_bf16("cpu", True) and not runtime.use_bf16("cpu", False)
    assert not runtime.use_bf16("mps", True)
    assert not isinstance(runtime.autocast("cpu", False), torch.autocast)


def test_trainer_falls_back_to_fp32_without_native_bf16(monkeypatch, tmp_path):
    from mmtok.train.config import config_from_dict
    from mmtok.train.trainer import Trainer, _release

    cfg = config_from_dict(
        {
            "name": "tiny-prec",
            "model": {"class": "DigitsJudge", "kwargs": {"widths": [8, 16], "resolution": 32}},
            "data": {"name": "digits", "split": "train", "kwargs": {"resolution": 32}},
            "optim": {"max_steps": 1},
            "train": {"mixed_precision": "bf16", "threads": 1},
        }
    )
    threads = torch.get_num_threads()
    for env, expected in (("0", "no"), ("1", "bf16")):
        monkeypatch.setenv("MMTOK_BF16", env)
        trainer = Trainer(cfg, out=tmp_path / env)
        try:
            assert trainer.mixed_precision == expected
            assert trainer.accelerator.mixed_precision == expected
        finally:
            _release(trainer.accelerator, threads)  # accelerate's state is process-wide


def test_the_card_says_when_bf16_fell_back(monkeypatch, tmp_path):
    import yaml

    from mmtok.train.trainer import train_from_config

    config = yaml.safe_load(open("tests/train/tiny_digits.yaml"))
    config["optim"]["max_steps"] = 2
    config["train"] = {"mixed_precision": "bf16", "threads": 1, "ckpt_every": 0}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MMTOK_BF16", "0")
    summary = train_from_config(path, out=tmp_path / "run", export=tmp_path / "export")
    assert summary["mixed_precision"] == "no"
    card = (tmp_path / "export" / "README.md").read_text()
    assert "mixed precision no (the config asks bf16: this device has no native bf16" in card
