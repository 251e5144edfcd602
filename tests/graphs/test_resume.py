"""A session killed with SIGKILL during execute resumes without losing or duplicating edits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from homespun.home import init_home
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore
from tests.learning.toy import commit_gate_rule

REPO = Path(__file__).resolve().parents[2]


def _driver(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HOMESPUN_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.search_driver", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_during_execute_then_resume(settings):
    init_home(settings)
    commit_gate_rule(settings, "strict")  # 3 gate tasks a cluster; this test is about resuming
    proc = _driver(settings.home)
    seen_gate_for = 0
    deadline = time.time() + 120
    killed = False
    for line in proc.stdout:  # kill while the second proposal's candidate is evaluated
        if line.startswith("EVENT evaluate_start gate: proposal"):
            seen_gate_for += 1
            if seen_gate_for == 2:
                time.sleep(0.5)
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        assert time.time() < deadline, "driver too slow"
    proc.wait(timeout=30)
    assert killed and proc.returncode == -signal.SIGKILL

    store = LearningStore(settings.learning_db)
    accepted_before = {p["id"] for p in store.proposals(status="accepted")}
    assert len(accepted_before) == 1  # the first proposal was committed before the kill

    resumed = _driver(settings.home, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "DONE paused=" in out

    repo = CheckpointRepo(settings.home, settings.spec_path)
    edit_ids = Counter(c.trailers.get("Edit-ID") for c in repo.commits() if "Edit-ID" in c.trailers)
    assert all(n == 1 for n in edit_ids.values()), edit_ids  # no commit duplicated
    accepted_after = {p["id"] for p in store.proposals(status="accepted")}
    assert accepted_before <= accepted_after  # no accepted edit lost
    assert set(edit_ids) == accepted_after
    assert repo.file_matches_head()  # spec file equals git HEAD
    statuses = Counter(p["status"] for p in store.proposals())
    assert statuses["rejected"] == 1 and statuses["pending_review"] == 1, statuses
