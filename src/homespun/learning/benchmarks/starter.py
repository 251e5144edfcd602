"""The built-in starter benchmark: personal tool-use tasks over the core MCP tools.

Small and deterministic, so a spec search on the embedded model has signal out of the box.
Ten categories: arithmetic (calculator), memory_recall (search_memory over seeded memories),
memory_store (remember, graded on the memory database), files (read_file and search_files
over a seeded workspace) and time (current_time), where some tasks name the tool and some
do not; then the skills around the tools: no_tool (questions no tool can help with, so no
call may be made), chain (two tools in sequence), exact_params (dates, time zones, units,
decimals), tool_error (a missing file, a bad expression or time zone: say so, invent
nothing) and clarify (a request that names nothing to act on: ask back, call nothing).

Each task runs in a fresh temporary world; grading reads the final answer, the trace's tool
calls or that world, never a tool the agent can call. Time tasks are graded against the
clock at grading time.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import Settings, Spec
from homespun.stores.traces import ToolCallRecord, Trace

BENCHMARK_VERSION = "starter-2"

SINGLE_TOOL_CATEGORIES = ("arithmetic", "memory_recall", "memory_store", "files", "time")
"""The categories that each exercise one tool: what the quickstart's short session runs on."""

# Facts seeded into memory for the recall and chain tasks (and as distractors for each other).
MEMORIES = (
    ("My dentist is Dr. Okafor.", "health"),
    ("My sister Lena's birthday is on March 14.", "family"),
    ("The wifi password at the cabin is bluefinch42.", "home"),
    ("My passport expires in August 2029.", "travel"),
    ("My favourite tea is genmaicha.", "food"),
    ("The plumber's name is Ravi Menon.", "home"),
    ("My bike lock code is 3817.", "home"),
    ("My manager is called Ines Duarte.", "work"),
    ("My car is a blue Skoda Fabia.", "car"),
    ("The office door code is 4729.", "work"),
    ("My neighbour is Mrs. Albers.", "home"),
    ("My shoe size is 43.", "clothes"),
    ("I run 5 km every morning.", "health"),
    ("My phone bill is 24.50 euros a month.", "money"),
    ("My car's fuel tank holds 48 litres.", "car"),
)

# Files seeded into the workspace for the file, chain and exact_params tasks.
FILES = {
    "notes/todo.txt": "Buy oat milk\nCall the landlord about the heater\nReturn library books\n",
    "notes/recipes.md": "# Pancakes\n2 eggs, 250 g flour, 500 ml milk. Rest 20 minutes.\n",
    "projects/garden.txt": "Plant the tomatoes on May 10. Water the basil daily.\n",
    "trips/lisbon.txt": "Flight TP1345 departs 07:40. Hotel: Casa Amarela, Rua do Sol 12.\n",
    "notes/budget.txt": "Monthly budget\nRent: 950\nGroceries: 312.40\nInternet: 39.99\nGym: 45\n",
    "notes/calendar.txt": (
        "2025-03-28 Dentist check-up\n2025-04-18 Lena's party\n2025-06-30 Rent contract ends\n"
    ),
    "notes/packing.md": (
        "# Packing list for Lisbon\n- passport\n- sunscreen\n- 3 T-shirts\n- charger\n"
    ),
}

