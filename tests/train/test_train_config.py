"""YAML -> dataclasses: defaults, overrides, and one-line ConfigErrors that name the key path."""

from pathlib import Path

import pytest
import yaml

from mmtok.errors import ConfigError
from mmtok.train.config import Config, config_from_dict, load_config, with_max_steps

REPO = Path(__file__).resolve().parents[2]
MODEL = {"class": "DigitsJudge", "kwargs": {"widths": [8]}}


def test_tiny_config_loads_with_defaults(write_config):
    cfg = load_config(write_config())
    assert isinstance(cfg, Config)
    assert cfg.model.cls == "DigitsJudge" and cfg.model.kwargs["widths"] == [16, 32]
    assert cfg.optim.lr == 3e-3 and cfg.optim.betas == (0.9, 0.95)  # betas: the default
    assert cfg.train.mixed_precision == "bf16" and cfg.export.dtype == "bf16"
    assert cfg.eval is not None and cfg.eval.split == "test"
    # to_dict uses the YAML key names and round-trips.
    assert cfg.to_dict()["model"]["class"] == "DigitsJudge"
    assert config_from_dict(cfg.to_dict()) == cfg


def test_sections_may_be_left_out():
    cfg = config_from_dict({"name": "x", "model": MODEL, "data": {"name": "digits"}})
    assert cfg.eval is None and cfg.ema.enabled and cfg.optim.schedule == "cosine"


def test_yaml_quirks_are_accepted(tmp_path):
    # PyYAML reads `1e-3` as a string and `no` as false: both mean what the user wrote.
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodel: {class: DigitsJudge}\ndata: {name: digits}\n")
    path.write_text(path.read_text() + "optim: {lr: 1e-3}\ntrain: {mixed_precision: no}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-3 and cfg.train.mixed_precision == "no"


def test_shipped_configs_are_valid():
    # The recipes (configs/, stage chains in one folder per model) and the experiment configs.
    paths = sorted((REPO / "configs").rglob("*.yaml"))
    paths += sorted((REPO / "experiments" / "configs").glob("*.yaml"))
    assert len(paths) > 40
    for path in paths:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and ("base" in data or ("model" in data and "data" in data)):
            load_config(path)  # raises ConfigError naming the key if a config rots


def test_configs_holds_the_recipes_of_shipped_models_only():
    # One file or one folder (a chain of stage configs) per shipped model, plus the parser that
    # xar-shapes64 trains with and the scale-up recipe; trials live in experiments/configs/.
    shipped = {p.name for p in (REPO / "weights").iterdir() if (p / "config.json").is_file()}
    extra = {"parser-shapes64", "xar-b-imagenet256"}
    entries = {p.stem if p.suffix == ".yaml" else p.name for p in (REPO / "configs").iterdir()}
    assert entries - shipped - extra == set()
    for folder in (p for p in (REPO / "configs").iterdir() if p.is_dir()):
        assert (folder / "replay.sh").is_file(), f"{folder}: no replay.sh"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a positive number, got 'fast'"),
        ({"optim": {"lr": -1}}, "optim.lr: expected a positive number, got -1"),
        ({"optim": {"lrate": 0.1}}, "optim.lrate: unknown key"),
        ({"typo": 1}, "typo: unknown key"),
        ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision: expected one of bf16, no, got 'fp8'"),
        ({"optim": {"max_steps": 0}}, "optim.max_steps: expected a positive integer, got 0"),
        ({"optim": {"max_steps": 2.5}}, "optim.max_steps: expected a positive integer, got 2.5"),
        ({"optim": {"betas": [0.9]}}, "optim.betas: expected two numbers in [0, 1)"),
        ({"optim": {"schedule": "step"}}, "optim.schedule: expected one of cosine, linear, constant"),
        ({"ema": {"decay": 1.5}}, "ema.decay: expected a number in [0, 1), got 1.5"),
        ({"ema": {"enabled": "yes please"}}, "ema.enabled: expected true or false"),
        ({"data": {"batch_size": "big"}}, "data.batch_size: expected a positive integer, got 'big'"),
        ({"data": {"kwargs": [1, 2]}}, "data.kwargs: expected a mapping"),
        ({"data": {"name": "mnist"}}, "data.name: unknown dataset 'mnist'"),
        ({"eval": {"name": "cifar"}}, "eval.name: unknown dataset 'cifar'"),
        ({"model": {"class": "NoSuchNet"}}, "model.class: unknown model class 'NoSuchNet'"),
        ({"model": {"klass": "DigitsJudge"}}, "model.klass: unknown key"),
        ({"name": "../escape"}, "name: expected a name of letters"),
        ({"export": {"dtype": "int8"}}, "export.dtype: expected one of bf16, fp16, fp32"),
        ({"train": {"keep_last": 0}}, "train.keep_last: expected a positive integer, got 0"),
        ({"optim": 5}, "optim: expected a mapping, got 5"),
    ],
)
def test_bad_values_name_the_key(write_config, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(**overrides))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_keys():
    with pytest.raises(ConfigError, match=r"^model: missing"):
        config_from_dict({"name": "x", "data": {"name": "digits"}})
    with pytest.raises(ConfigError, match=r"^data.name: missing"):
        config_from_dict({"name": "x", "model": MODEL, "data": {"batch_size": 4}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {class: DigitsJudge\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_config(bad)
    # Only safe YAML: a Python tag is rejected, never constructed.
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_max_steps_override(write_config):
    cfg = load_config(write_config())
    assert with_max_steps(cfg, 7).optim.max_steps == 7 and cfg.optim.max_steps == 40
    assert with_max_steps(cfg, None) is cfg
    with pytest.raises(ConfigError, match="--max-steps: expected a positive integer"):
        with_max_steps(cfg, 0)


def test_bad_model_or_data_kwargs_fail_before_training(write_config, tmp_path):
    from mmtok.train.trainer import train_from_config

    with pytest.raises(ConfigError, match=r"^model.kwargs: DigitsJudge rejects them"):
        train_from_config(write_config(model={"kwargs": {"depth": 3}}), out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^data: .*no option 'colour'"):
        train_from_config(write_config(data={"kwargs": {"colour": "red"}}), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_bad_config_exits_2_with_one_line(write_config, mmtok_cli):
    proc = mmtok_cli("train", write_config(optim={"lr": "fast"}))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err == "mmtok: error: optim.lr: expected a positive number, got 'fast'\n"
    assert "Traceback" not in err and out == ""
