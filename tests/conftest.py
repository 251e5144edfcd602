"""Shared fixtures: an isolated HOMESPUN_HOME per test, and the real model, pulled once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from homespun.spec import Settings

REPO = Path(__file__).resolve().parents[1]


def test_models_dir() -> Path:
    return Path(os.environ.get("HOMESPUN_TEST_MODELS_DIR", REPO / ".cache" / "models"))


test_models_dir.__test__ = False  # a helper, not a test


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOMESPUN_HOME; the shared model cache is used for models."""
    h = tmp_path / "home"
    monkeypatch.setenv("HOMESPUN_HOME", str(h))
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(test_models_dir()))
    monkeypatch.delenv("HOMESPUN_SPEC", raising=False)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default embedded model, downloaded and hash-checked once per machine."""
    from homespun.engines.catalog import pull_model

    return pull_model("smollm2-135m", test_models_dir(), progress=False)
