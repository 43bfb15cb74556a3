"""Checkpoint files: atomic, weights_only-loadable, pruned, and loud about corruption."""

import random

import numpy as np
import pytest
import torch

from mmtok.errors import CheckpointError
from mmtok.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": step, "lr_lambdas": [None]},
        "ema": None,
        "config": {"name": "x", "optim": {"betas": [0.9, 0.95]}},
        "rng": {k: v.unsqueeze(0) for k, v in rng_state().items()},
    }


def test_round_trip_is_weights_only(tmp_path):
    state = _state(3)
    path = save_checkpoint(checkpoint_path(tmp_path, 3), state)
    assert path.name == "step_00000003.pt"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert raw["format"] == "mmtok-train-checkpoint"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["config"] == state["config"]
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    for step in (2, 10, 4, 8):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / ".step_00000012.pt.abc.tmp").write_bytes(b"half a file from a killed run")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 8, 10]
    assert latest_checkpoint(tmp_path).name == "step_00000010.pt"  # by step, not by name or time
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000008.pt", "step_00000010.pt"]


@pytest.mark.parametrize(
    "content",
    [
        b"not a checkpoint at all",
        "truncated",
        "foreign",
    ],
)
def test_corrupt_checkpoint_names_the_file(tmp_path, content):
    path = checkpoint_path(tmp_path, 5)
    if content == "truncated":
        save_checkpoint(path, _state(5))
        path.write_bytes(path.read_bytes()[:-200])
    elif content == "foreign":
        torch.save({"model": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "step_00000099.pt")


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()
    saved = {k: v.clone() for k, v in rng_state().items()}
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert first[:4] == again[:4] and torch.equal(first[4], again[4])
    # As saved by a 2-process run: rank 1 restores its row of the stacked [world, ...] tensors.
    stacked = {k: torch.stack([torch.zeros_like(v), v]) for k, v in saved.items()}
    set_rng_state({k: v[1] for k, v in stacked.items()})
    row = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert first[:4] == row[:4] and torch.equal(first[4], row[4])
    assert all(v.dtype != torch.float32 for v in saved.values())  # stored exactly, never rounded
