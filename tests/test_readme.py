"""The README tells the truth: CI runs its test command, and its model table lists what weights/ ships."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands():
    return re.findall(r"```bash\n(?:#[^\n]*\n)?(python3 -m venv[^\n]+)\n```", README)


def test_two_setup_commands_and_ci_runs_the_test_command():
    main_job, tests = _commands()[:2]
    assert "pip install -e ." in main_job and "mmtok" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "the README's test command must be run verbatim by .ci/run"
    assert "torch==2.14.1" in (ROOT / "pyproject.toml").read_text()
    assert "torchvision==0.29.1" in (ROOT / "pyproject.toml").read_text()


def test_model_table_lists_every_shipped_model_with_its_metrics():
    weights = ROOT / "weights"
    for folder in sorted(p for p in weights.iterdir() if (p / "config.json").is_file()):
        row = next((line for line in README.splitlines() if line.startswith(f"| `{folder.name}`")), None)
        assert row is not None, f"README model table lacks {folder.name}"
        assert (folder / "README.md").is_file(), f"{folder} has no README.md"
        metrics = json.loads((folder / "metrics.json").read_text())
        numbers = [v for v in metrics.values() if isinstance(v, float) and 0 < v <= 1]
        assert numbers and all(f"{100 * v:.1f}" in README for v in numbers[:1]), folder.name
        assert (folder / "model.safetensors").stat().st_size < 25 * 2**20
