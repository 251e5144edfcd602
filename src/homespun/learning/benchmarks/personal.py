"""The personal benchmark: tasks mined from the user's own well-rated traces.

A trace the user rated highly (feedback >= 0.7 by default) says "this is a thing I ask";
it does not say the student's answer was right, and the student's answer is never the
reference (graded against its own answers, a benchmark measures nothing). The *teacher* writes
the reference: for each query (scrubbed, and without the student's answer, so it is not
anchored on it) a gold answer, the key phrases any correct answer contains (`must_contain`,
what we grade on) and a skill label (the cluster scope).

Each refresh writes a new version, HOMESPUN_HOME/learning/benchmarks/personal_vN.json, and
never rewrites an old one: the evaluation cache keys on the version, and a session that ran on
v1 can always be re-checked on v1. A task's id depends only on its normalised query, so the
same question keeps its id from version to version.

Tasks run over the spec's built-in tools in a temporary world that is a *copy* of the user's
memory and workspace: an evaluation that stores a memory or touches a file never changes the
user's real ones.

Cold start (the original system's user docs): fewer than MIN_TRACES traces of real use and
there is nothing to learn from; fewer than MIN_HIGH_FEEDBACK well-rated traces and there is
enough for a diagnosis but not for a gate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field, ValidationError

from homespun.engines.cost import max_output_tokens, metered_call
from homespun.engines.providers import bound_reply_tokens
from homespun.learning.privacy import eligible_traces, scrub_text
from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import Settings, Spec
from homespun.stores.traces import Trace, TraceStore

__all__ = [
    "BATCH_SIZE",
    "MIN_HIGH_FEEDBACK",
    "MIN_TRACES",
    "SUBMIT_TOOL",
    "ColdStart",
    "NoPersonalBenchmark",
    "PersonalBenchmark",
    "PersonalBenchmarkError",
    "ReadinessReport",
    "contains_phrase",
    "latest_personal",
    "load_personal",
    "normalise_query",
    "readiness",
    "refresh_personal_benchmark",
    "task_id_for",
]

MIN_TRACES = 20  # fewer traces of real use in total: "Not enough traces yet", no session
MIN_HIGH_FEEDBACK = 10  # fewer eligible high-feedback traces: diagnosis only, no gate
BATCH_SIZE = 10  # queries per teacher call
# The bound on a reply per query in it, where the teacher allows one (`bound_reply_tokens`:
# a local teacher decoding under the tool's JSON schema): a concise gold answer and a few
# key phrases. A local teacher writes ~10 tokens/s on 2 cores (Qwen2.5-Coder-1.5B).
GOLD_REPLY_TOKENS_PER_QUERY = 160
SUBMIT_TOOL = "submit_gold_answers"
EVAL_SOURCE_PREFIX = "eval:"  # traces of evaluation runs, not of the user

_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|SECRET|CARD|IBAN)>")
_FILE = re.compile(r"^personal_v(\d+)\.json$")


class PersonalBenchmarkError(RuntimeError):
    """The personal benchmark could not be built."""


class ColdStart(PersonalBenchmarkError):
    """Too little usage to learn from yet."""


class NoPersonalBenchmark(FileNotFoundError):
    """No personal_vN.json (or not the version asked for) under HOMESPUN_HOME."""


def _not_enough_traces(n: int) -> str:
    return (
        f"Not enough traces yet: {n} of {MIN_TRACES} (use the assistant more, or run on "
        "--benchmark starter)"
    )


# --------------------------------------------------------------------------- mining


def normalise_query(query: str) -> str:
    """Lower-case, punctuation stripped, whitespace collapsed: what makes two queries 'the
    same question' for deduplication and for task ids."""
    text = unicodedata.normalize("NFKC", query).lower()
    text = re.sub(r"[^\w\s]", "", text)
    return " ".join(text.split())


def task_id_for(query: str) -> str:
    """Stable across versions for the same normalised query."""
    return "p-" + hashlib.sha256(normalise_query(query).encode()).hexdigest()[:10]


def _user_traces(settings: Settings) -> list[Trace]:
    """Every trace of real use (evaluation runs excluded), newest first. A missing database
    is no traces; one that cannot be read raises (never a silent zero)."""
    if not settings.traces_db.exists():
        return []
    store = TraceStore(settings.traces_db)
    rows = store.db.query(
        "select * from traces where coalesce(source, '') not like ? order by created_at desc",
        [EVAL_SOURCE_PREFIX + "%"],
    )
    return [TraceStore._trace(row, None) for row in rows]


