"""DDP on CPU: two gloo processes under torchrun keep identical replicas, read disjoint shards, and
resume exactly from a checkpoint holding both ranks' RNG states."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmtok.train.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("dist_train.py")


@pytest.mark.dist
def test_two_cpu_processes_stay_in_sync(write_config, tmp_path):
    # 6 steps x 2 micro-steps x 16 items x 2 ranks = 384 < 1441 digits: no index can come back.
    config = write_config(
        optim={"max_steps": 6, "grad_accum": 2, "warmup_steps": 2},
        data={"batch_size": 16},
        train={"log_every": 2, "ckpt_every": 3},
    )
    run, export, reports = tmp_path / "run", tmp_path / "export", tmp_path / "reports"
    _torchrun(tmp_path, config, run, export, reports)

    r0, r1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "DistributedType.MULTI_CPU"
    assert r0["params"] == r1["params"], "replicas diverged"
    assert r0["ema"] == r1["ema"], "EMA copies diverged"
    assert len(r0["seen"]) == len(r1["seen"]) == 6 * 2 * 16
    assert not set(r0["seen"]) & set(r1["seen"]), "ranks read overlapping data"
    assert len(set(r0["seen"])) == len(r0["seen"])

    # Rank 0 alone wrote the run folder and the export; the checkpoint holds both ranks' RNG states.
    final = load_checkpoint(run / "checkpoints" / "step_00000006.pt")
    assert final["world_size"] == 2 and final["rng"]["torch"].shape[0] == 2
    assert not final["rng"]["torch"][0].equal(final["rng"]["torch"][1])  # ranks draw different noise
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [2, 4, 6]
    readme = (export / "README.md").read_text()
    assert "2 x CPU" in readme and "global batch 64" in readme

    # Resume both ranks from the step-3 checkpoint in a fresh folder: same replicas at step 6.
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "step_00000003.pt", again / "checkpoints")
    _torchrun(tmp_path, config, again, tmp_path / "export2", tmp_path / "reports2", "latest")
    q0, q1 = (json.loads((tmp_path / "reports2" / f"rank{r}.json").read_text()) for r in range(2))
    assert q0["summary"]["resumed_from"] == 3
    assert q0["params"] == q1["params"] == r0["params"] and q0["ema"] == q1["ema"] == r0["ema"]
    assert q0["seen"] == r0["seen"][len(r0["seen"]) // 2 :]  # rank 0 picks up its shard mid-stream


def _torchrun(tmp_path, *args):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = dict(
        os.environ,
        GLOO_SOCKET_IFNAME="lo",  # gloo's interface autodetection is flaky on CI machines
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MMTOK_WEIGHTS=str(tmp_path / "weights"),
    )
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", SCRIPT, *args]
    proc = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
