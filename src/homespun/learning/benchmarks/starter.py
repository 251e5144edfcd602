"""The built-in starter benchmark: personal tool-use tasks over the core MCP tools.

Small and deterministic, so a spec search on the embedded model has signal out of the box:
arithmetic (calculator), recall (search_memory over seeded memories), storing (remember,
graded on the memory database), files (read_file over a seeded workspace) and time
(current_time). Each task runs in a fresh temporary world; grading reads the final answer
or that world, never a tool the agent can call.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import Settings, Spec
from homespun.stores.traces import Trace

BENCHMARK_VERSION = "starter-1"

# Facts seeded into memory for the recall tasks (and as distractors for each other).
MEMORIES = (
    ("My dentist is Dr. Okafor.", "health"),
    ("My sister Lena's birthday is on March 14.", "family"),
    ("The wifi password at the cabin is bluefinch42.", "home"),
    ("My passport expires in August 2029.", "travel"),
    ("My favourite tea is genmaicha.", "food"),
    ("The plumber's name is Ravi Menon.", "home"),
    ("My bike lock code is 3817.", "home"),
    ("My manager is called Ines Duarte.", "work"),
)

# Files seeded into the workspace for the file tasks.
FILES = {
    "notes/todo.txt": "Buy oat milk\nCall the landlord about the heater\nReturn library books\n",
    "notes/recipes.md": "# Pancakes\n2 eggs, 250 g flour, 500 ml milk. Rest 20 minutes.\n",
    "projects/garden.txt": "Plant the tomatoes on May 10. Water the basil daily.\n",
    "trips/lisbon.txt": "Flight TP1345 departs 07:40. Hotel: Casa Amarela, Rua do Sol 12.\n",
}

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
]
_STORE = [
    ("store-01", "Remember that my gym locker is number 52.", "52"),
    ("store-02", "Please remember: the cat's vet is Dr. Haas.", "Haas"),
    ("store-03", "Remember that I parked on level 3.", "level 3"),
    ("store-04", "Remember my library card number is 88213.", "88213"),
    ("store-05", "Save this: the dinner reservation is at 19:30.", "19:30"),
    ("store-06", "Remember that Tom is allergic to peanuts.", "peanuts"),
]
_FILES = [
    ("files-01", "Read notes/todo.txt. What milk do I need to buy?", "oat"),
    ("files-02", "Read notes/recipes.md. How many eggs do pancakes need?", "2"),
    ("files-03", "Read projects/garden.txt. When do I plant the tomatoes?", "May 10"),
    ("files-04", "Read trips/lisbon.txt. What is my flight number?", "TP1345"),
    ("files-05", "Read trips/lisbon.txt. What is the hotel called?", "Casa Amarela"),
    ("files-06", "Read notes/todo.txt. Who do I need to call?", "landlord"),
]
_TIME = [
    ("time-01", "What year is it now? Use current_time.", "{year}"),
    ("time-02", "Use current_time: what is the current year?", "{year}"),
    ("time-03", "What month number is it now (1-12)? Use current_time.", "{month}"),
    ("time-04", "Use current_time to tell me today's date (YYYY-MM-DD).", "{date}"),
]


def _tasks() -> list[Task]:
    out: list[Task] = []
    for group, category, graded_on in (
        (_ARITHMETIC, "arithmetic", "answer"),
        (_RECALL, "memory_recall", "answer"),
        (_STORE, "memory_store", "memory"),
        (_FILES, "files", "answer"),
        (_TIME, "time", "answer"),
    ):
        for task_id, query, gold in group:
            out.append(
                Task(
                    id=task_id,
                    query=query,
                    category=category,
                    suite="starter",
                    gold=gold,
                    metadata={"needs_tool": True, "graded_on": graded_on},
                )
            )
    return out


def _normalise(text: str) -> str:
    text = text.lower().replace(",", "")
    return re.sub(r"(\d)\.0+\b", r"\1", text)  # "1517.0" counts as "1517"


def _expected(task: Task, now: dt.datetime) -> str:
    assert task.gold is not None
    return task.gold.format(year=now.year, month=now.month, date=now.date().isoformat())


def _contains(haystack: str, needle: str) -> bool:
    h, n = _normalise(haystack), _normalise(needle)
    if re.fullmatch(r"\d+", n):  # numbers must match whole, "12" is not in "2012"
        return re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", h) is not None
    return n in h


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
                    now = dt.datetime.now(dt.UTC)
                    expected = _expected(task, now)
                    if task.metadata.get("graded_on") == "memory":
                        stored = [h.text for h in MemoryStore(world.memory_db).all()]
                        new = [t for t in stored if t not in {m for m, _ in MEMORIES}]
                        ok = any(_contains(t, expected) for t in new)
                        return Grade(
                            ok,
                            float(ok),
                            "stored" if ok else f"no new memory mentions {expected!r}",
                        )
                    answer = trace.final_answer or ""
                    ok = _contains(answer, expected)
                    return Grade(
                        ok, float(ok), "" if ok else f"answer does not contain {expected!r}"
                    )

                yield SimpleEnvironment(tools=loaded.tools, grader=grade)
