"""Run the assistant of a spec over benchmark tasks, grade each run, cache the outcomes.

Rules (ARCHITECTURE.md, "The gate"): a run that errors is a failure, never dropped; outcomes
are cached by (spec hash, benchmark + version, task id, repeat), so an unchanged spec is never
re-run; every run leaves a trace (source 'eval:<benchmark>').
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel

from homespun.graphs.runner import run_assistant
from homespun.learning.tasks import Benchmark, Grade, Task
from homespun.spec import Settings, Spec
from homespun.stores.eval_cache import EvalCache, TaskOutcome
from homespun.stores.traces import TraceStore

StudentFactory = Callable[[Spec], BaseChatModel]
ProgressCallback = Callable[["TaskOutcome"], None]


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
) -> TaskOutcome:
    model = student(spec) if student else None
    started = time.perf_counter()
    try:
        async with benchmark.environment(task, spec, settings) as env:
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
) -> EvalResult:
    """Evaluate `spec` on `tasks` x `repeats`; cached outcomes are reused, not re-run."""
    spec_hash = spec.content_hash()
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
            outcome = await _run_one(spec, settings, benchmark, task, repeat, store, student)
        if cache is not None:
            cache.put(spec_hash, benchmark, outcome)
        if on_outcome:
            on_outcome(outcome)
        return outcome

    outcomes = await asyncio.gather(*(one(t, r) for t in tasks for r in range(repeats)))
    return EvalResult(spec_hash=spec_hash, benchmark=benchmark.name, outcomes=list(outcomes))