# Rows are (id, query, gold). The first four of every category are what `--limit 4` and the
# quickstart run, so the original tasks stay first and keep their ids and texts.
_ARITHMETIC = [
    ("arith-01", "What is 37 * 41? Use the calculator.", "1517"),
    ("arith-02", "Use the calculator: what is 1234 + 5678?", "6912"),
    ("arith-03", "What is 144 / 12? Use the calculator.", "12"),
    ("arith-04", "Calculate 2 ** 10 with the calculator.", "1024"),
    ("arith-05", "What is 999 - 457? Use the calculator.", "542"),
    ("arith-06", "Use the calculator to compute 23 * 19.", "437"),
    ("arith-07", "What is 15% of 240? Use the calculator (0.15 * 240).", "36"),
    ("arith-08", "What is (17 + 8) * 4? Use the calculator.", "100"),
    ("arith-09", "Use the calculator: 7 * 8 * 9.", "504"),
    ("arith-10", "What is 1000 - 1? Use the calculator.", "999"),
    # The tool is not named from here on: picking it is part of the task.
    ("arith-11", "What is 48 * 27?", "1296"),
    ("arith-12", "How much is 4096 divided by 16?", "256"),
    ("arith-13", "What is 365 * 24?", "8760"),
    ("arith-14", "What's 12345 + 67890?", "80235"),
]
_RECALL = [
    ("recall-01", "Who is my dentist? Search your memory.", "Okafor"),
    ("recall-02", "When is Lena's birthday? Search your memory.", "March 14"),
    ("recall-03", "What is the cabin wifi password? Check memory.", "bluefinch42"),
    ("recall-04", "When does my passport expire? Search memory.", "2029"),
    ("recall-05", "What is my favourite tea? Search your memory.", "genmaicha"),
    ("recall-06", "What is the plumber's name? Look in memory.", "Ravi"),
    ("recall-07", "What is my bike lock code? Search memory.", "3817"),
    ("recall-08", "Who is my manager? Search your memory.", "Ines"),
    ("recall-09", "What car do I drive?", "Skoda"),
    ("recall-10", "What's the code for the office door?", "4729"),
    ("recall-11", "What is my neighbour's name?", "Albers"),
    ("recall-12", "What shoe size do I wear?", "43"),
]
_STORE = [
    ("store-01", "Remember that my gym locker is number 52.", "52"),
    ("store-02", "Please remember: the cat's vet is Dr. Haas.", "Haas"),
    ("store-03", "Remember that I parked on level 3.", "level 3"),
    ("store-04", "Remember my library card number is 88213.", "88213"),
    ("store-05", "Save this: the dinner reservation is at 19:30.", "19:30"),
    ("store-06", "Remember that Tom is allergic to peanuts.", "peanuts"),
    ("store-07", "Note that my passport number ends in 4471.", "4471"),
    ("store-08", "Don't let me forget: the boiler service is on June 3.", "June 3"),
    ("store-09", "Keep in mind that my niece is called Mila.", "Mila"),
    ("store-10", "For future reference, my licence plate is KX-482-B.", "KX-482-B"),
]
_FILES = [
    ("files-01", "Read notes/todo.txt. What milk do I need to buy?", "oat"),
    ("files-02", "Read notes/recipes.md. How many eggs do pancakes need?", "2"),
    ("files-03", "Read projects/garden.txt. When do I plant the tomatoes?", "May 10"),
    ("files-04", "Read trips/lisbon.txt. What is my flight number?", "TP1345"),
    ("files-05", "Read trips/lisbon.txt. What is the hotel called?", "Casa Amarela"),
    ("files-06", "Read notes/todo.txt. Who do I need to call?", "landlord"),
    # No path given: the file has to be found first (search_files) or guessed.
    ("files-07", "What time does my Lisbon flight depart?", "7:40"),
    ("files-08", "How many minutes should the pancake batter rest?", "20"),
    ("files-09", "According to my garden notes, which plant do I water daily?", "basil"),
    ("files-10", "On which street is my hotel in Lisbon?", "Rua do Sol"),
]
# Golds name fields of _time_fields, filled in at grading time.
_TIME = [
    ("time-01", "What year is it now? Use current_time.", "{year}"),
    ("time-02", "Use current_time: what is the current year?", "{year}"),
    ("time-03", "What month number is it now (1-12)? Use current_time.", "{month}"),
    ("time-04", "Use current_time to tell me today's date (YYYY-MM-DD).", "{date}"),
    ("time-05", "What day of the week is it today?", "{weekday}"),
    ("time-06", "What is the current year?", "{year}"),
    ("time-07", "What's today's date? Answer as YYYY-MM-DD.", "{date}"),
    ("time-08", "Which month is it now? Give the month's name.", "{month_name}"),
    ("time-09", "What is today's day of the month (1-31)?", "{day}"),
    ("time-10", "What year will it be five years from now?", "{year_plus_5}"),
]
# General knowledge and chit-chat: no tool can help, so any call fails. A gold of None means
# there is no one right answer, only a non-empty one.
_NO_TOOL = [
    ("notool-01", "What is the capital of France?", "Paris"),
    ("notool-02", "Translate 'thank you' into Spanish.", "gracias"),
    ("notool-03", "How many legs does a spider have?", "8"),
    ("notool-04", "What colour do you get when you mix blue and yellow paint?", "green"),
    ("notool-05", "Spell the word 'stressed' backwards.", "desserts"),
    ("notool-06", "What is the plural of 'mouse'?", "mice"),
    ("notool-07", "Who wrote Romeo and Juliet?", "Shakespeare"),
    ("notool-08", "Which planet is known as the Red Planet?", "Mars"),
    ("notool-09", "How many sides does a hexagon have?", "6"),
    ("notool-10", "What is the chemical formula of water?", "H2O"),
    ("notool-11", "On which continent is Kenya?", "Africa"),
    ("notool-12", "Write one short sentence wishing me a good weekend.", "weekend"),
    ("notool-13", "Hello! How are you today?", None),
    ("notool-14", "Thanks, that's all for now.", None),
]
# Two tools in sequence; graded on the answer (or, in _CHAIN_STORE, on what was saved).
_CHAIN = [
    (
        "chain-01",
        "Read notes/recipes.md. How many grams of flour do three batches of pancakes need?",
        "750",
    ),
    (
        "chain-02",
        "Read notes/recipes.md. How many millilitres of milk do four batches of pancakes need?",
        "2000",
    ),
    (
        "chain-03",
        "Read notes/budget.txt and add up every amount. What is my monthly total?",
        "1347.39",
    ),
    ("chain-04", "Read notes/budget.txt. What do rent and internet cost together?", "989.99"),
    ("chain-05", "Read notes/budget.txt. What do groceries cost over 12 months?", "3748.8"),
    ("chain-06", "Search memory for my bike lock code, then multiply it by 2.", "7634"),
    (
        "chain-07",
        "Look up in memory how far I run each morning. How many km is that in a week?",
        "35",
    ),
    ("chain-08", "Search memory for my monthly phone bill. How much is that per year?", "294"),
    (
        "chain-09",
        "Look up in memory how many litres my car's fuel tank holds. How much do two full "
        "tanks hold?",
        "96",
    ),
    (
        "chain-10",
        "Which of my files mentions the heater? Read it and tell me what I need to return.",
        "library books",
    ),
    (
        "chain-11",
        "Find the file with my packing list, read it, and tell me how many T-shirts to pack.",
        "3",
    ),
]
_CHAIN_STORE = [
    ("chain-12", "Read trips/lisbon.txt and remember my flight number.", "TP1345"),
    (
        "chain-13",
        "Look up the plumber's name in memory, then save a new memory: call him on Friday, "
        "with his name in it.",
        "Ravi",
    ),
    ("chain-14", "Read notes/budget.txt and remember how much my rent is.", "950"),
]
# Exact parameters: units, decimals, date arithmetic and time zones (golds with {date_*} are
# the date in that zone at grading time).
_EXACT = [
    ("exact-01", "How many minutes are in 3.5 hours?", "210"),
    ("exact-02", "How many metres are in 4.2 kilometres?", "4200"),
    (
        "exact-03",
        "Convert 72 degrees Fahrenheit to Celsius, rounded to one decimal place.",
        "22.2",
    ),
    ("exact-04", "What is 2.5% of 1840?", "46"),
    ("exact-05", "How many seconds are in one day?", "86400"),
    (
        "exact-06",
        "A meeting starts at 14:45 and lasts 95 minutes. At what time does it end (HH:MM)?",
        "16:20",
    ),
    ("exact-07", "What is 7/8 as a decimal number?", "0.875"),
    (
        "exact-08",
        "Read notes/calendar.txt. What date is 10 days after my dentist check-up? "
        "Answer as YYYY-MM-DD.",
        "2025-04-07",
    ),
    (
        "exact-09",
        "Read notes/calendar.txt. How many days are there from Lena's party to the day the "
        "rent contract ends?",
        "73",
    ),
    (
        "exact-10",
        "Use current_time with the timezone Asia/Tokyo: what is today's date in Tokyo "
        "(YYYY-MM-DD)?",
        "{date_tokyo}",
    ),
    ("exact-11", "What is today's date in Los Angeles (YYYY-MM-DD)?", "{date_los_angeles}"),
    ("exact-12", "What is today's date in Auckland, New Zealand (YYYY-MM-DD)?", "{date_auckland}"),
    ("exact-13", "How many grams are in 2.75 kilograms?", "2750"),
    ("exact-14", "What do 3 items at 19.99 each cost, to the cent?", "59.97"),
    ("exact-15", "How many hours are in 2 weeks?", "336"),
    ("exact-16", "Convert 1.5 litres to millilitres.", "1500"),
]
# The tool fails (a missing file, a path outside the workspace, a directory, division by
# zero, a result too large, an unknown time zone). Each asks for a number, date or time, so
# an answer that invents one is caught: no gold, see _grade_error_reported.
_TOOL_ERROR = [
    ("error-01", "Read notes/shopping.txt. How many eggs are on the list?", None),
    ("error-02", "Read trips/paris.txt. What time does my train leave?", None),
    ("error-03", "Open notes/passwords.txt and tell me the router PIN.", None),
    ("error-04", "Read work/salary.txt. How much do I earn per month?", None),
    ("error-05", "Read projects/boat.txt. On what date is the boat due for repair?", None),
    ("error-06", "Read ../secrets.txt and tell me the code written in it.", None),
    ("error-07", "Read the file 'notes' and tell me the date written in it.", None),
    ("error-08", "Use the calculator to compute 10 / 0.", None),
    ("error-09", "Use the calculator: what is 1 / (5 - 5)?", None),
    ("error-10", "Use the calculator to compute sqrt(-16).", None),
    ("error-11", "Use the calculator to compute 10 ** 100000 exactly.", None),
    ("error-12", "Use current_time with the timezone 'Mars/Olympus_Mons'. What time is it?", None),
    ("error-13", "Use current_time with the timezone 'Europe/Atlantis'. What date is it?", None),
]
# Nothing to act on: any call would have to invent its arguments, so the right move is a
# question back.
_CLARIFY = [
    ("clarify-01", "Remember that.", None),
    ("clarify-02", "Read the file.", None),
    ("clarify-03", "Save this for me.", None),
    ("clarify-04", "Calculate it.", None),
    ("clarify-05", "What is the total?", None),
    ("clarify-06", "Open the document I mentioned.", None),
    ("clarify-07", "What time is it there?", None),
    ("clarify-08", "Add them together.", None),
    ("clarify-09", "Convert it to euros.", None),
    ("clarify-10", "Remember what I just told you.", None),
    ("clarify-11", "Look that up for me.", None),
    ("clarify-12", "Read it to me.", None),
]

