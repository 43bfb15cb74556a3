import json
import subprocess
import sys

import pytest
import torch

import mmtok
from mmtok.cli import main
from mmtok.eval.judge import ShapesJudge


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mmtok", *args], capture_output=True, text=True, env=env)


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert mmtok.__version__ in capsys.readouterr().out


def test_models_json_lists_saved_models(weights_dir, capsys):
    mmtok.save(ShapesJudge(widths=(8, 16), hidden=16), weights_dir / "judge-tiny", metrics={"x": 1.0})
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (entry,) = out["models"]
    assert entry["name"] == "judge-tiny" and entry["task"] == "judge" and entry["class"] == "ShapesJudge"
    assert main(["models"]) == 0
    assert "judge-tiny" in capsys.readouterr().out


def test_python_m_mmtok_and_error_policy(weights_dir, tmp_path):
    import os

    env = dict(os.environ, MMTOK_WEIGHTS=str(weights_dir))
    ok = _run("models", "--json", env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"models": []}
    # Bad user input: one line on stderr, exit 2, no traceback.
    bad = _run("eval", "judge", "--model", "no-such-judge", env=env)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("mmtok: error:") and "no-such-judge" in bad.stderr
    # Usage errors are also exit 2.
    assert _run("no-such-command", env=env).returncode == 2


def test_internal_error_exits_1(monkeypatch, capsys):
    import mmtok.cli as cli

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_models", boom)
    assert cli.main(["models"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_no_unsafe_deserialisation_in_package():
    """weights only as safetensors; torch.load only with weights_only=True; no pickle/eval/exec."""
    import pathlib
    import re

    root = pathlib.Path(mmtok.__file__).parent
    for file in list(root.rglob("*.py")) + list((root.parent / "apps").rglob("*.py")):
        text = file.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{file}: {call}"
        assert not re.search(r"\bimport pickle\b|\bpickle\.loads?\(", text), file
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), file
        assert "yaml.load(" not in text, file


def test_device_choice():
    from mmtok.errors import MmtokError
    from mmtok.runtime import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        try:
            pick_device("cuda")
        except MmtokError as e:
            assert "CUDA" in str(e)
        else:
            raise AssertionError("cuda accepted without CUDA")


def test_petct_commands_are_wired(tmp_path, capsys):
    from mmtok.cli import main

    assert (
        main(["phantom", "--out", str(tmp_path), "-n", "1", "--seed", "1", "--shape", "48x48x64", "--json"])
        == 0
    )
    case = json.loads(capsys.readouterr().out)["cases"][0]["dir"]
    code = main(["weaklabel", "--report", f"{case}/report.txt", "--pet", f"{case}/SUV.nii.gz",
                 "--out", str(tmp_path / "wl"), "--json"])  # fmt: skip
    assert code == 0 and "findings" in capsys.readouterr().out
    assert main(["weaklabel", "--report", f"{case}/SUV.nii.gz", "--pet", f"{case}/SUV.nii.gz",
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert main(["eval", "weaklabel", "--n", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weaklabel"]


def test_every_eval_target_parses_and_is_dispatched():
    import inspect

    from mmtok.cli import EVAL_TARGETS, build_parser, cmd_eval

    source = inspect.getsource(cmd_eval)
    for target in EVAL_TARGETS:
        assert build_parser().parse_args(["eval", target]).what == target
        assert f'args.what == "{target}"' in source  # a branch for it, not the "unknown" fallback
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["eval", "nothing"])
    assert e.value.code == 2
