"""The README tells the truth: CI runs its test command, and its model table lists what weights/ ships."""

import json
import re
import subprocess
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
    # CI cannot pass on nothing: every step fails the script, and "no tests collected" (exit 5) too.
    assert "set -euo pipefail" in ci.splitlines() and "rc=0" not in ci
    assert "torch==2.14.1" in (ROOT / "pyproject.toml").read_text()
    assert "torchvision==0.29.1" in (ROOT / "pyproject.toml").read_text()


def _git_ignored(path: Path) -> bool:
    try:
        r = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True)
    except OSError:  # no git: judge by the folder alone
        return False
    return r.returncode == 0


def test_model_table_lists_every_shipped_model_with_its_metrics():
    weights = ROOT / "weights"
    for folder in sorted(p for p in weights.iterdir() if (p / "config.json").is_file()):
        if _git_ignored(folder):  # intermediate stages (weights/*-s1) are made locally, not shipped
            continue
        row = next((line for line in README.splitlines() if line.startswith(f"| `{folder.name}`")), None)
        assert row is not None, f"README model table lacks {folder.name}"
        assert (folder / "README.md").is_file(), f"{folder} has no README.md"
        metrics = json.loads((folder / "metrics.json").read_text())
        # The row quotes at least one measured figure: a fraction as a percentage, or a value (dB, FID).
        shown = {f"{100 * v:.1f}" for v in metrics.values() if isinstance(v, float) and 0 < v <= 1}
        shown |= {f"{v:.1f}" for v in metrics.values() if isinstance(v, float) and v > 1}
        assert any(re.search(rf"(?<![\d.]){re.escape(s)}(?![\d])", row) for s in shown), folder.name
        assert (folder / "model.safetensors").stat().st_size < 25 * 2**20
