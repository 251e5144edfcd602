"""The personal benchmark: mined from the user's well-rated traces, gold from the teacher,
versioned, graded on must_contain in a copy of the user's world."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from homespun.engines.cost import BudgetExceeded, CostMeter
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.runner import run_assistant
from homespun.learning.benchmarks.personal import (
    MIN_HIGH_FEEDBACK,
    MIN_TRACES,
    ColdStart,
    NoPersonalBenchmark,
    PersonalBenchmark,
    PersonalBenchmarkError,
    contains_phrase,
    latest_personal,
    load_personal,
    normalise_query,
    readiness,
    refresh_personal_benchmark,
    task_id_for,
)
from homespun.learning.tasks import Benchmark
from homespun.spec import Spec
from homespun.stores.memory import MemoryStore
from homespun.stores.traces import Trace, TraceStore

_clock = iter(range(1_000_000))


def add_trace(
    store: TraceStore,
    query: str,
    *,
    answer: str = "student answer",
    feedback: float | None = None,
    status: str = "ok",
    sensitive: bool = False,
    source: str = "cli",
) -> Trace:
    t = store.start(
        query=query,
        spec_hash="h",
        thread_id="th",
        loop="react",
        model="m",
        backend="embedded",
        source=source,
    )
    t.status, t.final_answer, t.sensitive = status, answer, sensitive
    t.error = "boom" if status == "error" else None
    t.created_at = 1_700_000_000.0 + next(_clock)  # strictly increasing: newest is last added
    store.finish(t)
    if feedback is not None:
        store.set_feedback(t.id, feedback)
    return t


def fill(store: TraceStore, n: int, *, high: int, prefix: str = "question") -> None:
    for i in range(n):
        add_trace(store, f"{prefix} number {i}?", feedback=0.9 if i < high else 0.2)


def meter(cap: float = 100.0) -> CostMeter:
    return CostMeter(session_cap_usd=cap, total_cap_usd=cap, model="claude-opus-4-6")


def _queries_in(messages: list[BaseMessage]) -> list[str]:
    text = str(messages[-1].content)
    return [json.loads(q) for q in re.findall(r"^\[\d+\] (.*)$", text, flags=re.M)]


def gold_teacher(gold_of=None, extra=()) -> ScriptedChatModel:
    """A teacher that answers every query of a batch: gold 'GOLD: <query>', must_contain
    the query's last word; `extra` entries are appended to each reply."""

    def reply(messages: list[BaseMessage]):
        queries = _queries_in(messages)
        answers = []
        for i, q in enumerate(queries):
            gold, phrases, category = (gold_of or {}).get(
                q, (f"GOLD: {q}", [q.split()[-1].strip("?")], "General Knowledge")
            )
            answers.append(
                {"index": i, "gold": gold, "must_contain": phrases, "category": category}
            )
        return tool_call("submit_gold_answers", {"answers": answers + list(extra)})

    return ScriptedChatModel(script=[reply] * 50)


def bench_file(settings, n: int) -> Path:
    return settings.benchmarks_dir / f"personal_v{n}.json"


# --------------------------------------------------------------------------- readiness


def test_no_traces_is_not_enough(settings):
    report = readiness(settings)
    assert (report.traces, report.high_feedback, report.ready_for_search) == (0, 0, False)
    assert report.message.startswith(f"Not enough traces yet: 0 of {MIN_TRACES}")
    assert not settings.traces_db.exists()  # asking does not create the database


def test_19_traces_are_not_enough_and_evaluation_runs_do_not_count(settings):
    store = TraceStore(settings.traces_db)
    fill(store, 19, high=19)
    for i in range(10):
        add_trace(store, f"eval task {i}", feedback=1.0, source="eval:starter")
    report = readiness(settings)
    assert (report.traces, report.high_feedback, report.ready_for_search) == (19, 19, False)
    assert report.message == (
        "Not enough traces yet: 19 of 20 (use the assistant more, or run on --benchmark starter)"
    )


