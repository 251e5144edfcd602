"""The one SQLite opener: private files, WAL, a busy timeout; and every store goes through it."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from homespun.spec import Settings
from homespun.stores.eval_cache import EvalCache, TaskOutcome
from homespun.stores.learning import LearningStore
from homespun.stores.memory import MemoryStore
from homespun.stores.sqlite import BUSY_TIMEOUT_S, connect, ensure_private_file
from homespun.stores.traces import TraceStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_are_readable_by_the_owner_only(tmp_path: Path):
    path = tmp_path / "fresh" / "x.db"
    conn = connect(path)
    conn.execute("create table t (x)")
    conn.execute("insert into t values (1)")
    conn.commit()
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    wal = path.with_name("x.db-wal")
    assert wal.exists() and _mode(wal) == 0o600
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma busy_timeout").fetchone()[0] == int(BUSY_TIMEOUT_S * 1000)
    assert conn.execute("pragma synchronous").fetchone()[0] == 1  # NORMAL: test_durability.py
    conn.close()


def test_an_existing_world_readable_file_is_narrowed_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("create table t (x)")
    old.execute("insert into t values (42)")
    old.commit()
    old.close()
    path.chmod(0o644)
    ensure_private_file(path)
    assert _mode(path) == 0o600
    assert connect(path).execute("select x from t").fetchone() == (42,)


def test_every_store_creates_its_file_owner_only(tmp_path: Path):
    st = Settings(home=tmp_path / "home")
    TraceStore(st.traces_db)
    LearningStore(st.learning_db)
    EvalCache(st.learning_db)
    MemoryStore(st.memory_db).add("dentist is Dr. Lee")
    for path in (st.traces_db, st.learning_db, st.memory_db):
        assert _mode(path) == 0o600, path


def test_a_writer_waits_for_another_processes_lock_instead_of_failing(tmp_path: Path):
    path = tmp_path / "busy.db"
    setup = connect(path)
    setup.execute("create table t (x)")
    setup.commit()
    setup.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('begin immediate'); c.execute('insert into t values (1)')\n"
            "print('locked', flush=True); time.sleep(1.0); c.execute('commit')\n"
        ), str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = connect(path)
        started = time.perf_counter()
        second.execute("insert into t values (2)")  # without the timeout: "database is locked"
        second.commit()
        assert time.perf_counter() - started >= 0.5
        assert sorted(r[0] for r in second.execute("select x from t")) == [1, 2]
    finally:
        holder.wait(timeout=30)


class _Bench:
    name = "starter"
    version = "1"


def _outcome(task_id: str, success: bool) -> TaskOutcome:
    return TaskOutcome(
        task_id=task_id, category="arithmetic", repeat=0, success=success,
        score=float(success), reason="", trace_id="t", status="ok", error=None,
        answer="156", latency_s=0.5, prompt_tokens=10, completion_tokens=2, tool_calls=1,
    )  # fmt: skip


def test_the_eval_cache_returns_an_outcome_for_the_same_spec_task_and_version_only(
    tmp_path: Path,
):
    cache = EvalCache(tmp_path / "learning.db")
    cache.put("hash-a", _Bench(), _outcome("t1", True))
    hit = cache.get("hash-a", _Bench(), "t1", 0)
    assert hit is not None and hit.success and hit.cached
    assert cache.get("hash-b", _Bench(), "t1", 0) is None  # another spec runs again
    assert cache.get("hash-a", _Bench(), "t1", 1) is None  # another repeat runs again
    newer = _Bench()
    newer.version = "2"
    assert cache.get("hash-a", newer, "t1", 0) is None  # a changed benchmark runs again
    cache.put("hash-a", _Bench(), _outcome("t1", False))  # a re-run replaces the row
    again = EvalCache(tmp_path / "learning.db").get("hash-a", _Bench(), "t1", 0)
    assert again is not None and not again.success
