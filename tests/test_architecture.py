"""The one-way layers of ARCHITECTURE.md hold, and a wrong-way import breaks the lint.

`lint-imports` runs in .ci/run too; these tests show that it would catch a lower layer importing
a higher one (lazy imports included) and a private name imported across packages, by linting a
copy of the package with one bad import added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "src" / "homespun",
        tmp_path / "src" / "homespun",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_and_the_private_rule_hold():
    result = _lint(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_lazy_import_of_a_higher_layer_breaks_the_layers_contract(tree_copy: Path):
    hardware = tree_copy / "src" / "homespun" / "engines" / "hardware.py"
    hardware.write_text(
        hardware.read_text()
        + (
            "\n\ndef _reach_up():\n    from homespun.graphs.runner import run_assistant\n"
            "    return run_assistant\n"
        )
    )
    result = _lint(tree_copy, tree_copy / "src")
    assert result.returncode != 0
    assert "homespun.engines is not allowed to import homespun.graphs.runner" in result.stdout
    assert "homespun.engines.hardware -> homespun.graphs.runner" in result.stdout


def test_a_private_name_from_another_package_breaks_the_private_contract(tree_copy: Path):
    # learning sits above spec, so only the private rule can catch this one.
    gate = tree_copy / "src" / "homespun" / "learning" / "gate.py"
    gate.write_text(gate.read_text() + "\nfrom homespun.spec.diff import _flatten  # noqa\n")
    result = _lint(tree_copy, tree_copy / "src")
    assert result.returncode != 0
    assert "imports private homespun.spec.diff._flatten" in result.stdout
    assert "One-way layers (ARCHITECTURE.md) KEPT" in result.stdout