def test_25_traces_with_5_high_feedback_is_diagnosis_only(settings):
    store = TraceStore(settings.traces_db)
    fill(store, 25, high=5)
    # Neither sensitive, errored nor unrated traces count as high feedback.
    add_trace(store, "private thing", feedback=1.0, sensitive=True)
    add_trace(store, "crashed", feedback=1.0, status="error")
    add_trace(store, "never rated")
    report = readiness(settings)
    assert (report.traces, report.high_feedback, report.ready_for_search) == (28, 5, False)
    assert "5 of 10 high-feedback" in report.message and "diagnosis" in report.message
    assert "Not enough traces yet" not in report.message


def test_enough_high_feedback_is_ready(settings):
    store = TraceStore(settings.traces_db)
    fill(store, 25, high=MIN_HIGH_FEEDBACK)
    report = readiness(settings)
    assert report.ready_for_search and report.high_feedback == MIN_HIGH_FEEDBACK
    assert readiness(settings, min_feedback=0.95).ready_for_search is False


# --------------------------------------------------------------------------- refresh


def user_history(store: TraceStore) -> dict[str, Trace]:
    t = {}
    t["arith"] = add_trace(store, "What is 37 * 41?", answer="It is 1500.", feedback=1.0)
    t["capital"] = add_trace(store, "What is the capital of Peru?", answer="Lima.", feedback=0.8)
    t["dup_old"] = add_trace(store, "how many days are in a leap year", answer="365", feedback=0.9)
    t["dup_new"] = add_trace(
        store, "How many days are in a leap year?", answer="366 days", feedback=0.7
    )
    t["low"] = add_trace(store, "Translate 'cat' to German.", answer="Katze", feedback=0.3)
    t["unrated"] = add_trace(store, "What is 2 + 2?", answer="4")
    t["sensitive"] = add_trace(
        store, "What is my bank PIN?", answer="1234", feedback=1.0, sensitive=True
    )
    t["eval"] = add_trace(
        store,
        "What is 1000 - 1? Use the calculator.",
        answer="999",
        feedback=1.0,
        source="eval:starter",
    )
    t["error"] = add_trace(
        store, "What is the boiling point of water?", feedback=1.0, status="error"
    )
    for i in range(15):  # ordinary use, unrated
        add_trace(store, f"small talk {i}")
    return t


async def test_refresh_writes_only_eligible_deduplicated_tasks_with_teacher_gold(settings):
    store = TraceStore(settings.traces_db)
    t = user_history(store)
    teacher = gold_teacher(
        {
            "What is 37 * 41?": ("37 * 41 = 1517", ["1517"], "Arithmetic"),
            "How many days are in a leap year?": (
                "A leap year has 366 days.",
                ["366"],
                "calendar facts",
            ),
        }
    )
    m = meter()
    path = await refresh_personal_benchmark(settings, teacher=teacher, meter=m)
    assert path == bench_file(settings, 1)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["teacher"] == "claude-opus-4-6"
    assert data["min_feedback"] == 0.7 and data["created_at"]
    tasks = {task["query"]: task for task in data["tasks"]}
    assert set(tasks) == {
        "What is 37 * 41?",
        "What is the capital of Peru?",
        "How many days are in a leap year?",
    }
    arith = tasks["What is 37 * 41?"]
    # The gold is the teacher's, never the student's (wrong) answer.
    assert (arith["gold"], arith["must_contain"], arith["category"]) == (
        "37 * 41 = 1517",
        ["1517"],
        "arithmetic",
    )
    assert (
        arith["id"]
        == task_id_for("What is 37 * 41?")
        == "p-" + hashlib.sha256(b"what is 37  41".replace(b"  ", b" ")).hexdigest()[:10]
    )
    assert arith["source_trace"] == t["arith"].id
    leap = tasks["How many days are in a leap year?"]
    assert leap["source_trace"] == t["dup_new"].id and leap["category"] == "calendar_facts"
    assert tasks["What is the capital of Peru?"]["category"] == "general_knowledge"
    assert "It is 1500." not in path.read_text()
    # One batch, one metered call; the teacher never saw the student's answers.
    assert len(teacher.calls) == 1 and m.calls == 1 and m.spent_usd > 0
    (call,) = teacher.calls
    assert call["tools"] == ["submit_gold_answers"]
    assert call["tool_choice"] == "submit_gold_answers"
    sent = " ".join(str(msg.content) for msg in call["messages"])
    for student_answer in ("It is 1500.", "366 days", "Lima."):
        assert student_answer not in sent
    for excluded in ("Katze", "bank PIN", "1000 - 1", "boiling", "2 + 2", "small talk"):
        assert excluded not in sent


