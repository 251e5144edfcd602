"""The built-in starter benchmark: its size and shape, and its graders, run in the real
environment (the built-in MCP servers over a fresh world) on hand-built traces: for every
category a right run passes and a typical wrong one fails."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from homespun.learning.benchmarks.starter import (
    BENCHMARK_VERSION,
    FILES,
    MEMORIES,
    StarterBenchmark,
)
from homespun.learning.naive_loop import _run_tool
from homespun.learning.tasks import Grade
from homespun.mcp_servers.core import calculate
from homespun.spec import Spec
from homespun.stores.traces import ToolCallRecord, Trace

BENCH = StarterBenchmark()
TASKS = {t.id: t for t in BENCH.tasks()}
ORIGINAL_CATEGORIES = ("arithmetic", "memory_recall", "memory_store", "files", "time")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
ZONES = {
    "tokyo": "Asia/Tokyo",
    "los_angeles": "America/Los_Angeles",
    "auckland": "Pacific/Auckland",
}

Calls = tuple[tuple[str, dict[str, Any]], ...]
Graded = tuple[Grade, list[ToolCallRecord]]  # the grade, and the calls as recorded


@dataclass(frozen=True)
class Run:
    """A finished run to grade: the answer, and the calls made (for real, in the task's world)
    before it. `recorded` are calls added to the trace as they are, without running them."""

    answer: str | None
    calls: Calls = ()
    recorded: tuple[ToolCallRecord, ...] = ()


def _trace(task_id: str, answer: str | None, calls: list[ToolCallRecord]) -> Trace:
    return Trace(
        id=f"t-{task_id}",
        created_at=0.0,
        query=TASKS[task_id].query,
        spec_hash="h",
        thread_id="th",
        loop="naive",
        model="m",
        backend="scripted",
        status="ok",
        final_answer=answer,
        tool_calls=calls,
    )


async def _grades(settings, task_id: str, *runs: Run) -> list[Graded]:
    """Each run graded in one world for the task. Runs share it, so only a task graded on the
    trace alone (not on the memory database) may be given more than one."""
    async with BENCH.environment(TASKS[task_id], Spec(), settings) as env:
        tools = {t.name: t for t in env.tools}
        out = []
        for run in runs:
            # Recorded as the naive loop records them: an error in `error`, never raised.
            calls = [await _run_tool(tools[name], args) for name, args in run.calls]
            out.append((env.grade(_trace(task_id, run.answer, [*calls, *run.recorded])), calls))
        return out


async def _grade(settings, task_id: str, run: Run) -> Graded:
    [graded] = await _grades(settings, task_id, run)
    return graded


def _today() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- shape


def test_the_starter_benchmark_has_120_tasks_in_ten_categories_of_ten_or_more():
    tasks = BENCH.tasks()
    counts = Counter(t.category for t in tasks)
    assert len(tasks) >= 120 and len(counts) >= 8
    assert len(TASKS) == len(tasks), "task ids are unique"
    assert all(n >= 10 for n in counts.values()), counts
    assert {"no_tool", "chain", "exact_params", "tool_error", "clarify"} <= set(counts)
    assert BENCH.version == BENCHMARK_VERSION == "starter-2"
    assert all(t.suite == "starter" and t.metadata["graded_on"] for t in tasks)


def test_the_original_tasks_come_first_so_limit_4_runs_what_it_ran_before():
    firsts: dict[str, list[str]] = {}
    for t in BENCH.tasks():
        firsts.setdefault(t.category, []).append(t.id)
    assert firsts["arithmetic"][:10] == [f"arith-{i:02}" for i in range(1, 11)]
    assert firsts["memory_recall"][:8] == [f"recall-{i:02}" for i in range(1, 9)]
    assert firsts["memory_store"][:6] == [f"store-{i:02}" for i in range(1, 7)]
    assert firsts["files"][:6] == [f"files-{i:02}" for i in range(1, 7)]
    assert firsts["time"][:4] == [f"time-{i:02}" for i in range(1, 5)]
    assert TASKS["arith-01"].query == "What is 37 * 41? Use the calculator."
    assert TASKS["time-04"].query == "Use current_time to tell me today's date (YYYY-MM-DD)."


def test_some_tasks_of_the_original_categories_do_not_name_their_tool():
    tool_words = ("calculat", "memory", "remember", "save", "current_time", "read ")
    for category in ORIGINAL_CATEGORIES:
        queries = [t.query.lower() for t in BENCH.tasks() if t.category == category]
        assert any(not any(w in q for w in tool_words) for q in queries), category


# --------------------------------------------------------------------------- per category

# task id, a right run, a typical wrong run (one per category, more where a category has
# more than one way to fail).
CASES: list[tuple[str, Run, Run]] = [
    (
        "arith-11",
        Run("48 * 27 = 1,296.", (("calculator", {"expression": "48 * 27"}),)),
        Run("48 * 27 is about 1286."),
    ),
    ("arith-03", Run("144 / 12 = 12.0"), Run("It is 12.5.")),
    (
        "recall-09",
        Run("You drive a blue Skoda Fabia.", (("search_memory", {"query": "car"}),)),
        Run("You drive a Toyota.", (("search_memory", {"query": "car"}),)),
    ),
    (
        "store-08",
        Run("Saved.", (("remember", {"text": "The boiler service is on June 3."}),)),
        Run("Saved, I will remember the boiler service on June 3."),  # said, not stored
    ),
    (
        "files-07",
        Run("It departs at 07:40.", (("search_files", {"query": "Flight"}),)),
        Run("It departs at 08:15."),
    ),
    ("time-05", Run(f"Today is {WEEKDAYS[_today().weekday()]}."), Run("Today is Funday.")),
    (
        "time-10",
        Run(f"In five years it will be {_today().year + 5}."),
        Run(f"In five years it will be {_today().year + 4}."),
    ),
    ("notool-01", Run("The capital of France is Paris."), Run("It is Lyon.")),
    (
        "notool-01",
        Run("Paris.", recorded=(ToolCallRecord("think", {"thought": "I know this."}, "Noted."),)),
        Run("Paris.", (("search_memory", {"query": "capital of France"}),)),
    ),
    ("notool-03", Run("A spider has eight legs."), Run("A spider has six legs.")),
    ("notool-13", Run("I'm well, thanks! How can I help?"), Run("")),
    (
        "chain-03",
        Run(
            "Your monthly total is 1,347.39.",
            (
                ("read_file", {"path": "notes/budget.txt"}),
                ("calculator", {"expression": "950 + 312.40 + 39.99 + 45"}),
            ),
        ),
        Run("Your monthly total is 1347.00.", (("read_file", {"path": "notes/budget.txt"}),)),
    ),
    (
        "chain-12",
        Run(
            "Saved your flight number.",
            (
                ("read_file", {"path": "trips/lisbon.txt"}),
                ("remember", {"text": "My Lisbon flight number is TP1345."}),
            ),
        ),
        Run("Your flight is TP1345.", (("read_file", {"path": "trips/lisbon.txt"}),)),
    ),
    ("exact-03", Run("72 °F is 22.2 °C."), Run("72 °F is 22.22 °C.")),
    ("exact-08", Run("That is 2025-04-07."), Run("That is 2025-04-08.")),
    (
        "error-01",
        Run(
            "notes/shopping.txt doesn't exist, so I can't tell you.",
            (("read_file", {"path": "notes/shopping.txt"}),),
        ),
        Run("There are 6 eggs on the list.", (("read_file", {"path": "notes/shopping.txt"}),)),
    ),
    (
        "error-01",
        Run("I couldn't find that file.", (("read_file", {"path": "notes/shopping.txt"}),)),
        Run(
            "I couldn't find the file, but you probably need 6 eggs.",
            (("read_file", {"path": "notes/shopping.txt"}),),
        ),
    ),
    (
        "error-11",
        Run(
            "The calculator refused: the exponent is over its limit of 10000.",
            (("calculator", {"expression": "10 ** 100000"}),),
        ),
        Run("That file does not exist."),  # not even tried
    ),
    (
        "clarify-02",
        Run("Which file would you like me to read?"),
        Run("Here is your todo list. Anything else?", (("read_file", {"path": "notes/todo.txt"}),)),
    ),
    ("clarify-01", Run("Sure, what should I remember?"), Run("OK, I will remember that.")),
]


@pytest.mark.parametrize(("task_id", "right", "wrong"), CASES, ids=[c[0] for c in CASES])
async def test_a_right_run_passes_and_a_typical_wrong_one_fails(settings, task_id, right, wrong):
    good, _ = await _grade(settings, task_id, right)
    assert good.success and good.score == 1.0, good
    bad, _ = await _grade(settings, task_id, wrong)
    assert not bad.success and bad.score == 0.0 and bad.reason, bad


def test_every_category_has_a_case():
    categories = {t.category for t in BENCH.tasks()}
    assert {TASKS[task_id].category for task_id, _, _ in CASES} == categories


# --------------------------------------------------------------------------- every task

# The call that fails in each tool_error task: the premise of the task, checked below.
FAILING_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "error-01": ("read_file", {"path": "notes/shopping.txt"}),
    "error-02": ("read_file", {"path": "trips/paris.txt"}),
    "error-03": ("read_file", {"path": "notes/passwords.txt"}),
    "error-04": ("read_file", {"path": "work/salary.txt"}),
    "error-05": ("read_file", {"path": "projects/boat.txt"}),
    "error-06": ("read_file", {"path": "../secrets.txt"}),
    "error-07": ("read_file", {"path": "notes"}),
    "error-08": ("calculator", {"expression": "10 / 0"}),
    "error-09": ("calculator", {"expression": "1 / (5 - 5)"}),
    "error-10": ("calculator", {"expression": "sqrt(-16)"}),
    "error-11": ("calculator", {"expression": "10 ** 100000"}),
    "error-12": ("current_time", {"timezone": "Mars/Olympus_Mons"}),
    "error-13": ("current_time", {"timezone": "Europe/Atlantis"}),
}


def _right_run(task_id: str) -> Run:
    """A run the task's grader must accept, whatever its category."""
    task = TASKS[task_id]
    graded_on = task.metadata["graded_on"]
    if graded_on == "memory":
        return Run("Saved.", (("remember", {"text": f"Note: {task.gold}"}),))
    if graded_on == "error_reported":
        return Run("Sorry, that did not work: the tool gave an error.", (FAILING_CALLS[task_id],))
    if graded_on == "question":
        return Run("What exactly do you mean?")
    if task.gold is None:
        return Run("Hello! Glad to help.")
    now = _today()
    gold = task.gold.format(
        year=now.year,
        month=now.month,
        day=now.day,
        date=now.date().isoformat(),
        weekday=WEEKDAYS[now.weekday()],
        month_name=MONTHS[now.month - 1],
        year_plus_5=now.year + 5,
        **{f"date_{k}": _date_in(z) for k, z in ZONES.items()},
    )
    return Run(f"The answer is {gold}.")


def _date_in(zone: str) -> str:
    return _today().astimezone(ZoneInfo(zone)).date().isoformat()


def _made_up_run(task_id: str) -> Run | None:
    """A run that guesses without the tools or the question it needed; None for the tasks
    that accept any answer (chit-chat) or are graded on the memory database (CASES covers
    those, each in a world of its own)."""
    task = TASKS[task_id]
    if task.metadata["graded_on"] == "memory" or (task.gold is None and task.category == "no_tool"):
        return None
    return Run("I am not sure, maybe 999999. Done.")


async def test_every_task_passes_a_right_run_and_fails_a_made_up_one(settings):
    wrong = []
    for task_id in TASKS:
        made_up = _made_up_run(task_id)
        runs = (_right_run(task_id),) if made_up is None else (_right_run(task_id), made_up)
        (right, _), *rest = await _grades(settings, task_id, *runs)
        if not right.success:
            wrong.append((task_id, "right run failed", right.reason))
        if rest and rest[0][0].success:
            wrong.append((task_id, "made-up run passed", ""))
    assert not wrong


async def test_every_tool_error_task_names_a_call_that_really_fails(settings):
    error_tasks = {t.id for t in BENCH.tasks() if t.category == "tool_error"}
    assert set(FAILING_CALLS) == error_tasks
    for task_id, call in FAILING_CALLS.items():
        _, [record] = await _grade(settings, task_id, Run("It failed.", (call,)))
        assert record.error and record.result is None, (task_id, record)


async def test_tool_error_tasks_fail_on_invented_content_or_without_a_try(settings):
    for task_id, call in FAILING_CALLS.items():
        invented = Run("It could not be read, but the answer is 42.", (call,))
        untried = Run("That does not exist.")
        silent = Run("Here you go.", (call,))
        grades = await _grades(settings, task_id, invented, untried, silent)
        assert not any(grade.success for grade, _ in grades), (task_id, grades)


async def test_no_tool_tasks_fail_when_a_tool_was_called(settings):
    for task in (t for t in BENCH.tasks() if t.category == "no_tool"):
        called = Run(_right_run(task.id).answer, (("calculator", {"expression": "1 + 1"}),))
        grade, _ = await _grade(settings, task.id, called)
        assert not grade.success and "calculator" in grade.reason, task.id


async def test_clarify_tasks_fail_on_an_invented_call_and_on_no_question(settings):
    for task in (t for t in BENCH.tasks() if t.category == "clarify"):
        invented = Run("What do you mean?", (("search_memory", {"query": "that"}),))
        (called, _), (unasked, _) = await _grades(settings, task.id, invented, Run("Done."))
        assert not called.success and "invented" in called.reason, task.id
        assert not unasked.success and "question" in unasked.reason, task.id


async def test_time_zone_tasks_grade_against_the_zone_the_tool_reports(settings):
    for task_id, zone in (
        ("exact-10", "Asia/Tokyo"),
        ("exact-11", "America/Los_Angeles"),
        ("exact-12", "Pacific/Auckland"),
    ):
        _, [record] = await _grade(
            settings, task_id, Run("", (("current_time", {"timezone": zone}),))
        )
        right = Run(f"It is {record.result[:10]} there.")
        assert (await _grade(settings, task_id, right))[0].success, task_id


# --------------------------------------------------------------------------- the golds


def test_the_arithmetic_golds_are_what_the_calculator_says():
    expressions = {
        "arith-11": "48 * 27",
        "arith-12": "4096 / 16",
        "arith-13": "365 * 24",
        "arith-14": "12345 + 67890",
        "chain-01": "250 * 3",
        "chain-02": "500 * 4",
        "chain-03": "950 + 312.40 + 39.99 + 45",
        "chain-04": "950 + 39.99",
        "chain-05": "312.40 * 12",
        "chain-06": "3817 * 2",
        "chain-07": "5 * 7",
        "chain-08": "24.50 * 12",
        "chain-09": "48 * 2",
        "exact-01": "3.5 * 60",
        "exact-02": "4.2 * 1000",
        "exact-03": "round((72 - 32) * 5 / 9, 1)",
        "exact-04": "0.025 * 1840",
        "exact-05": "24 * 60 * 60",
        "exact-07": "7 / 8",
        "exact-13": "2.75 * 1000",
        "exact-14": "3 * 19.99",
        "exact-15": "2 * 7 * 24",
        "exact-16": "1.5 * 1000",
    }
    assert {i: calculate(e) for i, e in expressions.items()} == {
        i: TASKS[i].gold for i in expressions
    }


def test_the_date_golds_follow_from_the_seeded_calendar():
    assert "2025-03-28 Dentist" in FILES["notes/calendar.txt"]
    dentist, party, rent_ends = dt.date(2025, 3, 28), dt.date(2025, 4, 18), dt.date(2025, 6, 30)
    assert TASKS["exact-08"].gold == (dentist + dt.timedelta(days=10)).isoformat()
    assert TASKS["exact-09"].gold == str((rent_ends - party).days)
    meeting_ends = dt.datetime(2025, 1, 1, 14, 45) + dt.timedelta(minutes=95)
    assert TASKS["exact-06"].gold == meeting_ends.strftime("%H:%M")


def test_recall_and_chain_golds_come_from_the_seeded_world():
    seeded = " ".join(m for m, _ in MEMORIES) + " ".join(FILES.values())
    for task_id in ("recall-09", "recall-10", "recall-11", "recall-12", "chain-12", "chain-13"):
        assert TASKS[task_id].gold in seeded, task_id
