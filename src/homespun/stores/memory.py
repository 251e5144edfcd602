"""Long-term memory: short texts with tags in SQLite, found again by FTS5 full-text search.

Used by the core MCP server, the CLI and anything else that reads or writes the assistant's
memories, so it depends on nothing above sqlite-utils.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from homespun.stores.sqlite import connect

__all__ = ["MemoryHit", "MemoryStore", "fts5_query"]

_TABLE = "memories"

# Words that carry no meaning in a question ("what is my ...") would otherwise match nearly
# every memory; dropped unless nothing else is left.
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her
    him his how i if in into is it its me my no not of on or our she so than that the their
    them then there these they this to was we were what when where which who whom why will
    with would you your""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """One stored memory, as returned by a search or a listing."""

    id: int
    """Row id; stable for the life of the database."""
    text: str
    """The remembered text, as given."""
    tags: str
    """Comma-separated labels, normalised to `"a, b"`; empty when none were given."""
    created_at: str
    """When it was stored, ISO-8601 in UTC."""
    score: float | None
    """Relevance (negated FTS5 bm25, higher is better); None outside a search."""


def fts5_query(query: str) -> str:
    """Turn free text into a safe FTS5 MATCH expression: every word quoted, words OR-ed.

    Quoting neutralises FTS5 syntax (`"`, `*`, `:`, `NEAR`, `AND`, ...) that users and models
    type by accident; OR lets a memory that shares only some words still match, and bm25 ranks
    the ones that share more higher. Returns "" when the query has no words.
    """
    words = [w.lower() for w in _WORD.findall(query)]
    meaningful = [w for w in words if w not in _STOPWORDS]
    chosen = list(dict.fromkeys(meaningful or words))
    return " OR ".join(f'"{w}"' for w in chosen)


def _normalise_tags(tags: str) -> str:
    parts = [t.strip() for t in tags.split(",")]
    return ", ".join(t for t in parts if t)


class MemoryStore:
    """Memories in one SQLite file (WAL mode) with an FTS5 index kept in sync by triggers.

    Each call opens its own short-lived connection, so one store may be shared by threads
    (FastMCP runs sync tools in worker threads) and several processes may use the same file.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        with self._db() as db:
            db.enable_wal()
            table = db.table(_TABLE)
            if not table.exists():
                table.create(
                    {"id": int, "text": str, "tags": str, "created_at": str},
                    pk="id",
                    not_null={"text", "tags", "created_at"},
                )
            if not table.detect_fts():
                # porter: "meetings" finds "meeting"
                table.enable_fts(["text", "tags"], create_triggers=True, tokenize="porter")

    @contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        conn = connect(self.path)
        try:
            db = sqlite_utils.Database(conn)
            yield db
            conn.commit()
        finally:
            conn.close()

    def add(self, text: str, tags: str = "") -> int:
        """Store a memory and return its id. Raises ValueError for empty text."""
        text = text.strip()
        if not text:
            raise ValueError("memory text is empty")
        row = {
            "text": text,
            "tags": _normalise_tags(tags),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._db() as db:
            # IMMEDIATE takes the write lock up front, so a concurrent writer makes this wait
            # (busy timeout) instead of failing with "database is locked" on lock upgrade.
            db.conn.execute("BEGIN IMMEDIATE")
            table = db.table(_TABLE).insert(row)
            return int(table.last_pk)

    def search(self, query: str, limit: int = 5) -> list[MemoryHit]:
        """Up to `limit` memories matching any word of `query`, best (bm25) first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        match = fts5_query(query)
        if not match:
            return []
        with self._db() as db:
            rows = db.table(_TABLE).search(match, limit=limit, include_rank=True)
            return [_hit(row, score=-float(row["rank"])) for row in rows]

    def count(self) -> int:
        with self._db() as db:
            return db.table(_TABLE).count

    def all(self, limit: int | None = None) -> list[MemoryHit]:
        """Memories newest first, at most `limit` of them (all when None)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._db() as db:
            rows = db.table(_TABLE).rows_where(order_by="id desc", limit=limit)
            return [_hit(row, score=None) for row in rows]


def _hit(row: dict, *, score: float | None) -> MemoryHit:
    return MemoryHit(
        id=int(row["id"]),
        text=row["text"],
        tags=row["tags"],
        created_at=row["created_at"],
        score=score,
    )
