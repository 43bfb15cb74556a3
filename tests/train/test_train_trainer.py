"""End to end: a tiny real DigitsJudge is trained, logged, checkpointed, exported, and resumed exactly."""

import json
import os
import signal
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

import mmtok
from mmtok.errors import CheckpointError
from mmtok.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from mmtok.train.config import load_config
from mmtok.train.trainer import train_from_config


def _records(run, kind="train"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_writes_run_folder_and_export(write_config, tmp_path, weights_dir):
    config = write_config(optim={"max_steps": 60}, eval={"every": 25})
    run, export = tmp_path / "run", tmp_path / "export"
    # `--resume latest` on a fresh run folder simply starts the run.
    summary = train_from_config(config, out=run, export=export, resume="latest")

    assert summary["name"] == "tiny-digits" and summary["steps"] == 60 and summary["resumed_from"] is None
    assert summary["run_dir"] == str(run) and summary["export"] == str(export)
    assert json.loads(json.dumps(summary)) == summary  # JSON-able for `mmtok train --json`
    # It learned: held-out accuracy well above chance (10%), loss down.
    assert summary["eval"]["accuracy"] > 0.3 and summary["eval"]["n"] == 355
    train = _records(run)
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert {"step", "loss", "lr", "grad_norm", "seconds", "accuracy"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"] and summary["final_loss"] == train[-1]["loss"]
    assert train[0]["lr"] == pytest.approx(3e-3) and train[-1]["lr"] < 1e-5  # end of the cosine
    evals = _records(run, "eval")
    assert [r["step"] for r in evals] == [25, 50, 60]  # every 25 steps, and at the end
    assert evals[-1]["accuracy"] == summary["eval"]["accuracy"] > evals[0]["accuracy"]

    # Run folder: resolved config, loss curve, the last two checkpoints.
    assert load_config(run / "config.yaml") == load_config(config)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "step_00000050.pt",
        "step_00000060.pt",
    ]

    # Export: the EMA weights in bf16, loadable by name-less path, with README and metrics.
    model = mmtok.load(export)
    assert type(model).__name__ == "DigitsJudge" and model.resolution == 32
    final = load_checkpoint(run / "checkpoints" / "step_00000060.pt")
    ema = {k.removeprefix("module."): v for k, v in final["ema"].items()}
    for key, value in load_file(export / "model.safetensors").items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, ema[key].to(torch.bfloat16)), key
    assert json.loads((export / "metrics.json").read_text())["accuracy"] == summary["eval"]["accuracy"]
    readme = (export / "README.md").read_text()
    assert f"mmtok train {config} --out {run} --export {export}" in readme
    assert "| accuracy | " in readme and "class: DigitsJudge" in readme and "60 optimizer steps" in readme
    assert "CPU" in readme and "(EMA weights)" in readme


def test_no_ema_fp32_export_and_grad_accum(write_config, tmp_path):
    config = write_config(
        ema={"enabled": False},
        optim={"max_steps": 6, "grad_accum": 2},
        data={"batch_size": 8},
        train={"mixed_precision": "no", "log_every": 3, "ckpt_every": 0},
        export={"dtype": "fp32"},
        eval=None,
    )
    summary = train_from_config(config, out=tmp_path / "run", export=tmp_path / "export")
    assert summary["eval"] == {} and summary["steps"] == 6
    (only,) = (tmp_path / "run" / "checkpoints").iterdir()  # ckpt_every 0: just the final one
    final = load_checkpoint(only)
    assert final["step"] == 6 and final["ema"] is None
    exported = load_file(tmp_path / "export" / "model.safetensors")
    assert all(torch.equal(v, final["model"][k]) for k, v in exported.items())  # the raw fp32 weights
    assert "No held-out evaluation" in (tmp_path / "export" / "README.md").read_text()


def test_resume_refuses_corrupt_or_foreign_checkpoints(write_config, tmp_path):
    config, run = write_config(), tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    bad = checkpoint_path(ckpts, 10)
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=str(bad)):
        train_from_config(config, out=run, export=tmp_path / "export", resume="latest")
    # A checkpoint of another model is refused before anything is loaded.
    other = dict(yaml.safe_load(config.read_text()), model={"class": "DigitsJudge", "kwargs": {}})
    state = {"step": 5, "model": {}, "optimizer": {}, "scheduler": {}, "config": other, "rng": {}}
    path = save_checkpoint(checkpoint_path(tmp_path, 5), state)
    with pytest.raises(CheckpointError, match="it was trained with model"):
        train_from_config(config, out=run, export=tmp_path / "export", resume=path)
    assert not (tmp_path / "export").exists()


def test_resume_checks_the_model_not_where_its_first_weights_came_from(write_config, tmp_path):
    from mmtok.train.trainer import _check_resumable

    config = load_config(write_config())
    saved = config.to_dict()["model"]
    # Written before model.init_strict and model.init_parts existed: they had their defaults.
    del saved["init_strict"], saved["init_parts"]
    state = {"_path": "old.pt", "step": 1, "config": {"model": saved}}
    _check_resumable(state, config)
    # The starting weights may have moved since step 0: the checkpoint replaces them anyway.
    config.model.init_strict = False
    config.model.init_parts = {"text": "moved/enc.safetensors"}
    _check_resumable(state, config)
    config.model.kwargs = {**config.model.kwargs, "extra": 1}  # a different model is still refused
    with pytest.raises(CheckpointError, match="it was trained with model"):
        _check_resumable(state, config)


