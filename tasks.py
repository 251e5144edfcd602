#!/usr/bin/env python3
"""Bootstrap and run homespun from a fresh clone with nothing but python3.

    python3 tasks.py quickstart   # make .venv, install homespun, run `homespun quickstart`
    python3 tasks.py test         # make .venv, install homespun[dev], run the test suite
    python3 tasks.py lint         # the one-way layers (lint-imports) and ruff check + format

Extra arguments after `test` go to pytest (e.g. `python3 tasks.py test -k spec -x`).
Uses only the standard library so it runs before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    printable = " ".join(str(c) for c in cmd)
    print(f"+ {printable}", flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv() -> None:
    # tasks.py runs under whatever python3 is first on PATH, before the venv exists.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit(f"homespun needs Python >= 3.11; this is {sys.version.split()[0]}")
    if PY.exists():
        return
    print(f"creating virtualenv {VENV}", flush=True)
    try:
        venv.EnvBuilder(with_pip=True).create(VENV)
    except Exception as exc:  # Debian ships venv's pip bootstrap separately
        sys.exit(
            f"could not create a virtualenv ({exc}).\n"
            "On Debian/Ubuntu install the venv module first: sudo apt-get install python3-venv"
        )


def install(extras: str) -> None:
    marker = VENV / f".installed-{extras or 'base'}"
    stamp = str((ROOT / "pyproject.toml").stat().st_mtime)
    if marker.exists() and marker.read_text() == stamp:
        return
    _run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    target = f".[{extras}]" if extras else "."
    _run(PY, "-m", "pip", "install", "--quiet", "-e", target)
    marker.write_text(stamp)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("quickstart", "test", "lint"):
        sys.exit(__doc__)
    ensure_venv()
    env = dict(os.environ)
    if argv[0] == "quickstart":
        install("")
        _run(BIN / "homespun", "quickstart", *argv[1:], env=env)
    elif argv[0] == "lint":
        install("dev")
        _run(BIN / "lint-imports", env=env)
        _run(BIN / "ruff", "check", "src", "tests", "benchmarks", "tasks.py", env=env)
        _run(BIN / "ruff", "format", "--check", "src", "tests", "benchmarks", "tasks.py", env=env)
    else:
        install("dev")
        # The test model is pulled once per machine into .cache/models.
        env.setdefault("HOMESPUN_TEST_MODELS_DIR", str(ROOT / ".cache" / "models"))
        env.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")
        _run(PY, "-m", "pytest", *argv[1:], env=env)


if __name__ == "__main__":
    main(sys.argv[1:])
