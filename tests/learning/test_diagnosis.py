"""Diagnosis: rule-based clusters from the traces, and a teacher held to its budget and to
the data (scripted teachers; the HTTP path is in test_teacher.py)."""

from __future__ import annotations

import json
import random

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from homespun.engines.cost import BudgetExceeded, CostMeter, Usage
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.learning import diagnosis as diagnosis_mod
from homespun.learning.diagnosis import (
    FailedRun,
    failure_signature,
    rule_based_diagnosis,
    teacher_diagnosis,
)
from homespun.learning.tasks import Grade, Task
from homespun.stores.traces import StopReason, ToolCallRecord, Trace

FAIL = Grade(success=False, score=0.0, reason="grader says no")


def _trace(
    query: str = "q",
    *,
    status: str = "ok",
    error: str | None = None,
    answer: str | None = "answer",
    calls: list[ToolCallRecord] | None = None,
    sensitive: bool = False,
) -> Trace:
    return Trace(
        id="tr-" + query[:8],
        created_at=0.0,
        query=query,
        spec_hash="h",
        thread_id="th",
        loop="react",
        model="m",
        backend="embedded",
        status=status,
        final_answer=answer,
        error=error,
        tool_calls=calls or [],
        sensitive=sensitive,
    )


def _run(
    task_id: str,
    category: str,
    query: str = "q",
    *,
    needs_tool: bool = False,
    grade: Grade = FAIL,
    **trace_kw,
) -> FailedRun:
    task = Task(
        id=task_id,
        query=query,
        category=category,
        metadata={"needs_tool": needs_tool} if needs_tool else {},
    )
    return FailedRun(task=task, trace=_trace(query, **trace_kw), grade=grade)


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (
            _run(
                "a",
                "x",
                status="error",
                error="turn limit (8 model calls) reached",
                calls=[ToolCallRecord("add", {}, error="not executed (turn limit)")],
            ),
            "turn_limit",
        ),
        (_run("a", "x", status="error", error="Connection refused", answer=None), "engine_error"),
        (
            _run(
                "a",
                "x",
                calls=[
                    ToolCallRecord(
                        "mul", {}, error="Error: unknown tool 'mul'. Available tools: add."
                    )
                ],
            ),
            "unknown_tool",
        ),
        (
            _run(
                "a",
                "x",
                error="model output was not valid for the tool-call format: reply "
                "calls unknown tool 'mul'",
            ),
            "unknown_tool",
        ),
        (
            _run(
                "a",
                "x",
                calls=[
                    ToolCallRecord(
                        "add",
                        {"a": "x"},
                        error="Error: ToolException: "
                        "1 validation error for add\na\n  Input should be "
                        "a valid number",
                    )
                ],
            ),
            "bad_arguments",
        ),
        (
            _run("a", "x", calls=[ToolCallRecord("add", {}, error="Field required: b")]),
            "bad_arguments",
        ),
        (
            _run(
                "a",
                "x",
                calls=[ToolCallRecord("read_file", {"path": "x"}, error="FileNotFoundError: x")],
            ),
            "tool_error",
        ),
        (_run("a", "x", needs_tool=True), "no_tool_call"),
        (
            _run("a", "x", needs_tool=True, calls=[ToolCallRecord("add", {}, result="3")]),
            "wrong_answer",
        ),
        (_run("a", "x"), "wrong_answer"),
    ],
)
def test_failure_signature(run: FailedRun, expected: str):
    assert failure_signature(run.trace, run.grade, run.task) == expected


def test_no_tool_call_needs_the_task_to_say_it_needs_a_tool():
    run = _run("a", "x", needs_tool=True)
    assert failure_signature(run.trace, run.grade) == "wrong_answer"  # no task: no claim


