"""Sessions, proposals, outcomes, per-cluster scores and costs in learning/learning.db."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homespun.spec.edits import Proposal
from homespun.stores.sqlite import open_database

# Proposal states: planned -> (pending_review -> approved | review_rejected) -> accepted |
# rejected | error
TERMINAL = ("accepted", "rejected", "review_rejected", "error")


# Added after the first release: nullable, and added to existing databases on open, so a
# session recorded before them reads back with None (its test accuracy was never measured).
_ADDED_SESSION_COLUMNS: dict[str, type] = {
    "test_score_before": float,  # accuracy on the untouched test split, at the start ...
    "test_score_after": float,  # ... and at the end of the session
    "test_tasks": int,  # size of the test split: 0 when the session had none
}
_ADDED_COST_COLUMNS: dict[str, type] = {
    "calls": int,  # teacher calls in the row: a local teacher's are free but still counted
    "seconds": float,  # their wall time
}


@dataclass
class SessionRow:
    id: str
    started_at: float
    ended_at: float | None
    status: str  # running | paused | done | failed | nothing_to_fix
    benchmark: str
    proposer: str
    teacher: str
    spec_hash_before: str
    spec_hash_after: str | None
    gate_score_before: float | None
    gate_score_after: float | None
    cost_usd: float
    note: str
    test_score_before: float | None = None
    test_score_after: float | None = None
    test_tasks: int | None = None  # None: recorded before sessions had a test split


class LearningStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = open_database(self.path)
        self._schema()

    def _schema(self) -> None:
        names = set(self.db.table_names())
        if "sessions" not in names:
            self.db["sessions"].create(
                {
                    "id": str,
                    "started_at": float,
                    "ended_at": float,
                    "status": str,
                    "benchmark": str,
                    "proposer": str,
                    "teacher": str,
                    "spec_hash_before": str,
                    "spec_hash_after": str,
                    "gate_score_before": float,
                    "gate_score_after": float,
                    "cost_usd": float,
                    "note": str,
                },
                pk="id",
            )
        if "proposals" not in names:
            self.db["proposals"].create(
                {
                    "id": str,
                    "session_id": str,
                    "idx": int,
                    "target": str,
                    "tier": str,
                    "proposer": str,
                    "ops": str,
                    "rationale": str,
                    "status": str,
                    "reason": str,
                    "commit_sha": str,
                    "created_at": float,
                    "decided_at": float,
                },
                pk="id",
            )
        if "cluster_scores" not in names:
            self.db["cluster_scores"].create(
                {
                    "session_id": str,
                    "proposal_id": str,
                    "cluster": str,
                    "before": float,
                    "after": float,
                },
                pk=("proposal_id", "cluster"),
            )
        if "costs" not in names:
            self.db["costs"].create(
                {
                    "session_id": str,
                    "at": float,
                    "kind": str,
                    "model": str,
                    "input_tokens": int,
                    "output_tokens": int,
                    "usd": float,
                },
            )
        self._add_columns("sessions", _ADDED_SESSION_COLUMNS)
        self._add_columns("costs", _ADDED_COST_COLUMNS)

    def _add_columns(self, table: str, columns: dict[str, type]) -> None:
        existing = set(self.db[table].columns_dict)
        for name, col_type in columns.items():
            if name not in existing:
                try:
                    self.db[table].add_column(name, col_type)
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    # ------------------------------------------------------------------ sessions

    def new_session(self, *, benchmark: str, proposer: str, teacher: str, spec_hash: str) -> str:
        sid = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.db["sessions"].insert(
            {
                "id": sid,
                "started_at": time.time(),
                "ended_at": None,
                "status": "running",
                "benchmark": benchmark,
                "proposer": proposer,
                "teacher": teacher,
                "spec_hash_before": spec_hash,
                "spec_hash_after": None,
                "gate_score_before": None,
                "gate_score_after": None,
                "cost_usd": 0.0,
                "note": "",
                "test_score_before": None,
                "test_score_after": None,
                "test_tasks": None,
            }
        )
        return sid

    def update_session(self, sid: str, **fields: Any) -> None:
        self.db["sessions"].update(sid, fields)

    def session(self, sid: str) -> SessionRow:
        rows = list(
            self.db.query("select * from sessions where id like ? order by id", [sid + "%"])
        )
        if not rows:
            raise KeyError(f"no session {sid!r} (see `homespun learning history`)")
        if len(rows) > 1:
            raise KeyError(f"session id {sid!r} is ambiguous")
        return SessionRow(**rows[0])

    def sessions(self, limit: int = 20) -> list[SessionRow]:
        return [
            SessionRow(**r)
            for r in self.db.query(
                "select * from sessions order by started_at desc limit ?", [limit]
            )
        ]

    # ------------------------------------------------------------------ proposals

    def add_proposals(self, sid: str, proposals: list[Proposal], tiers: list[str]) -> None:
        for i, (p, tier) in enumerate(zip(proposals, tiers, strict=True)):
            self.db["proposals"].upsert(
                {
                    "id": p.id,
                    "session_id": sid,
                    "idx": i,
                    "target": p.target_cluster,
                    "tier": tier,
                    "proposer": p.proposer,
                    "ops": json.dumps([o.model_dump() for o in p.ops]),
                    "rationale": p.rationale,
                    "status": "planned",
                    "reason": "",
                    "commit_sha": None,
                    "created_at": time.time(),
                    "decided_at": None,
                },
                pk="id",
            )

    def set_proposal(self, pid: str, **fields: Any) -> None:
        if fields.get("status") in TERMINAL:
            fields.setdefault("decided_at", time.time())
        self.db["proposals"].update(pid, fields)

    def proposal(self, pid: str) -> dict[str, Any]:
        rows = list(self.db.query("select * from proposals where id like ?", [pid + "%"]))
        if not rows:
            raise KeyError(f"no proposal {pid!r} (see `homespun learning review`)")
        if len(rows) > 1:
            raise KeyError(f"proposal id {pid!r} is ambiguous")
        return rows[0]

    def proposals(self, sid: str | None = None, status: str | None = None) -> list[dict]:
        where, args = [], []
        if sid:
            where.append("session_id = ?")
            args.append(sid)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = ("where " + " and ".join(where)) if where else ""
        return list(
            self.db.query(f"select * from proposals {clause} order by created_at, idx", args)
        )

    def history_entries(self, limit: int = 50) -> list[dict]:
        """Decided proposals, newest first, with their per-cluster deltas."""
        rows = list(
            self.db.query(
                "select * from proposals where status in ('accepted','rejected','review_rejected',"
                "'error') order by decided_at desc limit ?",
                [limit],
            )
        )
        for r in rows:
            r["deltas"] = {
                s["cluster"]: round((s["after"] or 0) - (s["before"] or 0), 4)
                for s in self.db.query(
                    "select * from cluster_scores where proposal_id = ?", [r["id"]]
                )
            }
        return rows

    def set_cluster_scores(
        self, sid: str, pid: str, before: dict[str, float | None], after: dict[str, float | None]
    ) -> None:
        self.db["cluster_scores"].upsert_all(
            [
                {
                    "session_id": sid,
                    "proposal_id": pid,
                    "cluster": c,
                    "before": before[c],
                    "after": after.get(c),
                }
                for c in before
            ],
            pk=("proposal_id", "cluster"),
        )

    def cluster_scores(self, pid: str) -> list[dict]:
        return list(self.db.query("select * from cluster_scores where proposal_id = ?", [pid]))

    # ------------------------------------------------------------------ costs

    def add_cost(
        self,
        sid: str,
        *,
        kind: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        usd: float,
        calls: int = 0,
        seconds: float = 0.0,
    ) -> None:
        self.db["costs"].insert(
            {
                "session_id": sid,
                "at": time.time(),
                "kind": kind,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "usd": usd,
                "calls": calls,
                "seconds": seconds,
            }
        )
        total = self.session_cost(sid)
        self.db["sessions"].update(sid, {"cost_usd": total})

    def session_cost(self, sid: str) -> float:
        row = next(
            iter(
                self.db.query(
                    "select coalesce(sum(usd), 0) as s from costs where session_id = ?", [sid]
                )
            )
        )
        return float(row["s"])

    def teacher_usage(self, sid: str) -> tuple[int, float]:
        """(teacher calls, their seconds) recorded for a session."""
        row = next(
            iter(
                self.db.query(
                    "select coalesce(sum(calls), 0) as n, coalesce(sum(seconds), 0) as s "
                    "from costs where session_id = ?",
                    [sid],
                )
            )
        )
        return int(row["n"]), float(row["s"])

    def total_cost(self) -> float:
        row = next(iter(self.db.query("select coalesce(sum(usd), 0) as s from costs")))
        return float(row["s"])
