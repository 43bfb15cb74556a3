"""Faults survived: corrupt or hostile checkpoints, an unwritable output folder and a full disk give one
line and corrupt nothing. (kill -9 of a training run and an exact resume: tests/train/test_train_trainer.py
::test_resume_after_sigkill_is_bit_identical; kill -9 of a batch: test_batch.py.)"""

import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from badfiles import good_png
from reliability_helpers import REPO, child_env, mmtok_command, one_line_error

from mmtok.train.checkpoint import list_checkpoints, load_checkpoint

TINY = yaml.safe_load((REPO / "tests" / "train" / "tiny_digits.yaml").read_text())


def tiny_config(tmp_path: Path, **optim) -> Path:
    config = dict(TINY, optim={**TINY["optim"], "warmup_steps": 1, **optim}, eval=None)
    config["train"] = {**TINY["train"], "ckpt_every": 2, "log_every": 2}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated", "malicious_pickle", "foreign"])
def test_a_corrupt_checkpoint_is_one_line_naming_it(tmp_path, cli, weights_dir, content):
    config = tiny_config(tmp_path, max_steps=4)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    bad = checkpoints / "step_00000002.pt"
    marker = tmp_path / "pwned"
    if content == "garbage":
        bad.write_bytes(b"\x00\x01 not a checkpoint " * 100)
    elif content == "empty":
        bad.write_bytes(b"")
    elif content == "truncated":
        torch.save({"format": "mmtok-train-checkpoint", "model": {"w": torch.zeros(1000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:-500])
    elif content == "malicious_pickle":
        bad.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
    code, _, err = cli(
        "train", config, "--out", tmp_path / "run", "--resume", "latest", "--export", tmp_path / "x"
    )
    line = one_line_error(code, err)
    assert str(bad) in line and (
        "corrupt or unreadable" in line or "not an mmtok training checkpoint" in line
    )
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_unwritable_outputs_are_one_line(tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    image = good_png(tmp_path, "scene.png")
    config = tiny_config(tmp_path, max_steps=2)
    for argv, expected in [
        (["train", config, "--out", blocker / "run", "--export", tmp_path / "x"], "cannot write"),
        (["tokenize", image, "--model", "kl-f8-64", "--out", blocker], "cannot write"),
        (["generate", "--model", "xar-digits64", "--class", "1", "-n", "1", "--steps", "1", "--out", blocker],
         "cannot create the output folder"),
        (["batch", image.parent, "--task", "tokenize", "--model", "kl-f8-64", "--out", blocker],
         "cannot write to the output folder"),
    ]:  # fmt: skip
        line = one_line_error(*cli(*argv)[::2])
        assert expected in line, line
    assert blocker.read_text() == "in the way"


def test_a_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, cli, weights_dir):
    """Run to step 4; resume to step 8 with a file-size limit below one checkpoint: the step-6 save fails
    with one line, the step-4 checkpoint is untouched and no temp file is left."""
    run, export = tmp_path / "run", tmp_path / "export"
    assert cli("train", tiny_config(tmp_path, max_steps=4), "--out", run, "--export", export)[0] == 0
    last = run / "checkpoints" / "step_00000004.pt"
    data = last.read_bytes()

    def limit():  # a write beyond half a checkpoint fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, len(data) // 2))

    config = tiny_config(tmp_path, max_steps=8)
    argv = mmtok_command("train", config, "--out", run, "--export", export, "--resume", "latest")
    proc = subprocess.run(argv, env=child_env(MMTOK_WEIGHTS=str(weights_dir)), capture_output=True, text=True,
                          timeout=240, preexec_fn=limit)  # fmt: skip
    shown = [x.split("\r")[-1] for x in proc.stderr.split("\n")]  # as a terminal shows it
    lines = [x for x in shown if x.startswith("mmtok: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "cannot write checkpoint" in lines[0] and "step_00000006.pt" in lines[0]
    assert last.read_bytes() == data and load_checkpoint(last)["step"] == 4
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    assert not list((run / "checkpoints").glob(".*"))  # no half-written temp file
