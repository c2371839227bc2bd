"""The maintainer's tools: ``make help`` and the pre-commit hooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_make_help_lists_the_two_readme_commands():
    make = shutil.which("make")
    assert make is not None, "make is needed to build the environments (README)"
    listed = subprocess.run([make, "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    targets = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"demo", "test", "lint", "typecheck", "clean"} <= targets


def test_pre_commit_config_is_valid_and_runs_ruff_and_mypy():
    config = ROOT / ".pre-commit-config.yaml"
    subprocess.run([sys.executable, "-m", "pre_commit", "validate-config", str(config)],
                   check=True, capture_output=True)
    hooks = {hook["id"]: hook for repo in yaml.safe_load(config.read_text())["repos"]
             for hook in repo["hooks"]}
    assert hooks["ruff"]["entry"].endswith("ruff check")
    assert hooks["mypy"]["entry"].endswith("mypy codexdask")
