"""The trace store: rows exist from the start of a run, feedback, id prefixes, stop
reasons, and databases from before the newer columns."""

from __future__ import annotations

import sqlite3

import pytest

from homespun.stores.traces import StopReason, ToolCallRecord, TraceStore, parse_feedback


def test_a_started_run_is_visible_before_it_finishes(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    t = store.start(
        query="q", spec_hash="h", thread_id="th", loop="react", model="m", backend="embedded"
    )
    assert store.get(t.id).status == "running"  # a crash now still leaves a row
    t.status, t.final_answer = "ok", "a"
    t.tool_calls = [
        ToolCallRecord(
            name="calculator",
            arguments={"expression": "1+1"},
            result="2",
            server="core",
            latency_s=0.01,
        )
    ]
    store.finish(t)
    back = store.get(t.id[:6])
    assert back.status == "ok" and back.tool_calls[0].arguments == {"expression": "1+1"}
    assert store.list()[0].tool_calls[0].result == "2"


def test_feedback_values_and_errors(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    t = store.start(
        query="q", spec_hash="h", thread_id="th", loop="react", model="m", backend="embedded"
    )
    store.set_feedback(t.id, parse_feedback("up"))
    assert store.get(t.id).feedback == 1.0
    store.set_feedback(t.id, parse_feedback("0.25"))
    assert store.get(t.id).feedback == 0.25
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_feedback("3")
    with pytest.raises(ValueError, match="'up', 'down'"):
        parse_feedback("meh")
    with pytest.raises(KeyError, match="no trace"):
        store.set_feedback("zzzz", 1.0)


def test_a_corrupt_database_is_an_error_not_an_empty_list(tmp_path):
    path = tmp_path / "traces.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(Exception, match="not a database|malformed|file is not"):
        TraceStore(path)


def test_stop_reason_is_stored_and_read_back_typed(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    t = store.start(
        query="q", spec_hash="h", thread_id="th", loop="react", model="m", backend="embedded"
    )
    assert store.get(t.id).stop_reason is None  # running: no reason yet
    t.status, t.error, t.stop_reason = "error", "turn limit: 3", StopReason.TURN_LIMIT
    store.finish(t)
    back = store.get(t.id)
    assert back.stop_reason is StopReason.TURN_LIMIT
    assert store.list()[0].stop_reason == "turn_limit"  # a StrEnum: compares as its text


def test_an_old_database_gains_the_new_columns_on_open(tmp_path):
    """A traces.db from before telemetry and stop_reason: opened, migrated, old rows kept."""
    path = tmp_path / "traces.db"
    old_columns = (
        "id text primary key, created_at float, query text, spec_hash text, "
        "thread_id text, loop text, model text, backend text, status text, "
        "final_answer text, error text, messages text, latency_s float, "
        "prompt_tokens integer, completion_tokens integer, model_calls integer, "
        "feedback float, sensitive integer, source text"
    )
    with sqlite3.connect(path) as conn:
        conn.execute(f"create table traces ({old_columns})")
        conn.execute(
            "insert into traces (id, created_at, query, spec_hash, thread_id, loop, "
            "model, backend, status, error, messages, sensitive, source) values "
            "('old1', 1.0, 'q', 'h', 'th', 'react', 'm', 'embedded', 'error', "
            "'turn limit: 8 model calls used without a final answer', '[]', 0, 'cli')"
        )
    conn.close()

    store = TraceStore(path)
    columns = set(store.db["traces"].columns_dict)
    assert {"stop_reason", "energy_j", "cost_usd", "tokens_per_s"} <= columns
    old = store.get("old1")
    assert old.status == "error" and old.stop_reason is None and old.energy_j is None

    t = store.start(
        query="q2", spec_hash="h", thread_id="th", loop="react", model="m", backend="embedded"
    )
    t.status, t.final_answer, t.stop_reason = "ok", "a", StopReason.ANSWERED
    store.finish(t)
    assert TraceStore(path).get(t.id).stop_reason is StopReason.ANSWERED  # reopening is a no-op