# Other spellings of a gold that are just as right. Not in the gold itself: a train_lora edit
# uses golds as the answers it trains on.
_ALSO_ACCEPTED: dict[str, tuple[str, ...]] = {
    "notool-03": ("eight",),
    "notool-09": ("six",),
    "notool-10": ("H₂O",),
}

Row = tuple[str, str, str | None]
# (rows, category, grader, needs_tool); the grader names one of _GRADERS.
_GROUPS: tuple[tuple[list[Row], str, str, bool], ...] = (
    (_ARITHMETIC, "arithmetic", "answer", True),
    (_RECALL, "memory_recall", "answer", True),
    (_STORE, "memory_store", "memory", True),
    (_FILES, "files", "answer", True),
    (_TIME, "time", "answer", True),
    (_NO_TOOL, "no_tool", "no_tool", False),
    (_CHAIN, "chain", "answer", True),
    (_CHAIN_STORE, "chain", "memory", True),
    (_EXACT, "exact_params", "answer", True),
    (_TOOL_ERROR, "tool_error", "error_reported", True),
    (_CLARIFY, "clarify", "question", False),
)


def _tasks() -> list[Task]:
    return [
        Task(
            id=task_id,
            query=query,
            category=category,
            suite="starter",
            gold=gold,
            metadata={
                "needs_tool": needs_tool,
                "graded_on": grader,
                "also_accepted": _ALSO_ACCEPTED.get(task_id, ()),
            },
        )
        for rows, category, grader, needs_tool in _GROUPS
        for task_id, query, gold in rows
    ]


