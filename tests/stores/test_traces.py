"""The trace store: rows exist from the start of a run, feedback, id prefixes."""

from __future__ import annotations

import pytest

from homespun.stores.traces import ToolCallRecord, TraceStore, parse_feedback


def test_a_started_run_is_visible_before_it_finishes(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    t = store.start(query="q", spec_hash="h", thread_id="th", loop="react", model="m",
                    backend="embedded")
    assert store.get(t.id).status == "running"  # a crash now still leaves a row
    t.status, t.final_answer = "ok", "a"
    t.tool_calls = [ToolCallRecord(name="calculator", arguments={"expression": "1+1"},
                                   result="2", server="core", latency_s=0.01)]
    store.finish(t)
    back = store.get(t.id[:6])
    assert back.status == "ok" and back.tool_calls[0].arguments == {"expression": "1+1"}
    assert store.list()[0].tool_calls[0].result == "2"


def test_feedback_values_and_errors(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    t = store.start(query="q", spec_hash="h", thread_id="th", loop="react", model="m",
                    backend="embedded")
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