@pytest.mark.parametrize(
    ("reason", "status", "error", "expected"),
    [
        # The typed reason decides, whatever the error text says (or does not say).
        (StopReason.TURN_LIMIT, "error", "8 model calls used", "turn_limit"),
        (StopReason.TURN_LIMIT, "error", None, "turn_limit"),
        (StopReason.ENGINE_ERROR, "error", "turn limit is not what happened", "engine_error"),
        (StopReason.TOOL_ERROR, "error", "tools.servers[1] could not be started", "engine_error"),
        (StopReason.NO_ANSWER, "error", None, "engine_error"),
        (StopReason.INTERNAL_ERROR, "error", "GraphRecursionError: ...", "engine_error"),
        (StopReason.CANCELLED, "running", None, "engine_error"),  # never finished
        # A call the model wrote so that it could not be read: a malformed call.
        (
            StopReason.UNPARSED_TOOL_CALL,
            "error",
            "the model wrote a tool call that could not be parsed: a call to 'add' is cut off",
            "bad_arguments",
        ),
        (
            StopReason.UNPARSED_TOOL_CALL,
            "error",
            "the model wrote a tool call that could not be parsed: reply calls unknown tool 'x'",
            "unknown_tool",
        ),
        # Runs that ended with an answer are judged by their tool calls and the grader.
        (StopReason.ANSWERED, "ok", None, "wrong_answer"),
        (StopReason.REPEAT_GUARD, "ok", None, "wrong_answer"),
        (StopReason.VERIFIER_FAILED, "ok", None, "wrong_answer"),
    ],
)
def test_failure_signature_reads_the_typed_stop_reason(reason, status, error, expected):
    run = _run(
        "a",
        "x",
        status=status,
        error=error,
        calls=[ToolCallRecord("add", {}, error="not executed (turn limit)")]
        if reason is StopReason.TURN_LIMIT
        else None,
    )
    run.trace.stop_reason = reason
    assert failure_signature(run.trace, run.grade, run.task) == expected


def test_traces_without_a_stop_reason_fall_back_to_status_and_error_text():
    old = _run(
        "a", "x", status="error", error="turn limit: 8 model calls used without a final answer"
    ).trace
    assert old.stop_reason is None
    assert failure_signature(old, FAIL) == "turn_limit"
    old.error = "Connection refused"
    assert failure_signature(old, FAIL) == "engine_error"


# --------------------------------------------------------------------------- rules


def _failures() -> list[FailedRun]:
    bad_args = ToolCallRecord(
        "memory_save", {"txt": "x"}, error="1 validation error: text Field required"
    )
    return [
        _run("arith-1", "arithmetic", "What is 37 * 41?"),
        _run("arith-2", "arithmetic", "What is 12 + 30?"),
        _run("mem-1", "memory", "Remember my locker code", calls=[bad_args]),
        _run("mem-2", "memory", "Remember the dentist", calls=[bad_args]),
        _run(
            "mem-3",
            "memory",
            "What did I save?",
            calls=[ToolCallRecord("memory_search", {"q": "x"}, error="database is locked")],
        ),
        _run("time-1", "time", "What day is it?", status="error", error="Connection refused"),
    ]


TOTALS = {"arithmetic": 4, "memory": 3, "time": 5, "files": 6}


def test_rule_based_diagnosis_one_cluster_per_failing_category():
    d = rule_based_diagnosis(_failures(), TOTALS)
    assert d.source == "rules"
    assert [c.id for c in d.clusters] == ["memory", "arithmetic", "time"]  # worst first
    memory, arithmetic, time = d.clusters
    assert (
        memory.student_failure_rate,
        arithmetic.student_failure_rate,
        time.student_failure_rate,
    ) == (1.0, 0.5, 0.2)
    assert (memory.signature, arithmetic.signature, time.signature) == (
        "bad_arguments",
        "wrong_answer",
        "engine_error",
    )
    assert memory.task_ids == ["mem-1", "mem-2", "mem-3"]
    assert memory.categories == ["memory"]
    assert all(c.teacher_success_rate is None for c in d.clusters)
    assert "memory" in memory.skill_gap and "arguments" in memory.skill_gap
    assert "tool_error x1" in memory.skill_gap  # the minority signature is not hidden
    assert "files" not in {c for cl in d.clusters for c in cl.categories}  # no failures


def test_rule_based_diagnosis_is_deterministic():
    runs = _failures()
    first = rule_based_diagnosis(runs, TOTALS)
    for seed in range(5):
        shuffled = runs[:]
        random.Random(seed).shuffle(shuffled)
        assert rule_based_diagnosis(shuffled, TOTALS) == first


def test_rule_based_diagnosis_of_nothing():
    d = rule_based_diagnosis([], TOTALS)
    assert d.clusters == [] and "no failing runs" in d.summary