# --------------------------------------------------------------------------- matching

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Locale-independent names (strftime's %A and %B follow the process locale).
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _normalise(text: str) -> str:
    text = text.lower().replace(",", "")
    # "1517.0" counts as "1517" and "3748.80" as "3748.8"
    return re.sub(r"(\d)\.(\d*?)0+\b", lambda m: m[1] + (f".{m[2]}" if m[2] else ""), text)


def _time_fields(now: dt.datetime) -> dict[str, str]:
    """What a time task's gold may name, as of `now` (grading time, just after the run)."""

    def date_in(zone: str) -> str:
        return now.astimezone(ZoneInfo(zone)).date().isoformat()

    return {
        "year": str(now.year),
        "month": str(now.month),
        "day": str(now.day),
        "date": now.date().isoformat(),
        "weekday": _WEEKDAYS[now.weekday()],
        "month_name": _MONTHS[now.month - 1],
        "year_plus_5": str(now.year + 5),
        "date_tokyo": date_in("Asia/Tokyo"),
        "date_los_angeles": date_in("America/Los_Angeles"),
        "date_auckland": date_in("Pacific/Auckland"),
    }


def _expected(task: Task, now: dt.datetime) -> str | None:
    return None if task.gold is None else task.gold.format(**_time_fields(now))


def _contains(haystack: str, needle: str) -> bool:
    h, n = _normalise(haystack), _normalise(needle)
    if _NUMBER.fullmatch(n):  # numbers match whole: "12" is not in "2012" nor in "12.5"
        return re.search(rf"(?<![\d.]){re.escape(n)}(?!\d|\.\d)", h) is not None
    return n in h


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(_normalise(text)))


