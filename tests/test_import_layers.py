"""Arrows only down: the import contracts in pyproject.toml ([tool.importlinter]) hold.

The same check runs in .ci/run before the tests; here it keeps a local `pytest` honest too.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.is_file():
        return str(exe)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.skip("lint-imports is not installed: pip install -e '.[dev]' installs import-linter")
    return found


def test_import_contracts_are_kept():
    r = subprocess.run(
        [_lint_imports(), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"lint-imports failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", r.stdout)
    assert kept and int(kept.group(1)) >= 3, r.stdout  # layers, domain independence, no UI in mmtok
