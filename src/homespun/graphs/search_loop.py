"""The multi-session loop (paper Algorithm 1) and review decisions.

Sessions run until `sessions` are done, or k sessions in a row bring no gate-score
improvement above eps (stagnation), or a teacher budget is spent. Budgets are checked
before every teacher call (CostMeter) and before every session here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from homespun.engines.cost import CostMeter
from homespun.graphs.search import (
    EventCallback,
    SearchContext,
    SearchState,
    TeacherFailed,
    build_search_graph,
)
from homespun.learning.evaluation import StudentFactory
from homespun.learning.proposers.base import Proposer
from homespun.learning.tasks import Benchmark, Task
from homespun.spec import Settings, Spec, load_spec
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore
from homespun.stores.sqlite import ensure_private_file


class SearchSetupError(RuntimeError):
    pass


def get_benchmark(name: str, settings: Settings | None = None) -> Benchmark:
    """'starter' | 'personal' | 'agentdojo:SUITE' (errors as SearchSetupError)."""
    from homespun.learning.benchmarks.registry import UnknownBenchmark
    from homespun.learning.benchmarks.registry import get_benchmark as lookup

    try:
        return lookup(name, settings)
    except UnknownBenchmark as exc:
        raise SearchSetupError(str(exc)) from exc


@dataclass
class LoopResult:
    sessions: list[str] = field(default_factory=list)
    stopped_because: str = ""
    paused_proposal: str | None = None
    gate_scores: list[tuple[float | None, float | None]] = field(default_factory=list)
    # Accuracy on the untouched test split, (before, after) per session; (None, None) when
    # the session had none. Reported only: stagnation is judged on the gate score, since a
    # loop that stopped on the test score would be choosing on the test split.
    test_scores: list[tuple[float | None, float | None]] = field(default_factory=list)


def _store(settings: Settings) -> LearningStore:
    return LearningStore(settings.learning_db)


def _teacher_and_meter(
    spec: Spec, settings: Settings, store: LearningStore, teacher: BaseChatModel | None
) -> tuple[BaseChatModel | None, CostMeter]:
    from homespun.engines.providers import build_teacher

    budgets = spec.learning.budgets
    name = spec.learning.teacher
    if teacher is None and name:
        teacher = build_teacher(name, settings=settings)
    if teacher is not None and not name:  # a teacher object handed in: price by its model id
        name = (
            getattr(teacher, "model", None)
            or getattr(teacher, "model_name", None)
            or type(teacher).__name__
        )
    meter = CostMeter(
        session_cap_usd=budgets.max_cost_per_session_usd,
        total_cap_usd=budgets.max_total_cost_usd,
        spent_before_usd=store.total_cost(),
        model=name or "none",
    )
    return teacher, meter


def _proposer(name: str, teacher: BaseChatModel | None) -> Proposer:
    from homespun.learning.proposers import make_proposer

    if name == "llm" and teacher is None:
        raise SearchSetupError(
            "learning.proposer = 'llm' needs a teacher: set learning.teacher "
            "(e.g. 'anthropic:claude-opus-4-6') or use --proposer random"
        )
    return make_proposer(name)


@asynccontextmanager
async def _graph(settings: Settings) -> AsyncIterator[CompiledStateGraph]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = ensure_private_file(settings.search_db)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield build_search_graph(checkpointer=saver)


def search_context(
    settings: Settings,
    spec: Spec,
    benchmark: Benchmark,
    proposer: str,
    *,
    teacher: BaseChatModel | None = None,
    student: StudentFactory | None = None,
    on_event: EventCallback | None = None,
    concurrency: int = 1,
    tasks: list[Task] | None = None,
) -> SearchContext:
    """The run context of one session: the teacher (`teacher`, else the spec's), a cost meter
    for it against the spec's budgets, and the named proposer (errors as SearchSetupError).
    Each teacher call is an event for `on_event`: "teacher_call" with state "start", then
    "done" with its seconds and whether it succeeded."""
    t, meter = _teacher_and_meter(spec, settings, _store(settings), teacher)
    if on_event is not None:
        meter.on_call = lambda state, data: on_event("teacher_call", {"state": state, **data})
    return SearchContext(
        settings=settings,
        benchmark=benchmark,
        proposer=_proposer(proposer, t),
        teacher=t,
        meter=meter,
        student=student,
        concurrency=concurrency,
        on_event=on_event,
        tasks=tasks,
    )


async def _drive(
    graph: CompiledStateGraph,
    inputs: SearchState | Command | None,
    sid: str,
    context: SearchContext,
) -> dict:
    config = {"configurable": {"thread_id": sid}, "recursion_limit": 200}
    return await graph.ainvoke(inputs, config, context=context)


async def run_search(
    settings: Settings,
    *,
    benchmark: str = "starter",
    proposer: str | None = None,
    sessions: int = 1,
    student: StudentFactory | None = None,
    teacher: BaseChatModel | None = None,
    on_event: EventCallback | None = None,
    concurrency: int = 1,
    resume: bool = False,
    tasks: list[Task] | None = None,
) -> LoopResult:
    """Run up to `sessions` search sessions (or resume an interrupted one first)."""
    repo = CheckpointRepo(settings.home, settings.spec_path)
    store = _store(settings)
    out = LoopResult()
    diagnosis_only = False
    if benchmark.startswith("personal"):
        from homespun.learning.benchmarks.personal import ColdStart, readiness

        spec_now = load_spec(settings.spec_path)
        ready = readiness(settings, spec_now.learning.privacy.min_feedback)
        if ready.traces < 20:
            raise ColdStart(ready.message)
        diagnosis_only = not ready.ready_for_search
        if on_event and diagnosis_only:
            on_event("note", {"text": ready.message})
    bench = get_benchmark(benchmark, settings)
    async with _graph(settings) as graph:
        if resume:
            sid = _resumable(store)
            if sid is None:
                out.stopped_because = "nothing to resume"
                return out
            row = store.session(sid)
            if row.status == "paused":
                pending = store.proposals(sid, status="pending_review")
                out.sessions.append(sid)
                out.paused_proposal = pending[0]["id"] if pending else None
                out.stopped_because = "paused for review"
                return out
            context = search_context(
                settings,
                load_spec(settings.spec_path),
                get_benchmark(row.benchmark, settings),
                row.proposer,
                teacher=teacher,
                student=student,
                on_event=on_event,
                concurrency=concurrency,
                tasks=tasks,
            )
            if row.status == "failed":
                store.update_session(sid, status="running")
            try:
                result = await _drive(graph, None, sid, context)
            except Exception as exc:
                _record_failure(store, sid, exc)
                raise
            out.sessions.append(sid)
            if "__interrupt__" in result:
                out.paused_proposal = result["__interrupt__"][0].value["proposal_id"]
                out.stopped_because = "paused for review"
                return out
            sessions -= 1
        stagnant = 0
        best: float | None = None
        for _ in range(max(0, sessions)):
            repo.ensure_clean()
            spec = load_spec(settings.spec_path)
            k, eps = spec.learning.loop.stagnation_k, spec.learning.loop.stagnation_eps
            if store.total_cost() >= spec.learning.budgets.max_total_cost_usd:
                out.stopped_because = "total teacher budget spent"
                break
            chosen = proposer or spec.learning.proposer
            context = search_context(
                settings,
                spec,
                bench,
                chosen,
                teacher=teacher,
                student=student,
                on_event=on_event,
                concurrency=concurrency,
                tasks=tasks,
            )
            sid = store.new_session(
                benchmark=bench.name,
                proposer=chosen,
                teacher=spec.learning.teacher,
                spec_hash=spec.content_hash(),
            )
            out.sessions.append(sid)
            if on_event:
                on_event(
                    "session_start",
                    {
                        "session_id": sid,
                        "benchmark": bench.name,
                        "proposer": chosen,
                        "teacher": spec.learning.teacher,
                    },
                )
            try:
                result = await _drive(
                    graph,
                    {
                        "session_id": sid,
                        "status": "running",
                        "approvals": {},
                        "diagnosis_only": diagnosis_only,
                    },
                    sid,
                    context,
                )
            except Exception as exc:
                _record_failure(store, sid, exc)
                raise
            if "__interrupt__" in result:
                out.paused_proposal = result["__interrupt__"][0].value["proposal_id"]
                out.stopped_because = "paused for review"
                return out
            if diagnosis_only:
                out.stopped_because = "diagnosis only (cold start)"
                break
            row = store.session(sid)
            out.gate_scores.append((row.gate_score_before, row.gate_score_after))
            out.test_scores.append((row.test_score_before, row.test_score_after))
            score = row.gate_score_after
            if score is not None and (best is None or score > best + eps):
                best, stagnant = score, 0
            else:
                stagnant += 1
            if stagnant >= k:
                out.stopped_because = f"no gate improvement above {eps} in {k} sessions"
                break
        else:
            out.stopped_because = out.stopped_because or "session count reached"
    return out


def _record_failure(store: LearningStore, sid: str, exc: Exception) -> None:
    from homespun.engines.providers import one_line

    note = str(exc) if isinstance(exc, TeacherFailed) else one_line(exc)
    store.update_session(sid, status="failed", note=note)


def _resumable(store: LearningStore) -> str | None:
    """The newest session that is still running or paused for review, or the newest session
    of all when it failed (a teacher that timed out: its checkpoint stays at the phase that
    failed). An older failed session stays failed: later sessions have moved the spec on."""
    for i, row in enumerate(store.sessions(limit=50)):
        if row.status in ("running", "paused") or (i == 0 and row.status == "failed"):
            return row.id
    return None


async def decide_review(
    settings: Settings,
    proposal_id: str,
    *,
    approve: bool,
    reason: str = "",
    student: StudentFactory | None = None,
    teacher: BaseChatModel | None = None,
    on_event: EventCallback | None = None,
    concurrency: int = 1,
    tasks: list[Task] | None = None,
) -> LoopResult:
    """Approve (still gated) or reject a paused proposal, and let its session go on."""
    store = _store(settings)
    row = store.proposal(proposal_id)
    if row["status"] != "pending_review":
        raise SearchSetupError(
            f"proposal {row['id']} is {row['status']}, not waiting for "
            "review (see `homespun learning review`)"
        )
    session = store.session(row["session_id"])
    context = search_context(
        settings,
        load_spec(settings.spec_path),
        get_benchmark(session.benchmark, settings),
        session.proposer,
        teacher=teacher,
        student=student,
        on_event=on_event,
        concurrency=concurrency,
        tasks=tasks,
    )
    out = LoopResult(sessions=[session.id])
    async with _graph(settings) as graph:
        result = await _drive(
            graph, Command(resume={"approve": approve, "reason": reason}), session.id, context
        )
    if "__interrupt__" in result:
        out.paused_proposal = result["__interrupt__"][0].value["proposal_id"]
        out.stopped_because = "paused for review"
    else:
        out.stopped_because = "session finished"
    return out


def rollback(settings: Settings, target: str | None = None) -> str:
    """Revert the last accepted edit (target None), an edit id, a session, or a commit."""
    repo = CheckpointRepo(settings.home, settings.spec_path)
    store = _store(settings)
    if target is None:
        last = repo.last_edit()
        if last is None:
            raise SearchSetupError("no accepted edit to roll back")
        return repo.revert(last.sha)
    try:
        p = store.proposal(target)
        if p.get("commit_sha"):
            return repo.revert(p["commit_sha"])
    except KeyError:
        pass
    try:
        session = store.session(target)
        accepted = [
            p for p in store.proposals(session.id, status="accepted") if p.get("commit_sha")
        ]
        if not accepted:
            raise SearchSetupError(f"session {session.id} has no accepted edit to roll back")
        sha = ""
        for p in reversed(accepted):
            sha = repo.revert(p["commit_sha"])
        return sha
    except KeyError:
        pass
    return repo.revert(target)