# --------------------------------------------------------------------------- teacher


def _report(*clusters: dict, summary: str = "two clusters") -> AIMessage:
    return tool_call("report_diagnosis", {"clusters": list(clusters), "summary": summary})


MEMORY_CLUSTER = {
    "id": "memory-args",
    "name": "Wrong memory_save arguments",
    "categories": ["memory"],
    "task_ids": ["mem-1", "mem-2"],
    "skill_gap": "It passes 'txt' instead of 'text' to memory_save.",
}
ARITH_CLUSTER = {
    "id": "arith",
    "name": "Mental arithmetic",
    "categories": ["arithmetic"],
    "task_ids": ["arith-1", "arith-2"],
    "skill_gap": "It multiplies in its head instead of calling the calculator.",
}


def _free_meter(**kw) -> CostMeter:
    return CostMeter(
        session_cap_usd=kw.pop("session_cap_usd", 1.0),
        total_cap_usd=kw.pop("total_cap_usd", 10.0),
        model=kw.pop("model", "ollama:qwen2.5:14b"),
        **kw,
    )


async def test_teacher_clusters_with_rates_from_the_data_not_the_teacher():
    lying = {**MEMORY_CLUSTER, "student_failure_rate": 0.01, "teacher_success_rate": 1.0}
    weather = {"id": "weather", "name": "Weather", "categories": ["weather"], "skill_gap": "x"}
    mixed = {
        **ARITH_CLUSTER,
        "categories": ["arithmetic", "astrology"],
        "task_ids": ["arith-1", "mem-3", "nope-9"],
    }
    teacher = ScriptedChatModel(script=[_report(lying, mixed, weather)])
    d, md = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=_free_meter())
    assert d.source == "teacher"
    assert [c.id for c in d.clusters] == ["memory-args", "arith"]
    memory, arith = d.clusters
    assert memory.student_failure_rate == 1.0  # 3 failing of 3, not the teacher's 0.01
    assert memory.teacher_success_rate is None  # not measured: no re-run
    assert memory.signature == "bad_arguments"
    assert arith.categories == ["arithmetic"]  # 'astrology' dropped ...
    assert arith.task_ids == ["arith-1"]  # ... and tasks of other categories / unknown
    assert arith.student_failure_rate == 0.5
    # ... with notes the user can read
    assert "astrology" in md and "weather" in md and "nope-9" in md
    assert "| `memory-args` Wrong memory_save arguments | memory | 100% | not measured |" in md


async def test_teacher_sees_a_scrubbed_digest_and_never_a_sensitive_run():
    runs = _failures()
    runs[0] = _run(
        "arith-1",
        "arithmetic",
        "What is 37 * 41? Mail it to ann@example.com",
        answer="1500, sent to ann@example.com with key sk-proj-9aK2mQ7xLp4Rt8Vw1Yz3",
    )
    runs.append(_run("diary-1", "memory", "DIARY: I told my therapist about Bob", sensitive=True))
    teacher = ScriptedChatModel(
        script=[
            tool_call("show_trace", {"task_id": "diary-1"}),
            tool_call("show_trace", {"task_id": "arith-1"}),
            _report(MEMORY_CLUSTER),
        ]
    )
    d, md = await teacher_diagnosis(
        runs, TOTALS | {"memory": 4}, teacher=teacher, meter=_free_meter()
    )
    sent = json.dumps([str(m.content) for call in teacher.calls for m in call["messages"]])
    assert "37 * 41" in sent and "<EMAIL>" in sent and "<SECRET>" in sent
    assert "ann@example.com" not in sent and "sk-proj-" not in sent
    assert "DIARY" not in sent and "therapist" not in sent
    shown = [m for m in teacher.calls[1]["messages"] if isinstance(m, ToolMessage)]
    assert shown[0].content.startswith("Error: no failing run of task 'diary-1'")
    # the sensitive failure still counts: 4 failing memory runs of 4
    assert d.cluster("memory-args").student_failure_rate == 1.0
    assert "1 failing run(s) marked sensitive" in md


async def test_without_scrub_the_teacher_sees_the_raw_text():
    runs = [_run("arith-1", "arithmetic", "What is 37 * 41? Mail it to ann@example.com")]
    teacher = ScriptedChatModel(script=[_report(ARITH_CLUSTER)])
    _, md = await teacher_diagnosis(runs, TOTALS, teacher=teacher, meter=_free_meter(), scrub=False)
    assert "ann@example.com" in str(teacher.calls[0]["messages"][1].content)
    assert "NOT scrubbed" in md


