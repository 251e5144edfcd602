"""The one way homespun opens a SQLite file.

Every store (traces, learning, eval cache, memory, the notes index, graph checkpoints) goes
through here so they all get the same four things: write-ahead logging (readers never block the
one writer, and a crash mid-write loses nothing that was committed), the WAL's `synchronous =
NORMAL` durability (below), a busy timeout (a second process waits for the write lock instead of
failing at once), and files that only their owner can read: the assistant's conversations, tool
results and memories are personal data. `connect_async` is the same connection for asyncio code
(LangGraph's AsyncSqliteSaver).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils

if TYPE_CHECKING:
    import aiosqlite

BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another process's write lock before it raises."""

SYNCHRONOUS = "NORMAL"
"""When SQLite waits for the disk (fsync): in WAL mode, NORMAL syncs the WAL only when it is
checkpointed into the database, not at every commit, as FULL (SQLite's default) does.

Why that is safe for a crash of homespun: a commit returns after its pages are written to the WAL
file, so they are in the operating system's page cache, which a process that crashes or is killed
(SIGKILL, OOM killer, a segfault in llama.cpp) does not lose; the next connection reads them
from the WAL. tests/stores/test_durability.py kills a writer right after its commits return and
finds every row. What it does not cover: a crash of the operating system or a power cut can lose
the last transactions committed before it (the database stays consistent, never corrupt; it just
ends at an earlier commit). That is the trade SQLite documents for WAL + NORMAL.

What it buys: a commit no longer waits for the disk, and a question to the assistant commits
about a dozen times (the trace row twice, the thread's checkpoint and writes after every graph
step). Counted with strace on benchmarks/overhead.py's persisted path: 19 fdatasync calls per
question with FULL, 4 with NORMAL (those left are the WAL's checkpoints into the database when
a connection closes). The time that saves depends on the disk: 0.6 ms per FULL commit on the
ext4 these figures come from, far more on a laptop disk that really flushes.
"""


def ensure_private_file(path: Path) -> Path:
    """Create `path` (and missing parent folders) readable and writable by its owner only.

    An existing file keeps its contents; its mode is narrowed to 0600. SQLite gives the -wal and
    -shm files it creates the mode of the database file, so they are private too.
    """
    path = Path(path).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def connect(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """A sqlite3 connection with WAL, the busy timeout and an owner-only file."""
    path = ensure_private_file(path)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None if autocommit else "DEFERRED"
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() == "wal":  # NORMAL is safe for a crash with the WAL only
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    return conn


def connect_async(path: Path) -> aiosqlite.Connection:
    """`connect` for asyncio code: an aiosqlite connection (await it, or `async with` it) whose
    sqlite3 connection is `connect(path)`, opened on aiosqlite's own thread."""
    import aiosqlite

    path = ensure_private_file(path)
    return aiosqlite.Connection(lambda: connect(path), iter_chunk_size=64)


def open_database(path: Path) -> sqlite_utils.Database:
    """`connect`, wrapped in sqlite-utils for the stores that use its table helpers."""
    return sqlite_utils.Database(connect(path))