async def test_second_refresh_makes_v2_and_keeps_v1(settings):
    store = TraceStore(settings.traces_db)
    user_history(store)
    first = await refresh_personal_benchmark(settings, teacher=gold_teacher(), meter=meter())
    v1_bytes = first.read_bytes()
    add_trace(store, "Who wrote Dune?", answer="Herbert", feedback=1.0)
    second = await refresh_personal_benchmark(settings, teacher=gold_teacher(), meter=meter())
    assert second == bench_file(settings, 2) and first.read_bytes() == v1_bytes
    v1, v2 = load_personal(settings, 1), load_personal(settings, 2)
    assert (v1.version, v2.version) == ("personal_v1", "personal_v2")
    assert {t.id for t in v1.tasks()} < {t.id for t in v2.tasks()}  # same question, same id
    assert latest_personal(settings) == second and load_personal(settings).version == "personal_v2"


async def test_secrets_in_a_query_do_not_reach_the_teacher(settings):
    store = TraceStore(settings.traces_db)
    query = (
        "Write to alice.smith@example.com that the key sk-ant-api03-AbCdEfGh12345678XyZ "
        "expires on Friday"
    )
    add_trace(store, query, feedback=1.0)
    teacher = gold_teacher({}, ())
    path = await refresh_personal_benchmark(settings, teacher=teacher, meter=meter())
    sent = " ".join(str(msg.content) for call in teacher.calls for msg in call["messages"])
    assert "alice.smith@example.com" not in sent and "sk-ant-api03" not in sent
    assert "<EMAIL>" in sent and "<SECRET>" in sent and "Friday" in sent
    # The student is still asked the real question, on this machine.
    (task,) = PersonalBenchmark(path).tasks()
    assert task.query == query


async def test_placeholder_phrases_are_dropped(settings):
    store = TraceStore(settings.traces_db)
    add_trace(store, "Mail bob@example.org the agenda", feedback=1.0)
    add_trace(store, "What is 6 * 7?", feedback=1.0)
    teacher = gold_teacher(
        {
            "Mail <EMAIL> the agenda": ("Sent to <EMAIL>.", ["<EMAIL>"], "email"),
            "What is 6 * 7?": ("42", ["42", "  "], "arithmetic"),
        }
    )
    path = await refresh_personal_benchmark(settings, teacher=teacher, meter=meter())
    data = json.loads(path.read_text())
    assert [(t["query"], t["must_contain"]) for t in data["tasks"]] == [("What is 6 * 7?", ["42"])]
    assert data["stats"]["dropped_empty_must_contain"] == 1


async def test_bad_answers_are_dropped_and_counted(settings):
    store = TraceStore(settings.traces_db)
    for i in range(12):  # two batches
        add_trace(store, f"What is {i} + {i}?", feedback=1.0)
    extra = [
        {"index": 99, "gold": "x", "must_contain": ["x"], "category": "c"},
        {"index": 0, "gold": "y", "must_contain": [], "category": "c"},
    ]
    teacher = gold_teacher(extra=extra)
    m = meter()
    path = await refresh_personal_benchmark(settings, teacher=teacher, meter=m)
    data = json.loads(path.read_text())
    assert len(data["tasks"]) == 12 and len(teacher.calls) == 2 and m.calls == 2
    assert data["stats"]["dropped_bad_index"] == 2
    # The repeat of index 0 is ignored: the first answer for a query wins.
    assert data["stats"]["dropped_empty_must_contain"] + data["stats"]["dropped_invalid"] == 2
    assert sum(len(_queries_in(c["messages"])) for c in teacher.calls) == 12


async def test_max_tasks_keeps_the_newest(settings):
    store = TraceStore(settings.traces_db)
    for i in range(5):
        add_trace(store, f"What is {i} + {i}?", feedback=1.0)
    path = await refresh_personal_benchmark(
        settings, teacher=gold_teacher(), meter=meter(), max_tasks=2
    )
    assert [t.query for t in PersonalBenchmark(path).tasks()] == [
        "What is 4 + 4?",
        "What is 3 + 3?",
    ]