def _world_calls(trace: Trace) -> list[ToolCallRecord]:
    # think is a scratchpad that reads and changes nothing: planning is not acting.
    return [c for c in trace.tool_calls if c.name != "think"]


# Ways of saying "the tool failed", after _plain_negations: a small closed set, so a grader
# does not have to understand the answer, only find one of these in it.
_FAILURE_PHRASES = (
    "not exist", "no such", "not found", "not find", "could not", "can not", "unable",
    "not possible", "impossible", "undefined", "not defined", "by zero", "not a real",
    "too large", "too big", "unknown", "invalid", "not valid", "not recogni", "outside",
    "not allowed", "refused", "directory", "folder", "error", "failed",
)  # fmt: skip


def _plain_negations(text: str) -> str:
    """Lower case, straight apostrophes, and "can't"/"cannot"/"doesn't" spelled out."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"\bcan'?t\b|\bcannot\b", "can not", text)
    text = re.sub(r"\bwon't\b", "will not", text)
    return re.sub(r"n't\b", " not", text)


# --------------------------------------------------------------------------- graders


@dataclass(frozen=True)
class _Run:
    """What a grader sees: the finished trace, its task, and the world the run changed."""

    task: Task
    trace: Trace
    expected: str | None  # the gold, with time fields filled in at grading time
    memory_db: Path
    seeded_memories: frozenset[str]

    @property
    def answer(self) -> str:
        return self.trace.final_answer or ""


def _verdict(ok: bool, why_not: str, why: str = "") -> Grade:
    return Grade(ok, float(ok), why if ok else why_not)


def _grade_answer(run: _Run) -> Grade:
    """The final answer contains the gold (or one of its other accepted spellings)."""
    assert run.expected is not None
    accepted = (run.expected, *run.task.metadata["also_accepted"])
    ok = any(_contains(run.answer, a) for a in accepted)
    return _verdict(ok, f"answer does not contain {run.expected!r}")


def _grade_memory(run: _Run) -> Grade:
    """A memory saved during the run (not a seeded one) contains the gold."""
    from homespun.stores.memory import MemoryStore

    assert run.expected is not None
    stored = [h.text for h in MemoryStore(run.memory_db).all()]
    new = [t for t in stored if t not in run.seeded_memories]
    ok = any(_contains(t, run.expected) for t in new)
    return _verdict(ok, f"no new memory mentions {run.expected!r}", "stored")


def _grade_no_tool(run: _Run) -> Grade:
    """No tool was called (think aside), and the answer is there and right where checkable."""
    if calls := _world_calls(run.trace):
        return _verdict(False, f"called {calls[0].name} although no tool can help")
    if not run.answer.strip():
        return _verdict(False, "no answer")
    if run.expected is not None:
        return _grade_answer(run)
    return _verdict(True, "")


def _grade_error_reported(run: _Run) -> Grade:
    """A tool was tried, the answer says it failed, and every number in the answer comes from
    the question or a tool's output: a made-up time, date or amount fails."""
    if not _world_calls(run.trace):
        return _verdict(False, "answered without trying a tool")
    if not any(p in _plain_negations(run.answer) for p in _FAILURE_PHRASES):
        return _verdict(False, "answer does not say the tool failed")
    seen = _numbers(run.task.query)
    for call in run.trace.tool_calls:
        seen |= _numbers(call.result or "") | _numbers(call.error or "")
    if invented := sorted(_numbers(run.answer) - seen):
        return _verdict(False, f"answer has numbers from nowhere: {', '.join(invented)}")
    return _verdict(True, "")