async def test_tool_budget_is_enforced_then_only_the_report_is_offered():
    keep_looking = tool_call("show_trace", {"task_id": "mem-1"})
    teacher = ScriptedChatModel(script=[keep_looking] * 3 + [_report(MEMORY_CLUSTER)])
    d, md = await teacher_diagnosis(
        _failures(), TOTALS, teacher=teacher, meter=_free_meter(), max_tool_calls=3
    )
    assert d.source == "teacher"
    assert len(teacher.calls) == 4
    for call in teacher.calls[:3]:
        assert call["tools"] == [
            "show_trace",
            "list_categories",
            "search_traces",
            "report_diagnosis",
        ]
        assert call["tool_choice"] == "any"
    assert teacher.calls[3]["tools"] == ["report_diagnosis"]
    assert teacher.calls[3]["tool_choice"] == "report_diagnosis"
    results = [m for m in teacher.calls[3]["messages"] if isinstance(m, ToolMessage)]
    assert len(results) == 3 and all('"task_id": "mem-1"' in m.content for m in results)
    assert "3 tool call(s) of 3" in md


async def test_tool_calls_beyond_the_budget_in_one_reply_are_not_run():
    burst = AIMessage(
        content="",
        tool_calls=[
            {
                "name": "show_trace",
                "args": {"task_id": f"mem-{i}"},
                "id": f"c{i}",
                "type": "tool_call",
            }
            for i in (1, 2, 3)
        ],
    )
    teacher = ScriptedChatModel(script=[burst, _report(MEMORY_CLUSTER)])
    await teacher_diagnosis(
        _failures(), TOTALS, teacher=teacher, meter=_free_meter(), max_tool_calls=2
    )
    results = [m.content for m in teacher.calls[1]["messages"] if isinstance(m, ToolMessage)]
    assert [r.startswith("[") for r in results] == [True, True, False]
    assert results[2].startswith("Not run: the budget of 2 tool calls is spent")
    assert teacher.calls[1]["tool_choice"] == "report_diagnosis"


async def test_a_teacher_that_never_reports_is_cut_off_and_the_rules_take_over():
    teacher = ScriptedChatModel(script=[tool_call("show_trace", {"task_id": "mem-1"})] * 20)
    meter = _free_meter()
    d, md = await teacher_diagnosis(
        _failures(), TOTALS, teacher=teacher, meter=meter, max_tool_calls=3
    )
    assert len(teacher.calls) == 3 + diagnosis_mod.REPORT_ATTEMPTS  # then it stops asking
    assert meter.calls == len(teacher.calls)
    assert d == rule_based_diagnosis(_failures(), TOTALS)
    assert "# Diagnosis (rule-based)" in md and "no valid report_diagnosis call" in md


async def test_invalid_report_arguments_get_a_second_chance():
    bad = tool_call("report_diagnosis", {"clusters": [{"id": "x"}]})
    teacher = ScriptedChatModel(script=[bad, _report(MEMORY_CLUSTER)])
    d, _ = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=_free_meter())
    assert [c.id for c in d.clusters] == ["memory-args"]
    assert teacher.calls[1]["tool_choice"] == "report_diagnosis"
    err = [m for m in teacher.calls[1]["messages"] if isinstance(m, ToolMessage)][-1]
    assert "do not match the schema" in err.content


async def test_every_teacher_call_is_checked_and_recorded():
    # Each scripted reply reports 100k input tokens: $0.10 a call at haiku's $1/M.
    teacher = ScriptedChatModel(
        script=[tool_call("list_categories")] * 10,
        usage={"input_tokens": 100_000, "output_tokens": 0},
    )
    meter = CostMeter(session_cap_usd=0.25, total_cap_usd=10.0, model="claude-haiku-4-5")
    with pytest.raises(BudgetExceeded, match="session budget"):
        await teacher_diagnosis(
            _failures(), TOTALS, teacher=teacher, meter=meter, max_tool_calls=10
        )
    assert meter.calls == len(teacher.calls) == 3
    assert meter.spent_usd == pytest.approx(0.3)