def _high_feedback(traces: list[Trace], min_feedback: float) -> list[Trace]:
    """Finished, well-rated, not sensitive (privacy.eligible_traces), not an evaluation."""
    return [
        t
        for t in eligible_traces(traces)
        if t.status == "ok"
        and t.feedback is not None
        and t.feedback >= min_feedback
        and not (t.source or "").startswith(EVAL_SOURCE_PREFIX)
        and t.query.strip()
    ]


def _deduplicate(traces: list[Trace]) -> list[Trace]:
    """One trace per normalised query, the newest; newest first."""
    newest: dict[str, Trace] = {}
    for t in traces:
        key = normalise_query(t.query)
        if not key:
            continue
        if key not in newest or t.created_at > newest[key].created_at:
            newest[key] = t
    return sorted(newest.values(), key=lambda t: t.created_at, reverse=True)


# --------------------------------------------------------------------------- readiness


@dataclass
class ReadinessReport:
    traces: int
    """Traces of real use (evaluation runs are not counted)."""
    high_feedback: int
    """Of those: finished, rated >= min_feedback, not sensitive."""
    ready_for_search: bool
    """Enough of both for a personal benchmark that can gate edits."""
    message: str
    """What to tell the user."""


def readiness(settings: Settings, min_feedback: float = 0.7) -> ReadinessReport:
    traces = _user_traces(settings)
    n, high = len(traces), len(_high_feedback(traces, min_feedback))
    if n < MIN_TRACES:
        return ReadinessReport(n, high, False, _not_enough_traces(n))
    if high < MIN_HIGH_FEEDBACK:
        return ReadinessReport(
            n,
            high,
            False,
            (
                f"{n} traces, but only {high} of {MIN_HIGH_FEEDBACK} high-feedback traces "
                f"(feedback >= {min_feedback:g}): enough for a diagnosis, not for a personal "
                "benchmark to gate edits. Rate answers with `homespun feedback TRACE_ID up`, or "
                "run on --benchmark starter"
            ),
        )
    return ReadinessReport(
        n,
        high,
        True,
        (
            f"{n} traces, {high} high-feedback (feedback >= {min_feedback:g}): ready for a "
            "personal benchmark (`homespun learning benchmark refresh`)"
        ),
    )


# --------------------------------------------------------------------------- teacher


class GoldAnswer(BaseModel):
    index: int = Field(description="The number of the query in the list.")
    gold: str = Field(description="A correct, concise answer to the query.")
    must_contain: list[str] = Field(
        description="1-3 short key phrases (a number, a name, a date) that every correct "
        "answer contains, matched case-insensitively as substrings."
    )
    category: str = Field(
        description="The skill the query exercises, short snake_case, e.g. 'arithmetic', "
        "'memory_recall', 'memory_store', 'files', 'scheduling', 'time'."
    )


class GoldAnswers(BaseModel):
    answers: list[GoldAnswer] = Field(
        description="One entry per query you can answer; leave out queries you cannot."
    )


def _submit_gold_answers(answers: list[GoldAnswer]) -> str:  # never run: the reply is read
    return "ok"


def _submit_tool() -> StructuredTool:
    return StructuredTool.from_function(
        func=_submit_gold_answers,
        name=SUBMIT_TOOL,
        args_schema=GoldAnswers,
        description="Submit the gold answers for the numbered queries. Call exactly once.",
    )


_SYSTEM = """\
You write the reference answers of a benchmark for a personal AI assistant. The assistant \
runs on the user's machine with tools: a calculator, a clock, a long-term memory \
(remember / search_memory) and the user's workspace files. You see only the user's questions \
(personal data is replaced by placeholders such as <EMAIL> or <SECRET>), not the assistant's \
answers.

For each numbered query give:
- gold: a correct, concise answer;
- must_contain: 1-3 short key phrases that ANY correct answer must contain (the decisive \
number, name, date or word), short enough to appear verbatim, never a placeholder;
- category: the skill it exercises, short snake_case (arithmetic, memory_recall, \
memory_store, files, time, scheduling, writing, general_knowledge, ...).

Leave out a query when you cannot know what its correct answer contains (for example it \
depends on the user's stored memories or files, which you cannot see) rather than guess. \
Submit everything with one call of submit_gold_answers."""


