"""Run the assistant of a spec over benchmark tasks, grade each run, cache the outcomes.

Rules (ARCHITECTURE.md, "The gate"): a run that errors is a failure, never dropped; outcomes
are cached by (spec hash, benchmark + version, task id, repeat), so an unchanged spec is never
re-run; every run leaves a trace (source 'eval:<benchmark>').

`loop="naive"` runs the naive-loop baseline (`learning.naive_loop`) on the same tasks, model
and tools instead of the spec's assistant. Its outcomes are cached under
`naive_loop.naive_key(spec)` (``naive:<model>:<hash of what the loop depends on>``), which can
never equal a spec's content hash, and its traces have source 'baseline:naive:<benchmark>'.
`compare` pairs two evaluations of the same tasks by task and gives the difference of their
mean scores with a 95% interval (a paired t interval, see `paired_interval`).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from langchain_core.language_models import BaseChatModel

from homespun.graphs.runner import run_assistant
from homespun.learning.naive_loop import naive_key, run_naive
from homespun.learning.tasks import Benchmark, Grade, Task
from homespun.spec import Settings, Spec
from homespun.stores.eval_cache import EvalCache, TaskOutcome
from homespun.stores.traces import TraceStore

StudentFactory = Callable[[Spec], BaseChatModel]
ProgressCallback = Callable[["TaskOutcome"], None]
EvalLoop = Literal["assistant", "naive"]
"""What runs each task: the spec's assistant, or the naive-loop baseline."""


def eval_key(spec: Spec, loop: EvalLoop = "assistant") -> str:
    """The eval-cache key of `spec` run by `loop`: its content hash, or the naive loop's key."""
    return spec.content_hash() if loop == "assistant" else naive_key(spec)


