"""The recipe folders (configs/<model>/replay.sh) replay a shipped model's stage chain: every command
parses, every config loads with its --set items, and every model a stage starts from or trains with
is one the replay exported before it (never a shipped model found on MMTOK_WEIGHTS by accident)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from mmtok.cli import build_parser
from mmtok.train.config import load_config

REPO = Path(__file__).resolve().parents[2]
REPLAYS = sorted((REPO / "configs").glob("*/replay.sh"))


def _commands(script: Path) -> list[list[str]]:
    env = dict(os.environ, DRY="1", OUT="replay-out")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _models_used(cfg) -> list[str]:
    kwargs = cfg.model.kwargs
    perceptual = kwargs.get("perceptual") or []
    used = [cfg.model.init] if cfg.model.init else []
    used += [perceptual] if isinstance(perceptual, str) else list(perceptual)
    return used + list((kwargs.get("consistency_networks") or {}).values())


def test_every_recipe_folder_has_a_replay():
    folders = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir())
    assert folders == sorted(p.parent.name for p in REPLAYS) and "bin-f8-64" in folders


@pytest.mark.parametrize("script", REPLAYS, ids=lambda p: p.parent.name)
def test_replay_chains_its_own_stages(script):
    commands = _commands(script)
    exported: list[str] = []
    stage_configs = set()
    for cmd in commands:
        if cmd[:2] == ["mmtok", "train"]:
            args = build_parser().parse_args(cmd[1:])
            assert args.export.startswith("replay-out/"), cmd
            cfg = load_config(REPO / args.config, args.overrides)
            for name in _models_used(cfg):
                assert name in exported, f"{args.config} starts from or uses {name}, not replayed before it"
            exported.append(Path(args.export).name)
            stage_configs.add((REPO / args.config).resolve())
        else:
            assert cmd[:2] == ["python", "scripts/average_weights.py"], cmd
            out, *ingredients = [a for a in cmd[2:] if not a.startswith("--") and a != "encoder."]
            assert out.startswith("replay-out/") and len(ingredients) >= 2, cmd
            assert all(name in exported for name in ingredients), cmd
            exported.append(Path(out).name)
    # The chain ends in the model the folder is named after, and uses every stage config it holds.
    assert exported[-1] == script.parent.name
    assert {p.resolve() for p in script.parent.glob("*.yaml")} <= stage_configs