async def test_queries_the_teacher_leaves_out_are_not_tasks(settings):
    store = TraceStore(settings.traces_db)
    add_trace(store, "Who is my dentist?", feedback=1.0)
    add_trace(store, "What is 6 * 7?", feedback=1.0)

    def reply(messages):
        queries = _queries_in(messages)
        i = queries.index("What is 6 * 7?")
        return tool_call(
            "submit_gold_answers",
            {
                "answers": [
                    {"index": i, "gold": "42", "must_contain": ["42"], "category": "arithmetic"}
                ]
            },
        )

    path = await refresh_personal_benchmark(
        settings, teacher=ScriptedChatModel(script=[reply]), meter=meter()
    )
    data = json.loads(path.read_text())
    assert [t["query"] for t in data["tasks"]] == ["What is 6 * 7?"]
    assert data["stats"]["skipped_by_teacher"] == 1


async def test_a_spent_budget_makes_no_teacher_call_and_writes_nothing(settings):
    store = TraceStore(settings.traces_db)
    user_history(store)
    teacher = gold_teacher()
    with pytest.raises(BudgetExceeded):
        await refresh_personal_benchmark(settings, teacher=teacher, meter=meter(cap=0.0))
    assert teacher.calls == [] and latest_personal(settings) is None


async def test_nothing_eligible_is_a_cold_start(settings):
    store = TraceStore(settings.traces_db)
    fill(store, 5, high=0)
    with pytest.raises(ColdStart, match=r"Not enough traces yet: 5 of 20"):
        await refresh_personal_benchmark(settings, teacher=gold_teacher(), meter=meter())
    fill(store, 20, high=0, prefix="more")
    add_trace(store, "secret stuff", feedback=1.0, sensitive=True)
    with pytest.raises(ColdStart, match=r"26 traces, 0 .*feedback >= 0.7"):
        await refresh_personal_benchmark(settings, teacher=gold_teacher(), meter=meter())
    assert latest_personal(settings) is None


async def test_a_teacher_without_usable_answers_writes_nothing(settings):
    store = TraceStore(settings.traces_db)
    add_trace(store, "What is 6 * 7?", feedback=1.0)
    teacher = ScriptedChatModel(script=["I think it is 42."])
    with pytest.raises(PersonalBenchmarkError, match="no usable gold answer"):
        await refresh_personal_benchmark(settings, teacher=teacher, meter=meter())
    assert latest_personal(settings) is None


def test_normalised_queries_and_ids():
    assert (
        normalise_query("  How many DAYS,  are in\ta leap year?! ")
        == "how many days are in a leap year"
    )
    assert task_id_for("How many days are in a leap year?") == task_id_for(
        "how many days are in a leap year"
    )
    assert task_id_for("What is 6 * 7?") != task_id_for("What is 6 * 8?")


# --------------------------------------------------------------------------- loading


def test_missing_benchmark_says_how_to_make_one(settings):
    assert latest_personal(settings) is None
    with pytest.raises(NoPersonalBenchmark, match="homespun learning benchmark refresh"):
        load_personal(settings)


def write_bench(settings, version: int, tasks: list[dict]) -> Path:
    path = bench_file(settings, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": version,
                "created_at": "2026-01-01T00:00:00+00:00",
                "teacher": "t",
                "min_feedback": 0.7,
                "tasks": tasks,
            }
        )
    )
    return path


def test_a_benchmark_file_becomes_tasks(settings):
    write_bench(
        settings,
        3,
        [
            {
                "id": "p-1",
                "query": "What is 6 * 7?",
                "category": "arithmetic",
                "gold": "42",
                "must_contain": ["42"],
                "source_trace": "abc",
            }
        ],
    )
    bench = load_personal(settings)
    assert isinstance(bench, Benchmark)
    assert (bench.name, bench.version) == ("personal", "personal_v3")
    (task,) = bench.tasks()
    assert (task.id, task.category, task.gold, task.suite) == (
        "p-1",
        "arithmetic",
        "42",
        "personal",
    )
    assert task.metadata == {"must_contain": ["42"], "needs_tool": False}
    with pytest.raises(NoPersonalBenchmark, match="personal_v7 .*have: v3"):
        load_personal(settings, 7)


