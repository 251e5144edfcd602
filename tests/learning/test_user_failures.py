"""Which of the user's own conversations a diagnosis reads: rated down or errored, from the
user's surfaces, not sensitive, since the last session, scrubbed, bounded."""

from __future__ import annotations

import time

from homespun.engines.testing import ScriptedChatModel
from homespun.learning.diagnosis import (
    render_trace_sources,
    rule_based_diagnosis,
    teacher_diagnosis,
)
from homespun.learning.user_failures import last_session_start, user_failures
from homespun.spec import Spec
from homespun.spec.models import ToolServerSpec
from homespun.stores.learning import LearningStore
from homespun.stores.traces import StopReason, ToolCallRecord, TraceStore
from tests.learning.test_diagnosis import ARITH_CLUSTER, _free_meter, _report, _run

PRIVATE = "Mail alice.smith@example.org or call +44 20 7946 0958 about the lease"


def seed(
    store: TraceStore,
    query: str,
    *,
    source: str = "cli",
    feedback: float | None = 0.0,
    status: str = "ok",
    sensitive: bool = False,
    server: str | None = None,
    at: float | None = None,
) -> str:
    """A finished trace as graphs.runner writes one; returns its id."""
    trace = store.start(
        query=query, spec_hash="h", thread_id="t", loop="react", model="m", backend="embedded",
        source=source,
    )  # fmt: skip
    trace.status = status  # type: ignore[assignment]
    trace.stop_reason = StopReason.ENGINE_ERROR if status == "error" else StopReason.ANSWERED
    trace.error = "EngineError: connection refused" if status == "error" else None
    trace.final_answer = None if status == "error" else "Done."
    trace.feedback = feedback
    trace.sensitive = sensitive
    if server:
        trace.tool_calls = [ToolCallRecord(name="read", arguments={}, result="x", server=server)]
    if at is not None:
        trace.created_at = at
    store.finish(trace)
    return trace.id


def spec_with_sensitive_server() -> Spec:
    spec = Spec()
    vault = ToolServerSpec(name="vault", kind="builtin", builtin="notes", sensitive=True)
    spec.tools.servers.append(vault)
    return spec


def test_only_the_users_own_failing_conversations_are_read(settings):
    store = TraceStore(settings.traces_db)
    down = seed(store, PRIVATE, feedback=0.0)
    meh = seed(store, "what is on today", source="telegram", feedback=0.5)
    crashed = seed(store, "ping", source="chat", feedback=None, status="error")
    # none of these is the user's failing conversation:
    good = seed(store, "what time is it", feedback=1.0)
    unrated = seed(store, "hello", feedback=None)
    evaluated = seed(store, "Q:math:math-1-gold", source="eval:toy", feedback=0.0)
    baseline = seed(store, "Q:tone:tone-1", source="baseline:naive:toy", status="error")
    demo = seed(store, "What is 37 * 41?", source="quickstart", status="error")
    marked = seed(store, "my diagnosis results", feedback=0.0, sensitive=True)
    # used a server the spec marks sensitive now, though the trace was not marked when it ran
    vault = seed(store, "read my tax file", feedback=0.0, server="vault")

    got = user_failures(settings.traces_db, spec_with_sensitive_server())
    assert [u.trace.id for u in got] == [crashed, meh, down]  # newest first
    assert {u.trace.id for u in got}.isdisjoint(
        {good, unrated, evaluated, baseline, demo, marked, vault}
    )
    reasons = {u.trace.id: u.reason for u in got}
    assert reasons[down] == "rated 0 by the user (below 0.7)"
    assert reasons[meh] == "rated 0.5 by the user (below 0.7)"
    assert reasons[crashed] == "ended in error (engine_error)"
    # scrubbed before anyone sees it; the id is the real one
    (mine,) = [u for u in got if u.trace.id == down]
    assert mine.trace.query == "Mail <EMAIL> or call <PHONE> about the lease"
    assert store.get(down).query == PRIVATE  # the stored trace is untouched

    # min_feedback moves the line between "rated down" and "good"
    strict = spec_with_sensitive_server()
    strict.learning.privacy.min_feedback = 0.4
    assert [u.trace.id for u in user_failures(settings.traces_db, strict)] == [crashed, down]