async def test_rerun_measures_teacher_success_per_cluster_within_the_budget():
    runs = _failures()
    runs[0] = _run("arith-1", "arithmetic", "What is 37 * 41? Reply to ann@example.com")
    seen: list[list[Task]] = []
    meter = CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="claude-haiku-4-5")

    async def rerun(tasks: list[Task]) -> dict[str, bool]:
        seen.append(tasks)
        for _ in tasks:
            meter.record(Usage(1000, 100))  # the teacher-as-agent's own calls
        return {"mem-1": True, "mem-2": True, "arith-1": True}  # arith-2 missing: a failure

    teacher = ScriptedChatModel(script=[_report(MEMORY_CLUSTER, ARITH_CLUSTER)])
    d, md = await teacher_diagnosis(
        runs, TOTALS, teacher=teacher, meter=meter, rerun=rerun, rerun_per_cluster=2
    )
    assert [t.id for t in seen[0]] == ["mem-1", "mem-2", "arith-1", "arith-2"]
    assert seen[0][2].query == "What is 37 * 41? Reply to <EMAIL>"  # scrubbed before it leaves
    assert d.cluster("memory-args").teacher_success_rate == 1.0
    assert d.cluster("arith").teacher_success_rate == 0.5
    assert meter.calls == 1 + 4
    assert "re-ran 4 task(s)" in md and "recorded no teacher call" not in md


async def test_a_rerun_that_records_no_cost_is_flagged():
    async def rerun(tasks: list[Task]) -> dict[str, bool]:
        return {}

    teacher = ScriptedChatModel(script=[_report(MEMORY_CLUSTER)])
    meter = CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="claude-haiku-4-5")
    d, md = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter, rerun=rerun)
    assert d.cluster("memory-args").teacher_success_rate == 0.0
    assert "recorded no teacher call on the cost meter" in md


async def test_only_sensitive_failures_means_no_teacher_call():
    runs = [_run("diary-1", "memory", "DIARY", sensitive=True)]
    teacher = ScriptedChatModel(script=[])
    d, md = await teacher_diagnosis(runs, TOTALS, teacher=teacher, meter=_free_meter())
    assert teacher.calls == []
    assert d.source == "rules" and d.clusters[0].categories == ["memory"]
    assert "the teacher was not called" in md


async def test_search_and_categories_tools_answer_from_the_scrubbed_runs():
    runs = _failures()
    runs[1] = _run("arith-2", "arithmetic", "Split the bill with zoe@example.com")
    teacher = ScriptedChatModel(
        script=[
            tool_call("search_traces", {"text": "bill"}),
            tool_call("list_categories"),
            _report(ARITH_CLUSTER),
        ]
    )
    await teacher_diagnosis(runs, TOTALS, teacher=teacher, meter=_free_meter())
    results = [m.content for m in teacher.calls[2]["messages"] if isinstance(m, ToolMessage)]
    found = json.loads(results[0])
    assert found["matches"] == 1 and found["runs"][0]["task_id"] == "arith-2"
    assert "zoe@" not in results[0]
    table = json.loads(results[1])
    assert table["memory"]["tasks"] == 3 and table["memory"]["failing_runs"] == 3
    assert table["files"] == {"tasks": 6, "failing_runs": 0, "signatures_of_shown_runs": {}}


async def test_a_report_written_as_json_text_is_accepted():
    # Local teachers that ignore tool choice may answer with the report as text.
    text = (
        "Here is my diagnosis:\n```json\n"
        + json.dumps({"clusters": [MEMORY_CLUSTER], "summary": "one"})
        + "\n```"
    )
    teacher = ScriptedChatModel(script=[text])
    d, _ = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=_free_meter())
    assert d.source == "teacher" and [c.id for c in d.clusters] == ["memory-args"]


async def test_a_chatty_teacher_is_nudged_then_forced_to_report():
    teacher = ScriptedChatModel(
        script=["Let me think about these failures.", _report(ARITH_CLUSTER)]
    )
    d, _ = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=_free_meter())
    assert [c.id for c in d.clusters] == ["arith"]
    assert teacher.calls[1]["tool_choice"] == "report_diagnosis"
    assert "Call report_diagnosis now" in teacher.calls[1]["messages"][-1].content