@dataclass
class EvalResult:
    spec_hash: str
    benchmark: str
    outcomes: list[TaskOutcome]

    @property
    def accuracy(self) -> float:
        return sum(o.score for o in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0

    @property
    def runs(self) -> int:
        """Student task runs actually made (cache hits excluded)."""
        return sum(not o.cached for o in self.outcomes)

    def by_category(self) -> dict[str, tuple[float, int]]:
        acc: dict[str, list[float]] = {}
        for o in self.outcomes:
            acc.setdefault(o.category, []).append(o.score)
        return {c: (sum(v) / len(v), len(v)) for c, v in sorted(acc.items())}

    def mean_latency(self) -> float:
        return sum(o.latency_s for o in self.outcomes) / max(len(self.outcomes), 1)


async def _run_one(
    spec: Spec,
    settings: Settings,
    benchmark: Benchmark,
    task: Task,
    repeat: int,
    store: TraceStore,
    student: StudentFactory | None,
    loop: EvalLoop = "assistant",
) -> TaskOutcome:
    model = student(spec) if student else None
    started = time.perf_counter()
    try:
        async with benchmark.environment(task, spec, settings) as env:
            if loop == "naive":
                result = await run_naive(
                    spec,
                    settings,
                    task.query,
                    model=model,
                    tools=env.tools,
                    store=store,
                    source=f"baseline:naive:{benchmark.name}",
                )
            else:
                result = await run_assistant(
                    spec,
                    settings,
                    task.query,
                    model=model,
                    tools=env.tools,
                    store=store,
                    source=f"eval:{benchmark.name}",
                    persist=False,
                )
            trace = result.trace
            if trace.status == "ok":
                try:
                    grade = env.grade(trace)
                except Exception as exc:  # a grader crash is a failed task, and visible
                    grade = Grade(False, 0.0, f"grader error: {type(exc).__name__}: {exc}")
            else:
                grade = Grade(False, 0.0, f"run failed: {trace.error}")
    except Exception as exc:  # the environment itself failed to open
        return TaskOutcome(
            task_id=task.id,
            category=task.category,
            repeat=repeat,
            success=False,
            score=0.0,
            reason=f"environment error: {type(exc).__name__}: {exc}",
            trace_id="",
            status="error",
            error=str(exc),
            answer=None,
            latency_s=round(time.perf_counter() - started, 4),
            prompt_tokens=0,
            completion_tokens=0,
            tool_calls=0,
        )
    return TaskOutcome(
        task_id=task.id,
        category=task.category,
        repeat=repeat,
        success=grade.success,
        score=float(grade.score),
        reason=grade.reason,
        trace_id=trace.id,
        status=trace.status,
        error=trace.error,
        answer=trace.final_answer,
        latency_s=trace.latency_s or 0.0,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        tool_calls=len(trace.tool_calls),
        energy_j=trace.energy_j,
        cost_usd=trace.cost_usd,
    )


async def evaluate(
    spec: Spec,
    settings: Settings,
    benchmark: Benchmark,
    tasks: list[Task],
    *,
    repeats: int = 1,
    concurrency: int = 1,
    cache: EvalCache | None = None,
    student: StudentFactory | None = None,
    on_outcome: ProgressCallback | None = None,
    store: TraceStore | None = None,
    loop: EvalLoop = "assistant",
) -> EvalResult:
    """Evaluate `spec` on `tasks` x `repeats`; cached outcomes are reused, not re-run.

    `loop="naive"` runs the naive-loop baseline with the spec's model, tools and turn cap
    instead of its assistant; the result's `spec_hash` is then its cache key, `naive_key`.
    """
    if loop not in ("assistant", "naive"):
        raise ValueError(f"unknown loop {loop!r}: 'assistant' or 'naive'")
    spec_hash = eval_key(spec, loop)
    store = store or TraceStore(settings.traces_db)
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(task: Task, repeat: int) -> TaskOutcome:
        if cache is not None:
            hit = cache.get(spec_hash, benchmark, task.id, repeat)
            if hit is not None:
                if on_outcome:
                    on_outcome(hit)
                return hit
        async with semaphore:
            outcome = await _run_one(spec, settings, benchmark, task, repeat, store, student, loop)
        if cache is not None:
            cache.put(spec_hash, benchmark, outcome)
        if on_outcome:
            on_outcome(outcome)
        return outcome

    outcomes = await asyncio.gather(*(one(t, r) for t in tasks for r in range(repeats)))
    return EvalResult(spec_hash=spec_hash, benchmark=benchmark.name, outcomes=list(outcomes))


# --------------------------------------------------------------------------------------------
# Paired comparison of two evaluations of the same tasks
# --------------------------------------------------------------------------------------------

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t95(df: int) -> float:
    """The two-sided 95% critical value of Student's t with `df` degrees of freedom: a table
    up to 30, then the Cornish-Fisher expansion (within 1e-3 of the exact value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(differences: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the mean of per-task differences and its 95% interval.

    A paired t interval, mean +/- t(0.975, n-1) * sd / sqrt(n), clipped to [-1, 1] (scores
    are in [0, 1]). It is approximate for few tasks and 0/1 scores, and zero-width when every
    difference is the same (it cannot see variation the tasks did not show). With fewer than
    two tasks there is no interval: (mean, None, None).
    """
    n = len(differences)
    if n == 0:
        raise ValueError("no paired tasks to compare")
    mean = statistics.fmean(differences)
    if n < 2:
        return mean, None, None
    half = t95(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, max(-1.0, mean - half), min(1.0, mean + half)


@dataclass(frozen=True)
class PairedDifference:
    """One category (or 'all') of a paired comparison of evaluations A and B."""

    category: str
    n: int
    """Tasks paired (each task's score is its mean over repeats)."""
    a: float
    b: float
    diff: float
    """a - b: the mean of the per-task differences."""
    low: float | None
    high: float | None
    """The 95% interval of `diff`; None when n < 2."""


def _task_scores(result: EvalResult) -> dict[str, tuple[str, float]]:
    """task id -> (category, mean score over repeats)."""
    scores: dict[str, list[float]] = {}
    category: dict[str, str] = {}
    for o in result.outcomes:
        scores.setdefault(o.task_id, []).append(o.score)
        category[o.task_id] = o.category
    return {t: (category[t], statistics.fmean(s)) for t, s in scores.items()}


def compare(a: EvalResult, b: EvalResult) -> list[PairedDifference]:
    """Per category, then 'all': A's and B's accuracy, A - B and its paired 95% interval.

    Both must hold the same tasks (a task run under only one cannot be paired, and is never
    silently dropped: ValueError)."""
    sa, sb = _task_scores(a), _task_scores(b)
    if set(sa) != set(sb):
        unpaired = sorted(set(sa) ^ set(sb))
        raise ValueError(f"the evaluations do not hold the same tasks: {unpaired[:5]} unpaired")
    groups: dict[str, list[str]] = {}
    for task_id, (category, _) in sa.items():
        groups.setdefault(category, []).append(task_id)
    rows = []
    for category, ids in [*sorted(groups.items()), ("all", list(sa))]:
        if not ids:
            continue
        diff, low, high = paired_interval([sa[t][1] - sb[t][1] for t in ids])
        rows.append(
            PairedDifference(
                category=category,
                n=len(ids),
                a=statistics.fmean(sa[t][1] for t in ids),
                b=statistics.fmean(sb[t][1] for t in ids),
                diff=diff,
                low=low,
                high=high,
            )
        )
    return rows
