"""`train.strategy: fsdp` on 2 CPU processes (FSDP2 over gloo): parameters are sharded, checkpoints hold
whole tensors, evaluation and export use a gathered copy, and a resumed run ends bit-identical."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import REPO, child_env
from safetensors.torch import load_file

from mmtok.train.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("dist_fsdp.py")


def _torchrun(tmp_path, *args):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", SCRIPT, *args]
    env = child_env(MMTOK_WEIGHTS=str(tmp_path / "weights"))
    proc = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp_shards_checkpoints_whole_and_resumes_exactly(tmp_path):
    config = yaml.safe_load((REPO / "tests" / "train" / "tiny_digits.yaml").read_text())
    config["optim"] |= {"max_steps": 6, "grad_accum": 2, "warmup_steps": 2}
    config["data"]["batch_size"] = 16
    config["train"] |= {"log_every": 2, "ckpt_every": 3, "strategy": "fsdp"}
    config["export"] = {"dtype": "fp32"}
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))

    run, export, reports = tmp_path / "run", tmp_path / "export", tmp_path / "reports"
    _torchrun(tmp_path, path, run, export, reports)
    r0, r1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["fsdp"] and r0["sharded"] and r1["sharded"] and r0["world"] == 2
    assert r0["local_numel"] * 2 == r0["full_numel"]  # each rank holds half of a parameter
    assert r0["summary"]["eval"]["n"] == 355  # evaluated on the gathered EMA copy, on rank 0

    state = load_checkpoint(run / "checkpoints" / "step_00000006.pt")
    exported = load_file(str(export / "model.safetensors"))
    assert state["strategy"] == "fsdp" and state["world_size"] == 2
    for key, value in state["ema"].items():  # whole tensors, not shards
        assert value.shape == exported[key.removeprefix("module.")].shape
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])  # keyed by parameter name

    # Resume from step 3 in a fresh folder: the same final weights, bit for bit.
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "step_00000003.pt", again / "checkpoints")
    _torchrun(tmp_path, path, again, tmp_path / "export2", tmp_path / "reports2", "latest")
    resumed = load_file(str(tmp_path / "export2" / "model.safetensors"))
    assert json.loads((tmp_path / "reports2" / "rank0.json").read_text())["summary"]["resumed_from"] == 3
    assert exported.keys() == resumed.keys()
    assert all(torch.equal(exported[k], resumed[k]) for k in exported)
