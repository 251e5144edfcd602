"""Every run of the assistant leaves a trace in HOMESPUN_HOME/traces.db.

A trace row is written *before* the run starts (status 'running') and completed after, so a
run that crashes the process is still visible, and a run that fails is recorded as failed
rather than missing. A database that cannot be opened or written raises: evaluations must
never silently lose their failures.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from homespun.stores.sqlite import open_database

TraceStatus = Literal["running", "ok", "error"]


class StopReason(StrEnum):
    """Why a run ended: the closed set every trace's `stop_reason` is one of.

    Set by graphs.runner (and the assistant graph's nodes it reads back). The first three end
    with an answer (status 'ok'); the rest without one (status 'error', except `cancelled`,
    whose row keeps the status it had when the run was interrupted).
    """

    ANSWERED = "answered"
    """The model gave a final answer."""
    REPEAT_GUARD = "repeat_guard"
    """The model repeated a tool call it already had the result of; the repeat guard did not
    run it and asked, without tools, for the final answer it gave."""
    VERIFIER_FAILED = "verifier_failed"
    """The final answer still fails a verifier, whose retries are spent."""
    TURN_LIMIT = "turn_limit"
    """agent.max_turns model calls were used without a final answer."""
    UNPARSED_TOOL_CALL = "unparsed_tool_call"
    """The model wrote what looks like a tool call but it could not be read (cut off by the
    token cap, invalid JSON naming a tool, a call to a tool it was not offered); it is never
    shown as the answer."""
    ENGINE_ERROR = "engine_error"
    """The engine could not be built, or a model call raised (engine down, bad reply)."""
    TOOL_ERROR = "tool_error"
    """The MCP servers could not be started, or the spec names tools they do not offer."""
    NO_ANSWER = "no_answer"
    """The graph ended without an error and without a final answer."""
    INTERNAL_ERROR = "internal_error"
    """Anything else raised (thread store, graph recursion limit)."""
    CANCELLED = "cancelled"
    """The run was cancelled or interrupted (task cancelled, Ctrl-C) before it ended."""


@dataclass
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    result: str | None = None
    error: str | None = None
    server: str | None = None
    latency_s: float | None = None


@dataclass
class Trace:
    id: str
    created_at: float
    query: str
    spec_hash: str
    thread_id: str
    loop: str
    model: str
    backend: str
    status: TraceStatus = "running"
    final_answer: str | None = None
    error: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    feedback: float | None = None
    sensitive: bool = False
    source: str = "cli"
    energy_j: float | None = None
    """Joules measured over the run; None = not measured (no counter, or overlapping runs)."""
    energy_source: str | None = None
    """The counter energy_j came from: 'nvidia', 'amd' or 'rapl'; None when not measured."""
    cost_usd: float | None = None
    """Dollars: list price x tokens (cloud) or energy x electricity price (local); None =
    not measured."""
    tokens_per_s: float | None = None
    """Completion tokens per second of model time; None when the engine reported no tokens."""
    stop_reason: StopReason | None = None
    """Why the run ended; None while it runs, and on traces written before this field."""


# Added after the first release (telemetry, then stop_reason): nullable, and added to
# existing databases on open.
_ADDED_COLUMNS: dict[str, type] = {
    "energy_j": float,
    "energy_source": str,
    "cost_usd": float,
    "tokens_per_s": float,
    "stop_reason": str,
}


_TOOL_CALL_COLUMNS = (
    "trace_id", "idx", "name", "server", "arguments", "result", "error", "latency_s",
)  # fmt: skip


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class TraceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = open_database(self.path)
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        if "traces" not in self.db.table_names():
            self.db["traces"].create(
                {
                    "id": str,
                    "created_at": float,
                    "query": str,
                    "spec_hash": str,
                    "thread_id": str,
                    "loop": str,
                    "model": str,
                    "backend": str,
                    "status": str,
                    "final_answer": str,
                    "error": str,
                    "messages": str,
                    "latency_s": float,
                    "prompt_tokens": int,
                    "completion_tokens": int,
                    "model_calls": int,
                    "feedback": float,
                    "sensitive": int,
                    "source": str,
                },
                pk="id",
            )
            self.db["traces"].create_index(["created_at"])
            self.db["traces"].create_index(["spec_hash"])
        if "tool_calls" not in self.db.table_names():
            self.db["tool_calls"].create(
                {
                    "trace_id": str,
                    "idx": int,
                    "name": str,
                    "server": str,
                    "arguments": str,
                    "result": str,
                    "error": str,
                    "latency_s": float,
                },
                pk=("trace_id", "idx"),
                foreign_keys=[("trace_id", "traces", "id")],
            )
        existing = set(self.db["traces"].columns_dict)
        for name, col_type in _ADDED_COLUMNS.items():
            if name not in existing:
                try:
                    self.db["traces"].add_column(name, col_type)
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    # ------------------------------------------------------------------ writing

    def start(
        self,
        *,
        query: str,
        spec_hash: str,
        thread_id: str,
        loop: str,
        model: str,
        backend: str,
        source: str = "cli",
    ) -> Trace:
        trace = Trace(
            id=uuid.uuid4().hex[:12],
            created_at=time.time(),
            query=query,
            spec_hash=spec_hash,
            thread_id=thread_id,
            loop=loop,
            model=model,
            backend=backend,
            source=source,
        )
        row = self._row(trace)
        columns = ", ".join(row)
        with self.db.conn:  # one commit; plain SQL, as sqlite-utils' insert costs more
            self.db.conn.execute(
                f"insert into traces ({columns}) values ({_marks(len(row))})", list(row.values())
            )
        return trace

    def finish(self, trace: Trace) -> None:
        row = self._row(trace)
        columns = ", ".join(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != "id")
        with self.db.conn:  # the row and its tool calls in one commit
            self.db.conn.execute(
                f"insert into traces ({columns}) values ({_marks(len(row))}) "
                f"on conflict(id) do update set {updates}",
                list(row.values()),
            )
            self.db.conn.execute("delete from tool_calls where trace_id = ?", [trace.id])
            self.db.conn.executemany(
                f"insert into tool_calls ({', '.join(_TOOL_CALL_COLUMNS)}) "
                f"values ({_marks(len(_TOOL_CALL_COLUMNS))})",
                [
                    (
                        trace.id,
                        i,
                        c.name,
                        c.server,
                        json.dumps(c.arguments, ensure_ascii=False),
                        c.result,
                        c.error,
                        c.latency_s,
                    )
                    for i, c in enumerate(trace.tool_calls)
                ],
            )

    def set_feedback(self, trace_id: str, score: float) -> None:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"feedback must be between 0 and 1, got {score}")
        trace_id = self.resolve_id(trace_id)
        self.db["traces"].update(trace_id, {"feedback": score})

    @staticmethod
    def _row(trace: Trace) -> dict[str, Any]:
        return {
            "id": trace.id,
            "created_at": trace.created_at,
            "query": trace.query,
            "spec_hash": trace.spec_hash,
            "thread_id": trace.thread_id,
            "loop": trace.loop,
            "model": trace.model,
            "backend": trace.backend,
            "status": trace.status,
            "final_answer": trace.final_answer,
            "error": trace.error,
            "messages": json.dumps(trace.messages, ensure_ascii=False, default=str),
            "latency_s": trace.latency_s,
            "prompt_tokens": trace.prompt_tokens,
            "completion_tokens": trace.completion_tokens,
            "model_calls": trace.model_calls,
            "feedback": trace.feedback,
            "sensitive": int(trace.sensitive),
            "source": trace.source,
            "energy_j": trace.energy_j,
            "energy_source": trace.energy_source,
            "cost_usd": trace.cost_usd,
            "tokens_per_s": trace.tokens_per_s,
            "stop_reason": None if trace.stop_reason is None else str(trace.stop_reason),
        }

    # ------------------------------------------------------------------ reading

    def resolve_id(self, prefix: str) -> str:
        """Accept a unique id prefix, like git does."""
        rows = list(self.db.query("select id from traces where id like ? limit 2", [prefix + "%"]))
        if not rows:
            raise KeyError(f"no trace with id {prefix!r} (see `homespun traces list`)")
        if len(rows) > 1:
            raise KeyError(f"trace id prefix {prefix!r} is ambiguous; give more characters")
        return rows[0]["id"]

    def get(self, trace_id: str) -> Trace:
        trace_id = self.resolve_id(trace_id)
        row = self.db["traces"].get(trace_id)
        return self._trace(row, self._calls(trace_id))

    def _calls(self, trace_id: str) -> list[ToolCallRecord]:
        return [
            ToolCallRecord(
                name=r["name"],
                arguments=json.loads(r["arguments"] or "{}"),
                result=r["result"],
                error=r["error"],
                server=r["server"],
                latency_s=r["latency_s"],
            )
            for r in self.db.query(
                "select * from tool_calls where trace_id = ? order by idx", [trace_id]
            )
        ]

    def list(self, limit: int = 20, status: str | None = None) -> list[Trace]:
        where, args = ("where status = ?", [status]) if status else ("", [])
        rows = self.db.query(
            f"select * from traces {where} order by created_at desc limit ?", [*args, limit]
        )
        return [self._trace(r, self._calls(r["id"])) for r in rows]

    def count(self) -> int:
        return self.db["traces"].count

    @staticmethod
    def _trace(row: dict[str, Any], calls: list[ToolCallRecord] | None) -> Trace:
        return Trace(
            id=row["id"],
            created_at=row["created_at"],
            query=row["query"],
            spec_hash=row["spec_hash"],
            thread_id=row["thread_id"],
            loop=row["loop"],
            model=row["model"],
            backend=row["backend"],
            status=row["status"],
            final_answer=row["final_answer"],
            error=row["error"],
            messages=json.loads(row["messages"] or "[]"),
            tool_calls=calls or [],
            latency_s=row["latency_s"],
            prompt_tokens=row["prompt_tokens"] or 0,
            completion_tokens=row["completion_tokens"] or 0,
            model_calls=row["model_calls"] or 0,
            feedback=row["feedback"],
            sensitive=bool(row["sensitive"]),
            source=row["source"] or "",
            energy_j=row.get("energy_j"),
            energy_source=row.get("energy_source"),
            cost_usd=row.get("cost_usd"),
            tokens_per_s=row.get("tokens_per_s"),
            stop_reason=StopReason(row["stop_reason"]) if row.get("stop_reason") else None,
        )


def parse_feedback(value: str) -> float:
    """'up' -> 1.0, 'down' -> 0.0, or a number in [0, 1]."""
    lowered = value.strip().lower()
    if lowered in ("up", "+", "good", "yes"):
        return 1.0
    if lowered in ("down", "-", "bad", "no"):
        return 0.0
    try:
        score = float(lowered)
    except ValueError:
        raise ValueError(f"feedback must be 'up', 'down' or a number 0..1, got {value!r}") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"feedback must be between 0 and 1, got {score}")
    return score
