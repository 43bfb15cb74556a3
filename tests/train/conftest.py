"""Tiny real training configs (tiny_digits.yaml + overrides) and a CLI runner for subprocess tests."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = Path(__file__).with_name("tiny_digits.yaml")


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_config(tmp_path):
    """``write_config(file="cfg", /, **section_overrides) -> Path``: tiny_digits.yaml with the overrides
    merged in (nested dicts merge, other values replace), written to tmp_path."""

    def write(file: str = "cfg", /, **overrides) -> Path:
        path = tmp_path / f"{file}.yaml"
        base = yaml.safe_load(TINY.read_text())
        path.write_text(yaml.safe_dump(merge(base, overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def mmtok_cli(tmp_path):
    """``mmtok_cli(*args) -> Popen`` of ``python -m mmtok ...``: offline, one thread, CPU, and an
    empty $MMTOK_WEIGHTS so nothing is ever written to the repo's weights/."""
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MMTOK_WEIGHTS=str(weights),
    )

    def run(*args) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mmtok", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    return run
