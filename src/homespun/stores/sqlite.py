"""The one way homespun opens a SQLite file.

Every store (traces, learning, eval cache, memory, the notes index, graph checkpoints) goes
through here so they all get the same three things: write-ahead logging (readers never block the
one writer, and a crash mid-write loses nothing that was committed), a busy timeout (a second
process waits for the write lock instead of failing at once), and files that only their owner can
read: the assistant's conversations, tool results and memories are personal data.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another process's write lock before it raises."""


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
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def open_database(path: Path) -> sqlite_utils.Database:
    """`connect`, wrapped in sqlite-utils for the stores that use its table helpers."""
    return sqlite_utils.Database(connect(path))
