"""Configs as data: ``base:`` inheritance (deep merge, chains, cycles) and ``mmtok train --set``."""

from pathlib import Path

import pytest
import yaml

from mmtok.cli import main
from mmtok.errors import ConfigError
from mmtok.train import trainer as trainer_module
from mmtok.train.config import config_from_dict, load_config

TINY = Path(__file__).with_name("tiny_digits.yaml")


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_base_is_inherited_and_deep_merged(tmp_path):
    _write(tmp_path / "base.yaml", yaml.safe_load(TINY.read_text()))
    # The base sits beside the file that names it; the child changes one nested key of three sections.
    child = _write(
        tmp_path / "child.yaml",
        {
            "base": "base.yaml",
            "name": "child",
            "model": {"kwargs": {"widths": [8]}},  # a list replaces: not appended to [16, 32]
            "optim": {"lr": 1e-3},
            "train": {"seed": 7},
        },
    )
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.train.seed == 7 and cfg.optim.lr == 1e-3
    assert cfg.model.kwargs == {"widths": [8], "resolution": 32, "dropout": 0.0}  # siblings kept
    assert cfg.optim.max_steps == 40 and cfg.optim.warmup_steps == 5  # inherited
    assert cfg.train.threads == 1 and cfg.data.batch_size == 32


def test_a_chain_of_two_bases_resolves_paths_relative_to_each_file(tmp_path):
    _write(tmp_path / "a" / "root.yaml", yaml.safe_load(TINY.read_text()))
    _write(tmp_path / "b" / "middle.yaml", {"base": "../a/root.yaml", "optim": {"lr": 2e-3, "max_steps": 20}})
    leaf = _write(tmp_path / "c" / "leaf.yaml", {"base": "../b/middle.yaml", "optim": {"max_steps": 10}})
    cfg = load_config(leaf)
    assert cfg.optim.max_steps == 10 and cfg.optim.lr == 2e-3 and cfg.optim.weight_decay == 0.05
    assert cfg.name == "tiny-digits"
    # A child may drop an inherited section with null (a scalar replaces the mapping).
    _write(tmp_path / "c" / "no-eval.yaml", {"base": "leaf.yaml", "eval": None})
    assert load_config(tmp_path / "c" / "no-eval.yaml").eval is None


def test_a_cycle_of_bases_is_one_config_error(tmp_path):
    _write(tmp_path / "one.yaml", {"base": "two.yaml", "name": "one"})
    _write(tmp_path / "two.yaml", {"base": "sub/../one.yaml", "name": "two"})
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "one.yaml")
    message = str(err.value)
    assert "base: configs name each other in a cycle" in message and "two.yaml" in message
    assert "\n" not in message
    # A base that names itself, and a missing base, fail the same way: one line naming the file.
    _write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    _write(tmp_path / "lost.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"lost.yaml: base: no config file .*nowhere.yaml"):
        load_config(tmp_path / "lost.yaml")


def test_set_overrides_nested_keys_after_the_base(tmp_path, write_config):
    base = write_config("base")
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "optim": {"lr": 1e-3}})
    cfg = load_config(
        child, ["optim.lr=3e-4", "data.batch_size=64", "train.seed=3", "model.kwargs.widths=[4, 8]"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.data.batch_size == 64 and cfg.train.seed == 3
    assert cfg.model.kwargs["widths"] == [4, 8] and cfg.model.kwargs["resolution"] == 32
    assert cfg.optim.max_steps == 40  # untouched keys keep the files' values
    # Values are YAML: booleans, null; and the last --set of a key wins.
    cfg = load_config(base, ["ema.enabled=false", "eval=null", "train.seed=1", "train.seed=2"])
    assert cfg.ema.enabled is False and cfg.eval is None and cfg.train.seed == 2


@pytest.mark.parametrize(
    "item, message",
    [
        ("optim.lrate=0.1", "optim.lrate: unknown key (known: lr, "),
        ("typo=1", "typo: unknown key (known: name, "),
        ("optim.lr=fast", "optim.lr: expected a positive number, got 'fast'"),
        ("optim.lr", "--set 'optim.lr': expected key=value"),
        ("optim..lr=1", "--set 'optim..lr=1': expected key=value"),
        ("optim.lr.x=1", "--set optim.lr.x: optim.lr is 0.003, not a mapping"),
    ],
)
def test_bad_set_items_are_one_line_config_errors(write_config, item, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(), [item])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_cli_unknown_set_key_is_the_loaders_one_line_error(write_config, mmtok_cli):
    path = write_config()
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optim.lrate=0.1"])
    proc = mmtok_cli("train", path, "--set", "optim.lrate=0.1")
    out, errs = proc.communicate(timeout=300)
    assert proc.returncode == 2, errs
    assert errs.strip() == f"mmtok: error: {err.value}"  # the very line the loader gives, nothing else
    assert "Traceback" not in errs and out == ""


def test_run_folder_records_the_resolved_config(tmp_path, write_config, monkeypatch):
    # `mmtok train` up to the point where the trainer writes the run folder, without building or
    # training anything: the trainer's own _start_run_dir writes config.yaml.
    write_config("base")
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "name": "child", "optim": {"lr": 1e-3}})
    seen, real = {}, trainer_module.Trainer

    class Recorder:
        def __init__(self, cfg, *, out, export, command):
            self.cfg, self.run_dir, self.accelerator = cfg, Path(out), None
            seen["command"] = command

        def fit(self, resume=None):
            real._start_run_dir(self, 0)
            return {}

    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    monkeypatch.setattr(trainer_module, "_release", lambda accelerator, threads: None)
    run = tmp_path / "run"
    sets = ["--set", "optim.max_steps=12", "--set", "data.batch_size=8"]
    assert main(["train", str(child), *sets, "--out", str(run)]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert "base" not in recorded
    assert recorded["name"] == "child" and recorded["optim"]["lr"] == 1e-3  # from the child file
    assert recorded["optim"]["max_steps"] == 12 and recorded["data"]["batch_size"] == 8  # --set
    assert recorded["optim"]["weight_decay"] == 0.05 and recorded["train"]["keep_last"] == 2  # the base
    assert recorded["ema"]["warmup"] is True  # defaults filled in
    assert config_from_dict(recorded) == load_config(child, ["optim.max_steps=12", "data.batch_size=8"])
    assert "--set optim.max_steps=12 --set data.batch_size=8" in seen["command"]  # the card's command