def _wait_for_checkpoint(proc, folder, step, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        latest = latest_checkpoint(folder)
        if latest is not None and int(latest.stem.split("_")[1]) >= step:
            return latest
        time.sleep(0.005)
    return None


# ~13 s on an idle 2-core machine, ~24 s when it is shared: three `mmtok train` processes.
@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(write_config, tmp_path, mmtok_cli):
    """Train 60 steps straight; in parallel, SIGKILL the same run once a checkpoint at >= 30 exists
    and `--resume latest` it. Final weights, EMA, optimizer state and logged losses must match."""
    steps = 60
    config = write_config(
        optim={"max_steps": steps},
        data={"batch_size": 64},
        train={"ckpt_every": 2, "keep_last": 3, "log_every": 2},
    )
    straight = mmtok_cli("train", config, "--out", tmp_path / "a", "--export", tmp_path / "a-export")
    killed = mmtok_cli("train", config, "--out", tmp_path / "b", "--export", tmp_path / "b-export")
    reached = _wait_for_checkpoint(killed, tmp_path / "b" / "checkpoints", steps // 2)
    killed.send_signal(signal.SIGKILL)
    _, err = killed.communicate(timeout=60)
    assert reached is not None and killed.returncode == -signal.SIGKILL, f"finished before the kill: {err}"
    stopped_at = load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints"))["step"]
    assert steps // 2 <= stopped_at < steps

    resumed = mmtok_cli(
        "train", config, "--out", tmp_path / "b", "--export", tmp_path / "b-export", "--resume", "latest"
    )
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed from {tmp_path / 'b' / 'checkpoints'}" in err and f"at step {stopped_at}" in err
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    a = load_checkpoint(tmp_path / "a" / "checkpoints" / f"step_{steps:08d}.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / f"step_{steps:08d}.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]
    for key in a["rng"]:  # NaN encodes "no cached Gaussian"
        assert torch.equal(a["rng"][key].nan_to_num(-1.0), b["rng"][key].nan_to_num(-1.0)), key
    # The metrics log of the resumed run is the straight run's, line for line (timings aside).
    strip = lambda run: [{k: v for k, v in r.items() if k != "seconds"} for r in _records(run)]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    assert len(strip(tmp_path / "b")) == steps // 2
    exported = [load_file(tmp_path / d / "model.safetensors") for d in ("a-export", "b-export")]
    assert all(torch.equal(v, exported[1][k]) for k, v in exported[0].items())
    assert "resumed at step" in (tmp_path / "b-export" / "README.md").read_text()
    assert not [p for p in os.listdir(tmp_path / "b" / "checkpoints") if p.endswith(".tmp")]


def test_model_init_starts_a_second_stage_from_exported_weights(write_config, tmp_path, weights_dir):
    first = write_config("s1", optim={"max_steps": 10}, eval={"every": 0})
    train_from_config(first, out=tmp_path / "r1", export=tmp_path / "s1")
    stage1 = mmtok.load(tmp_path / "s1")
    # Stage 2 at a negligible lr: its bf16 export equals stage 1's weights (init loaded, EMA from it).
    second = write_config("s2", model={"init": str(tmp_path / "s1")}, optim={"max_steps": 2, "lr": 1.0e-12})
    train_from_config(second, out=tmp_path / "r2", export=tmp_path / "s2")
    stage2 = mmtok.load(tmp_path / "s2")
    for (key, a), b in zip(stage1.state_dict().items(), stage2.state_dict().values(), strict=True):
        assert torch.equal(a, b), key

    from mmtok.errors import ConfigError

    wrong = write_config("s3", model={"init": str(tmp_path / "s1"), "kwargs": {"widths": [8, 16]}})
    with pytest.raises(ConfigError, match="model.init"):
        train_from_config(wrong, out=tmp_path / "r3", export=tmp_path / "s3")


def test_model_init_parts_loads_one_submodule_and_refuses_misfits(write_config, tmp_path, weights_dir):
    from safetensors.torch import save_file

    from mmtok.errors import ConfigError

    first = write_config("p1", optim={"max_steps": 4}, eval={"every": 0})
    train_from_config(first, out=tmp_path / "r1", export=tmp_path / "p1")
    head = {k: v.float().contiguous() for k, v in mmtok.load(tmp_path / "p1").head.state_dict().items()}
    save_file(head, str(tmp_path / "head.safetensors"))
    # A fresh model with only its head from the file; at lr ~0 the export keeps that head exactly.
    parts = write_config("p2", model={"init_parts": {"head": str(tmp_path / "head.safetensors")}},
                         optim={"max_steps": 2, "lr": 1.0e-12}, eval={"every": 0})  # fmt: skip
    train_from_config(parts, out=tmp_path / "r2", export=tmp_path / "p2")
    model = mmtok.load(tmp_path / "p2")
    for key, value in head.items():
        assert torch.equal(model.head.state_dict()[key], value.to(torch.bfloat16).float()), key
    trained, kept = mmtok.load(tmp_path / "p1").trunk.state_dict(), model.trunk.state_dict()
    assert any(not torch.equal(trained[k], kept[k]) for k in trained)  # the trunk was not loaded

    for bad, match in (
        ({"nothing": str(tmp_path / "head.safetensors")}, "no submodule 'nothing'"),
        ({"trunk": str(tmp_path / "head.safetensors")}, "does not fit"),
        ({"head": str(tmp_path / "missing.safetensors")}, "no safetensors file"),
    ):
        cfg = write_config("p3", model={"init_parts": bad}, optim={"max_steps": 1})
        with pytest.raises(ConfigError, match=match):
            train_from_config(cfg, out=tmp_path / "r3", export=tmp_path / "p3")