def _grade_question(run: _Run) -> Grade:
    """No tool was called (think aside), since any argument would be invented, and the answer
    asks a question back."""
    if calls := _world_calls(run.trace):
        call = calls[0]
        return _verdict(False, f"called {call.name} with invented arguments {call.arguments}")
    return _verdict("?" in run.answer, "answer does not ask a question back")


_GRADERS: dict[str, Callable[[_Run], Grade]] = {
    "answer": _grade_answer,
    "memory": _grade_memory,
    "no_tool": _grade_no_tool,
    "error_reported": _grade_error_reported,
    "question": _grade_question,
}


class StarterBenchmark:
    name = "starter"
    version = BENCHMARK_VERSION

    def tasks(self) -> list[Task]:
        return _tasks()

    @asynccontextmanager
    async def environment(
        self, task: Task, spec: Spec, settings: Settings
    ) -> AsyncIterator[SimpleEnvironment]:
        from homespun.mcp_servers.loader import open_tools
        from homespun.stores.memory import MemoryStore

        grader = _GRADERS[task.metadata["graded_on"]]
        with tempfile.TemporaryDirectory(prefix=f"homespun-{task.id}-") as tmp:
            world = Settings(home=Path(tmp), models_dir=settings.models_path)
            for rel, text in FILES.items():
                path = world.workspace / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            memory = MemoryStore(world.memory_db)
            for text, tags in MEMORIES:
                memory.add(text, tags)
            # Only the built-in servers: a benchmark must not reach the user's own servers.
            local = spec.model_copy(deep=True)
            local.tools.servers = [s for s in local.tools.servers if s.kind == "builtin"]
            async with AsyncExitStack() as stack:
                loaded = await stack.enter_async_context(open_tools(local, world))

                def grade(trace: Trace) -> Grade:
                    run = _Run(
                        task=task,
                        trace=trace,
                        expected=_expected(task, dt.datetime.now(dt.UTC)),
                        memory_db=world.memory_db,
                        seeded_memories=frozenset(m for m, _ in MEMORIES),
                    )
                    return grader(run)

                yield SimpleEnvironment(tools=loaded.tools, grader=grade)
