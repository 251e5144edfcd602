"""Shared fixtures: an isolated HOMESPUN_HOME per test, the real model (pulled once), and a
recording loopback HTTP stub (tests/stubs.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from homespun.spec import Settings
from tests.stubs import RecordingStub

REPO = Path(__file__).resolve().parents[1]


def test_models_dir() -> Path:
    return Path(os.environ.get("HOMESPUN_TEST_MODELS_DIR", REPO / ".cache" / "models"))


test_models_dir.__test__ = False  # a helper, not a test


def test_bfcl_dir() -> Path:
    """Where the BFCL data (extracted from the bfcl-eval wheel) is kept for the test suite."""
    return Path(os.environ.get("HOMESPUN_TEST_BFCL_DIR", REPO / ".cache" / "bfcl"))


test_bfcl_dir.__test__ = False  # a helper, not a test


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOMESPUN_HOME; the shared model cache is used for models."""
    h = tmp_path / "home"
    monkeypatch.setenv("HOMESPUN_HOME", str(h))
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(test_models_dir()))
    monkeypatch.setenv("HOMESPUN_BFCL_DIR", str(test_bfcl_dir()))
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


@pytest.fixture
def http_stub() -> Iterator[RecordingStub]:
    """A started `RecordingStub` on 127.0.0.1 (no replies queued, no handler), closed after
    the test. Fixtures of one test share it: a file's own fixture may configure it and the
    test may still ask for `http_stub` to reach it."""
    with RecordingStub() as stub:
        yield stub