def test_the_newest_few_since_the_last_session(settings):
    store = TraceStore(settings.traces_db)
    learning = LearningStore(settings.learning_db)
    now = time.time()
    old = seed(store, "old question", at=now - 100)
    first = learning.new_session(benchmark="toy", proposer="random", teacher="", spec_hash="h")
    learning.update_session(first, started_at=now - 50, status="done")
    new = [seed(store, f"new question {i}", at=now - 40 + i) for i in range(5)]
    current = learning.new_session(benchmark="toy", proposer="random", teacher="", spec_hash="h")

    since = last_session_start(learning, current=current)
    assert since == now - 50
    got = user_failures(settings.traces_db, Spec(), since=since, limit=3)
    assert [u.trace.id for u in got] == new[::-1][:3]  # capped at the newest 3
    assert old not in [u.trace.id for u in user_failures(settings.traces_db, Spec(), since=since)]
    # the first session reads them all
    assert old in [u.trace.id for u in user_failures(settings.traces_db, Spec(), since=None)]
    # a session that found nothing to fix diagnosed nothing: its window is still unread
    learning.update_session(first, status="nothing_to_fix")
    assert last_session_start(learning, current=current) is None


def test_rules_attach_a_conversation_to_the_cluster_with_its_failure(settings):
    store = TraceStore(settings.traces_db)
    down = seed(store, PRIVATE, feedback=0.0)  # answered, rated down: a wrong answer
    crashed = seed(store, "ping", status="error")  # engine error: no cluster has it
    mine = user_failures(settings.traces_db, Spec())
    failures = [_run("m1", "math"), _run("m2", "math"), _run("r1", "recall", status="error")]
    diagnosis = rule_based_diagnosis(failures, {"math": 4, "recall": 4}, mine)

    math, recall = diagnosis.cluster("math"), diagnosis.cluster("recall")
    assert math.signature == "wrong_answer" and down in math.trace_ids
    assert "tr-q" in math.trace_ids  # the benchmark runs it came from
    assert math.student_failure_rate == 0.5  # unchanged by the user's conversation
    assert "1 of the user's own conversation(s)" in math.skill_gap
    assert crashed in recall.trace_ids  # engine_error, like the recall run

    text = render_trace_sources(diagnosis, mine)
    assert f"| `{down}` |" in text and "| math | Mail <EMAIL> or call <PHONE>" in text
    assert "alice" not in text and "7946" not in text
    assert f"your conversations: `{down}`" in text


async def test_the_teacher_sees_them_scrubbed_and_may_cite_only_those_it_was_shown(settings):
    store = TraceStore(settings.traces_db)
    down = seed(store, PRIVATE, feedback=0.0)
    mine = user_failures(settings.traces_db, Spec())
    cites = {**ARITH_CLUSTER, "trace_ids": [down, "0badc0ffee00"]}
    again = {**ARITH_CLUSTER, "id": "arith-again", "trace_ids": [down]}
    teacher = ScriptedChatModel(script=[_report(cites, again)])
    failures = [_run("arith-1", "arithmetic", status="error"), _run("arith-2", "arithmetic")]
    diagnosis, md = await teacher_diagnosis(
        failures, {"arithmetic": 4}, teacher=teacher, meter=_free_meter(), user_failures=mine
    )
    digest = str(teacher.calls[0]["messages"][-1].content)
    assert down in digest and "Mail <EMAIL> or call <PHONE>" in digest
    assert "alice" not in digest and "7946" not in digest
    first, second = diagnosis.clusters
    assert down in first.trace_ids and "0badc0ffee00" not in first.trace_ids
    assert down not in second.trace_ids  # one conversation, one cluster
    assert "0badc0ffee00" in md and "already cited" in md
    assert first.student_failure_rate == 0.5  # 2 failing of 4 tasks: the user's run adds none
    assert "The user's own failing conversations: 1" in md
