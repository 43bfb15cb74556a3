"""Helpers of the reliability suite (a uniquely named module, importable from the test files)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def one_line_error(code: int, err: str) -> str:
    """The single ``mmtok: error:`` line of a refused command (no traceback, no bar residue)."""
    # As a terminal shows it: a progress bar redrawn with \r and cleared leaves nothing behind.
    lines = [line.split("\r")[-1] for line in err.strip().split("\n")]
    lines = [line for line in lines if line.strip()]
    assert code == 2, f"exit {code}, stderr: {err[-2000:]}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("mmtok: error: "), err
    return lines[0]


def child_env(**extra) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",  # gloo's interface autodetection is flaky on CI machines
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def mmtok_command(*args) -> list[str]:
    return [sys.executable, "-m", "mmtok", *map(str, args)]


def torchrun_command(nproc: int, *args) -> list[str]:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "mmtok", *map(str, args)]


def run_child(cmd, timeout=240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, **kwargs)