def _batch_prompt(queries: list[str]) -> list[BaseMessage]:
    lines = [f"[{i}] {json.dumps(q, ensure_ascii=False)}" for i, q in enumerate(queries)]
    return [SystemMessage(_SYSTEM), HumanMessage("Queries:\n" + "\n".join(lines))]


def _category(label: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")[:40].strip("_")
    return slug or "general"


def _phrases(raw: list[str]) -> list[str]:
    out: list[str] = []
    for phrase in raw:
        phrase = " ".join(str(phrase).split())
        # A placeholder from scrubbing can never appear in the student's answer.
        if (
            phrase
            and not _PLACEHOLDER.search(phrase)
            and phrase.lower() not in {p.lower() for p in out}
        ):
            out.append(phrase)
    return out


@dataclass
class _Counts:
    candidates: int = 0  # eligible high-feedback traces
    distinct: int = 0  # after deduplication
    asked: int = 0  # queries sent to the teacher
    teacher_calls: int = 0
    kept: int = 0
    skipped_by_teacher: int = 0  # no (usable) answer for the query
    dropped_empty_must_contain: int = 0
    dropped_bad_index: int = 0
    dropped_invalid: int = 0  # an entry that does not match the schema, or a repeat
    notes: list[str] = field(default_factory=list)


def _parse_reply(reply: AIMessage, n: int, counts: _Counts) -> dict[int, GoldAnswer]:
    calls = [c for c in reply.tool_calls if c.get("name") == SUBMIT_TOOL]
    if not calls:
        counts.notes.append("a teacher reply had no submit_gold_answers call")
        return {}
    raw = calls[0].get("args", {}).get("answers")
    if not isinstance(raw, list):
        counts.notes.append("a submit_gold_answers call had no 'answers' list")
        return {}
    got: dict[int, GoldAnswer] = {}
    for item in raw:
        try:  # entry by entry: one bad entry does not cost the others
            answer = GoldAnswer.model_validate(item)
        except ValidationError:
            counts.dropped_invalid += 1
            continue
        if not 0 <= answer.index < n:
            counts.dropped_bad_index += 1
            continue
        phrases = _phrases(answer.must_contain)
        if not phrases:
            counts.dropped_empty_must_contain += 1
            continue
        if answer.index in got or not answer.gold.strip():
            counts.dropped_invalid += 1
            continue
        got[answer.index] = answer.model_copy(update={"must_contain": phrases})
    return got


async def _ask_teacher(
    teacher: BaseChatModel, meter: Any, queries: list[str], counts: _Counts
) -> dict[int, GoldAnswer]:
    tool = _submit_tool()
    teacher = bound_reply_tokens(teacher, GOLD_REPLY_TOKENS_PER_QUERY * max(1, len(queries)))
    bound = teacher.bind_tools([tool], tool_choice=SUBMIT_TOOL)
    reply = await metered_call(
        meter,
        bound,
        _batch_prompt(queries),
        tools=[tool],
        max_output_tokens=max_output_tokens(teacher),
    )
    counts.teacher_calls += 1
    return _parse_reply(reply, len(queries), counts)


# --------------------------------------------------------------------------- refresh


def _benchmarks_dir(settings: Settings) -> Path:
    return settings.benchmarks_dir


def _versions(settings: Settings) -> dict[int, Path]:
    folder = _benchmarks_dir(settings)
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        m = _FILE.match(path.name)
        if m and path.is_file():
            out[int(m.group(1))] = path
    return out


def _write_new_version(settings: Settings, payload: dict[str, Any]) -> Path:
    """Write personal_v(max+1).json atomically, never over an existing file."""
    folder = _benchmarks_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        version = max(_versions(settings), default=0) + 1
        payload["version"] = version
        target = folder / f"personal_v{version}.json"
        fd, tmp = tempfile.mkstemp(prefix=".personal-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=2, ensure_ascii=False)
                f.write("\n")
            try:
                os.link(tmp, target)  # fails if another refresh took this number
            except FileExistsError:
                continue
            return target
        finally:
            os.unlink(tmp)


async def refresh_personal_benchmark(
    settings: Settings,
    *,
    teacher: BaseChatModel,
    meter: Any,
    min_feedback: float = 0.7,
    max_tasks: int = 200,
    scrub: bool = True,
) -> Path:
    """Mine the user's well-rated traces into a new personal_vN.json; returns its path.

    Only the queries go to the teacher (scrubbed when `scrub`), in batches of BATCH_SIZE;
    `meter.check()` comes before every call (BudgetExceeded propagates, nothing is written)
    and `meter.record()` after. Raises ColdStart when no trace qualifies and
    PersonalBenchmarkError when the teacher gave no usable answer.
    """
    traces = _user_traces(settings)
    counts = _Counts()
    eligible = _high_feedback(traces, min_feedback)
    counts.candidates = len(eligible)
    chosen = _deduplicate(eligible)
    counts.distinct = len(chosen)
    if not chosen:
        if len(traces) < MIN_TRACES:
            raise ColdStart(_not_enough_traces(len(traces)))
        raise ColdStart(
            f"No trace qualifies for the personal benchmark: {len(traces)} traces, 0 finished, "
            f"not sensitive, with feedback >= {min_feedback:g} (need {MIN_HIGH_FEEDBACK}; rate "
            "answers with `homespun feedback TRACE_ID up`, or run on --benchmark starter)"
        )
    chosen = chosen[: max(0, max_tasks)]
    tasks: list[dict[str, Any]] = []
    for start in range(0, len(chosen), BATCH_SIZE):
        batch = chosen[start : start + BATCH_SIZE]
        queries = [scrub_text(t.query) if scrub else t.query for t in batch]
        counts.asked += len(batch)
        answers = await _ask_teacher(teacher, meter, queries, counts)
        counts.skipped_by_teacher += len(batch) - len(answers)
        for index, answer in sorted(answers.items()):
            trace = batch[index]
            tasks.append(
                {
                    "id": task_id_for(trace.query),
                    "query": trace.query,  # the real question: the student runs it locally
                    "category": _category(answer.category),
                    "gold": answer.gold.strip(),
                    "must_contain": answer.must_contain,
                    "source_trace": trace.id,
                }
            )
    counts.kept = len(tasks)
    if not tasks:
        raise PersonalBenchmarkError(
            f"The teacher gave no usable gold answer for {counts.asked} queries "
            f"({counts.skipped_by_teacher} left out, {counts.dropped_empty_must_contain} with "
            f"no must_contain, {counts.dropped_bad_index} with a bad index, "
            f"{counts.dropped_invalid} invalid); nothing was written"
        )
    stats = {k: v for k, v in vars(counts).items() if k != "notes"}
    payload = {
        "version": 0,  # set when the file is written
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "teacher": _teacher_name(teacher, meter),
        "min_feedback": min_feedback,
        "scrubbed": scrub,
        "stats": {**stats, "notes": counts.notes},
        "tasks": tasks,
    }
    return _write_new_version(settings, payload)


def _teacher_name(teacher: Any, meter: Any) -> str:
    for value in (
        getattr(meter, "model", None),
        getattr(teacher, "model", None),
        getattr(teacher, "model_name", None),
    ):
        if isinstance(value, str) and value:
            return value
    return type(teacher).__name__


# --------------------------------------------------------------------------- grading


def _norm_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def contains_phrase(answer: str, phrase: str) -> bool:
    """Case-insensitive, whitespace-normalised substring; a number must match whole
    ("12" is not in "2012")."""
    a, p = _norm_text(answer), _norm_text(phrase)
    if not p:
        return True
    if re.fullmatch(r"\d+", p):
        return re.search(rf"(?<![\d.,]){re.escape(p)}(?![\d])", a) is not None
    return p in a


def _grader(task: Task) -> Callable[[Trace], Grade]:
    phrases: list[str] = list(task.metadata.get("must_contain") or [])

    def grade(trace: Trace) -> Grade:
        if trace.status != "ok":
            return Grade(False, 0.0, f"run failed: {trace.error or trace.status}")
        answer = trace.final_answer or ""
        missing = [p for p in phrases if not contains_phrase(answer, p)]
        if missing:
            return Grade(
                False, 0.0, "answer does not contain " + ", ".join(repr(p) for p in missing)
            )
        return Grade(True, 1.0, "")

    return grade


def _copy_memory(src: Path, dst: Path) -> None:
    """A consistent copy through SQLite's backup API (the WAL included), reading the
    user's database read-only."""
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _copy_workspace(src: Path, dst: Path) -> None:
    """Copy files; a symlink is copied as the file it points to when that file is inside
    the workspace, and left out otherwise (the copy must not reach the user's real files)."""
    root = src.resolve()

    def ignore(folder: str, names: list[str]) -> list[str]:
        skipped = []
        for name in names:
            path = Path(folder) / name
            if path.is_symlink():
                try:
                    real = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    skipped.append(name)
                    continue
                if not real.is_relative_to(root) or real.is_dir():
                    skipped.append(name)
        return skipped

    shutil.copytree(root, dst, symlinks=False, ignore=ignore, dirs_exist_ok=True)


# --------------------------------------------------------------------------- benchmark


class PersonalBenchmark:
    """One personal_vN.json as a Benchmark."""

    name = "personal"

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NoPersonalBenchmark(f"{self.path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise PersonalBenchmarkError(
                f"{self.path} is not a readable personal benchmark: {exc}"
            ) from exc
        m = _FILE.match(self.path.name)
        number = data.get("version", int(m.group(1)) if m else None)
        if not isinstance(number, int) or not isinstance(data.get("tasks"), list):
            raise PersonalBenchmarkError(
                f"{self.path} is not a personal benchmark (needs an "
                "integer 'version' and a 'tasks' list)"
            )
        self.number = number
        self.version = f"personal_v{number}"
        self.data = data
        self.created_at: str = data.get("created_at", "")
        self.teacher: str = data.get("teacher", "")
        self.min_feedback: float | None = data.get("min_feedback")
        self.stats: dict[str, Any] = data.get("stats", {})
        self._tasks = [
            Task(
                id=t["id"],
                query=t["query"],
                category=t.get("category") or "general",
                suite="personal",
                gold=t.get("gold"),
                metadata={"must_contain": list(t.get("must_contain") or []), "needs_tool": False},
            )
            for t in data["tasks"]
        ]

    def __repr__(self) -> str:
        return f"PersonalBenchmark({self.version}, {len(self._tasks)} tasks)"

    def tasks(self) -> list[Task]:
        return list(self._tasks)

    @asynccontextmanager
    async def environment(
        self, task: Task, spec: Spec, settings: Settings
    ) -> AsyncIterator[SimpleEnvironment]:
        from homespun.mcp_servers.loader import open_tools

        with tempfile.TemporaryDirectory(prefix=f"homespun-{task.id}-") as tmp:
            world = Settings(home=Path(tmp) / "home", models_dir=settings.models_path)
            world.home.mkdir(parents=True)
            if settings.memory_db.is_file():
                _copy_memory(settings.memory_db, world.memory_db)
            if settings.workspace.is_dir():
                _copy_workspace(settings.workspace, world.workspace)
            # Only the built-in servers: external ones would act on the user's real accounts.
            local = spec.model_copy(deep=True)
            local.tools.servers = [s for s in local.tools.servers if s.kind == "builtin"]
            async with AsyncExitStack() as stack:
                loaded = await stack.enter_async_context(open_tools(local, world))
                yield SimpleEnvironment(tools=loaded.tools, grader=_grader(task))


def latest_personal(settings: Settings) -> Path | None:
    versions = _versions(settings)
    return versions[max(versions)] if versions else None


def load_personal(settings: Settings, version: int | None = None) -> PersonalBenchmark:
    """The latest personal benchmark (or `version`)."""
    versions = _versions(settings)
    if not versions:
        raise NoPersonalBenchmark(
            f"No personal benchmark yet under {_benchmarks_dir(settings)}: run `homespun "
            "learning benchmark refresh` (it needs traces with feedback), or use --benchmark "
            "starter"
        )
    if version is None:
        return PersonalBenchmark(versions[max(versions)])
    if version not in versions:
        have = ", ".join(f"v{n}" for n in sorted(versions))
        raise NoPersonalBenchmark(
            f"No personal benchmark personal_v{version} (have: {have}); run `homespun learning "
            "benchmark refresh` to make a new one"
        )
    return PersonalBenchmark(versions[version])