def test_phrase_matching():
    assert contains_phrase("The answer is  1,517 - no, 1517.", "1517")
    assert contains_phrase("Your dentist is DR.  okafor", "Dr. Okafor")
    assert not contains_phrase("It was 2012.", "12")
    assert contains_phrase("It is 12.", "12")


# --------------------------------------------------------------------------- environment


def user_world(settings) -> Path:
    memory = MemoryStore(settings.memory_db)
    memory.add("My dentist is Dr. Okafor.", "health")
    (settings.workspace / "notes").mkdir(parents=True)
    (settings.workspace / "notes" / "todo.txt").write_text("Buy oat milk\n")
    return settings.memory_db


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_environment_grades_must_contain_over_a_copy_of_the_users_world(settings):
    memory_db = user_world(settings)
    before_rows = [(h.text, h.tags) for h in MemoryStore(memory_db).all()]
    before_sha = _sha(memory_db)
    write_bench(
        settings,
        1,
        [
            {
                "id": "p-remember",
                "query": "Remember my locker is 52, and who is my dentist?",
                "category": "memory",
                "gold": "Dr. Okafor",
                "must_contain": ["Okafor", "52"],
                "source_trace": "x",
            }
        ],
    )
    bench = load_personal(settings)
    (task,) = bench.tasks()
    spec = Spec()
    student = ScriptedChatModel(
        script=[
            tool_call("remember", {"text": "My locker is 52."}),
            tool_call("search_memory", {"query": "dentist"}),
            tool_call("read_file", {"path": "notes/todo.txt"}),
            "Saved locker 52. Your dentist is Dr.   OKAFOR.",
        ]
    )
    async with bench.environment(task, spec, settings) as env:
        result = await run_assistant(
            spec,
            settings,
            task.query,
            model=student,
            tools=env.tools,
            persist=False,
            source="eval:personal",
        )
        trace = result.trace
        assert trace.status == "ok", trace.error
        remembered, recalled, read = trace.tool_calls
        assert "Remembered" in remembered.result
        assert "Dr. Okafor" in recalled.result  # the copy holds the user's memories
        assert "oat milk" in read.result  # ... and the user's files
        (search,) = [t for t in env.tools if t.name == "search_memory"]
        assert "locker is 52" in str(await search.ainvoke({"query": "locker"}))
        assert env.grade(trace).success
        # Failing: a phrase missing; an errored run.
        trace.final_answer = "Saved locker 52."
        grade = env.grade(trace)
        assert not grade.success and "Okafor" in grade.reason
        trace.final_answer, trace.status, trace.error = "Okafor 52", "error", "boom"
        assert not env.grade(trace).success
    # The user's real memory and files are untouched.
    assert [(h.text, h.tags) for h in MemoryStore(memory_db).all()] == before_rows
    assert _sha(memory_db) == before_sha
    assert sorted(p.name for p in settings.workspace.rglob("*")) == ["notes", "todo.txt"]
    # A fresh copy each run: the evaluation's memory did not leak into the next one.
    async with bench.environment(task, spec, settings) as env:
        (search,) = [t for t in env.tools if t.name == "search_memory"]
        assert "locker is 52" not in str(await search.ainvoke({"query": "locker"}))


async def test_environment_offers_only_builtin_servers(settings):
    from homespun.spec import ToolServerSpec

    write_bench(
        settings,
        1,
        [
            {
                "id": "p-1",
                "query": "q",
                "category": "c",
                "gold": "g",
                "must_contain": ["g"],
                "source_trace": "x",
            }
        ],
    )
    bench = load_personal(settings)
    spec = Spec()
    spec.tools.servers.append(
        ToolServerSpec(name="external", kind="stdio", command="/nonexistent/server")
    )
    async with bench.environment(bench.tasks()[0], spec, settings) as env:
        assert {t.metadata["mcp_server"] for t in env.tools} == {
            s.name for s in Spec().tools.servers
        }
    assert not settings.memory_db.exists()  # no user memory: nothing created for the user
