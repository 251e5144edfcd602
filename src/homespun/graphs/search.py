"""The spec-search session as a durable LangGraph (paper Algorithm 1, one session).

    diagnose -> plan -> execute -> gate -> record -> (execute ... ) -> finalize

State holds only JSON data (ids, proposals, scores), so the SQLite checkpointer in
HOMESPUN_HOME/learning/search.db can resume a killed session at the node it stopped in. The
live collaborators (settings, benchmark, proposer, teacher, cost meter, student) are the run's
LangGraph context, a `SearchContext`, passed to each run and never checkpointed.
Everything with side effects is idempotent on resume: evaluations are cached per
(spec hash, task, repeat), and a commit is made at most once per Edit-ID.
Review- and manual-tier proposals pause in `execute` with `interrupt()`; approval resumes
the session and the proposal still has to pass the gate.

The benchmark splits three ways (`SearchContext.split`): diagnosis and the proposers read the
search split, the gate its held-out split, and the test split is run only in `diagnose` and
`finalize`, for the session's test accuracy before and after, which no decision reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from homespun.engines.cost import CostMeter
from homespun.learning.clusters import Diagnosis
from homespun.learning.evaluation import EvalResult, StudentFactory, eval_key, evaluate
from homespun.learning.gate import (
    TaskPair,
    TaskSplit,
    candidate_batches,
    cluster_categories,
    cluster_scores,
    gate_subsample,
    pair_outcomes,
    settled,
    split_three,
)
from homespun.learning.proposers.base import Proposer
from homespun.learning.tasks import Benchmark, Task
from homespun.spec import Settings, Spec
from homespun.spec.edits import EditError, Proposal, apply_proposal, describe_proposal, risk_tier
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.eval_cache import EvalCache, TaskOutcome
from homespun.stores.learning import LearningStore
from homespun.stores.traces import TraceStore

EventCallback = Callable[[str, dict[str, Any]], None]


class TeacherFailed(RuntimeError):
    """A teacher call failed during a phase (a timeout, a provider's or the embedded engine's
    error). The session is recorded as failed; its checkpoint stays at that phase, so
    `homespun learning run --resume` runs the phase again."""

    def __init__(self, session_id: str, phase: str, cause: BaseException):
        from homespun.engines.providers import one_line

        self.session_id = session_id
        self.phase = phase
        super().__init__(
            f"the teacher failed during {phase}: {one_line(cause)} (session {session_id} is "
            f"kept: `homespun learning run --resume` runs {phase} again)"
        )


def _teacher_failure(sid: str, phase: str, exc: Exception) -> Exception:
    """`exc` as a TeacherFailed when a model call failed; anything else is not the teacher's
    doing and is raised as it is."""
    from homespun.engines.providers import is_model_call_error

    return TeacherFailed(sid, phase, exc) if is_model_call_error(exc) else exc


@dataclass(kw_only=True)
class SearchContext:
    """The live collaborators of one run of the search graph: its LangGraph run context
    (`graph.ainvoke(..., context=SearchContext(...))`), never checkpointed. A resumed session
    gets a fresh one from whoever resumes it."""

    settings: Settings
    benchmark: Benchmark
    proposer: Proposer
    teacher: BaseChatModel | None = None
    meter: CostMeter | None = None  # the teacher spend of this session (built by the loop)
    student: StudentFactory | None = None  # None: the spec's own engine
    concurrency: int = 1
    tasks: list[Task] | None = None  # default: the benchmark's tasks
    on_event: EventCallback | None = None
    tool_names: dict[str, list[str]] | None = None  # default: asked of the spec's MCP servers

    # The stores open a SQLite connection, which only the thread that opened it may use, and
    # LangGraph runs the sync nodes in worker threads: so a fresh one on each access.
    @property
    def store(self) -> LearningStore:
        return LearningStore(self.settings.learning_db)

    @property
    def cache(self) -> EvalCache:
        return EvalCache(self.settings.learning_db)

    @property
    def checkpoints(self) -> CheckpointRepo:
        return CheckpointRepo(self.settings.home, self.settings.spec_path)

    def emit(self, event: str, **data: Any) -> None:
        if self.on_event:
            self.on_event(event, data)

    def split(self, spec: Spec) -> TaskSplit:
        """The session's tasks: the search split, the gate's subsample of its held-out split,
        and the test split. Only `diagnose` and `finalize` may run the test split, and only
        to report it: nothing that diagnoses, proposes or gates may see it."""
        tasks = self.tasks if self.tasks is not None else self.benchmark.tasks()
        gate = spec.learning.gate
        name = self.benchmark.name
        search, pool, test = split_three(
            tasks, seed=gate.seed, benchmark=name, test_fraction=gate.test_fraction
        )
        held_out = gate_subsample(pool, size=gate.subsample, seed=gate.seed, benchmark=name)
        # The test split is measured at most `subsample` tasks at a time too: a quarter of a
        # large benchmark (bfcl:all: 860 tasks) would cost more than the session itself.
        test = gate_subsample(test, size=gate.subsample, seed=gate.seed, benchmark=f"{name}:test")
        return TaskSplit(search, held_out, test)

    async def test_accuracy(self, spec: Spec, test: list[Task], label: str) -> float | None:
        """Accuracy of `spec` on the test split (None: there is none, not measured)."""
        if not test:
            return None
        return (await self.evaluate(spec, test, label)).accuracy

    async def evaluate(self, spec: Spec, tasks: list[Task], label: str) -> EvalResult:
        return await self.evaluate_batches(spec, [tasks], label)

    async def evaluate_batches(
        self,
        spec: Spec,
        batches: list[list[Task]],
        label: str,
        *,
        done: Callable[[list[TaskOutcome]], bool] | None = None,
    ) -> EvalResult:
        """Evaluate batch after batch until `done(outcomes so far)`; one progress line."""
        repeats = spec.learning.gate.repeats
        total = sum(len(b) for b in batches)
        self.emit("evaluate_start", label=label, tasks=total * repeats)
        outcomes: list[TaskOutcome] = []
        ran = 0
        for batch in batches:
            part = await evaluate(
                spec,
                self.settings,
                self.benchmark,
                batch,
                repeats=repeats,
                concurrency=self.concurrency,
                cache=self.cache,
                student=self.student,
                on_outcome=lambda o: self.emit("task_done", label=label, outcome=o),
            )
            outcomes += part.outcomes
            ran += len(batch)
            if done is not None and done(outcomes):
                break
        result = EvalResult(eval_key(spec), self.benchmark.name, outcomes)
        if ran < total:
            label = f"{label} (stopped after {ran} of {total} tasks: the rest cannot matter)"
        self.emit("evaluate_done", label=label, accuracy=result.accuracy, runs=result.runs)
        return result


@runtime_checkable
class SearchContextSource(Protocol):
    """A run context that stands for a SearchContext it builds: what a host that can only
    send JSON as the context (LangGraph Studio) runs the graph with. It builds the
    SearchContext once, so one run of the graph shares one (one cost meter, one teacher)."""

    def search_context(self) -> SearchContext: ...


class SearchState(TypedDict, total=False):
    session_id: str
    status: str  # running | paused | done | nothing_to_fix | failed
    diagnosis: dict | None
    proposals: list[dict]
    tiers: list[str]
    index: int
    approvals: dict[str, dict]  # proposal id -> review decision
    candidate: dict | None  # scores of the proposal under test
    decision: dict | None
    gate_score_before: float | None
    gate_score_after: float | None
    test_score_before: float | None  # on the test split, which no decision of the session reads
    test_score_after: float | None
    diagnosis_only: bool  # cold start: diagnose and stop (too few high-feedback traces)


def _context(runtime: Runtime[SearchContext]) -> SearchContext:
    ctx: object = runtime.context
    if isinstance(ctx, SearchContext):
        return ctx
    if isinstance(ctx, SearchContextSource):
        return ctx.search_context()
    raise TypeError(
        "the search graph runs with context=SearchContext(...) (see "
        f"homespun.graphs.search_loop), not {type(ctx).__name__}"
    )


def _session_dir(ctx: SearchContext, sid: str) -> Path:
    path = ctx.settings.sessions_dir / sid
    path.mkdir(parents=True, exist_ok=True)
    return path


_Mark = tuple[float, int, int, int, float]


def _meter_mark(ctx: SearchContext) -> _Mark:
    m = ctx.meter
    if m is None:
        return (0.0, 0, 0, 0, 0.0)
    return (
        float(m.spent_usd),
        int(m.input_tokens),
        int(m.output_tokens),
        int(m.calls),
        float(getattr(m, "seconds", 0.0)),
    )


def _record_cost(ctx: SearchContext, sid: str, kind: str, mark: _Mark) -> None:
    """Persist what the teacher cost since `mark` (every call, fallbacks included): dollars,
    tokens, calls and their wall time. A free local teacher's calls are recorded too, at $0."""
    if ctx.meter is None:
        return
    now = _meter_mark(ctx)
    usd, tin, tout, calls, seconds = (b - a for a, b in zip(mark, now, strict=True))
    if usd > 0 or tin or tout or calls:
        ctx.store.add_cost(
            sid,
            kind=kind,
            model=ctx.meter.model,
            input_tokens=tin,
            output_tokens=tout,
            usd=usd,
            calls=calls,
            seconds=round(seconds, 3),
        )


# --------------------------------------------------------------------------- nodes


async def diagnose(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    from homespun.learning.diagnosis import (
        FailedRun,
        render_trace_sources,
        rule_based_diagnosis,
        teacher_diagnosis,
    )
    from homespun.learning.user_failures import last_session_start, user_failures

    ctx = _context(runtime)
    spec = ctx.checkpoints.head_spec()
    sid = state.get("session_id") or ctx.store.new_session(
        benchmark=ctx.benchmark.name,
        proposer=ctx.proposer.name,
        teacher=spec.learning.teacher,
        spec_hash=spec.content_hash(),
    )
    search, held_out, test = ctx.split(spec)
    ctx.emit(
        "phase",
        name="diagnose",
        search_tasks=len(search),
        gate_tasks=len(held_out),
        test_tasks=len(test),
        test_fraction=spec.learning.gate.test_fraction,
    )
    result = await ctx.evaluate(spec, search, "diagnose: current spec on the search set")
    gate_now = await ctx.evaluate(spec, held_out, "gate: current spec on held-out tasks")
    test_now = await ctx.test_accuracy(spec, test, "test: current spec on the test split")
    by_id = {t.id: t for t in search}
    traces = TraceStore(ctx.settings.traces_db)
    totals: dict[str, int] = {}
    failures = []
    for o in result.outcomes:
        totals[o.category] = totals.get(o.category, 0) + 1
        if not o.success:
            from homespun.learning.tasks import Grade

            try:
                trace = traces.get(o.trace_id) if o.trace_id else None
            except KeyError:
                trace = None
            if trace is not None:
                failures.append(FailedRun(by_id[o.task_id], trace, Grade(False, o.score, o.reason)))
    # The user's own conversations that failed since the last session, scrubbed. They join
    # the clusters but not the rates, and the gate never re-runs them: they have no task.
    mine = user_failures(
        ctx.settings.traces_db, spec, since=last_session_start(ctx.store, current=sid)
    )
    ctx.store.update_session(
        sid, gate_score_before=gate_now.accuracy, test_score_before=test_now, test_tasks=len(test)
    )
    scores = {"gate_score_before": gate_now.accuracy, "test_score_before": test_now}
    if not failures:
        # Nothing the gate could measure a fix on. The session is not counted as read by
        # the next one (last_session_start), so these conversations are diagnosed later.
        note = "every search task passed" + (
            f"; {len(mine)} failing conversation(s) of yours wait for the next diagnosis"
            if mine
            else ""
        )
        ctx.store.update_session(sid, status="nothing_to_fix", note=note)
        return {"session_id": sid, "status": "nothing_to_fix", "diagnosis": None, **scores}
    narrative = ""
    if ctx.teacher is not None:
        spent = _meter_mark(ctx)
        try:
            from homespun.learning.teacher_runs import teacher_rerun

            reruns = spec.learning.teacher_reruns_per_cluster
            diagnosis, narrative = await teacher_diagnosis(
                failures,
                totals,
                teacher=ctx.teacher,
                meter=ctx.meter,
                max_tool_calls=spec.learning.budgets.max_tool_calls_per_diagnosis,
                scrub=spec.learning.privacy.scrub_pii,
                rerun=teacher_rerun(
                    teacher=ctx.teacher,
                    meter=ctx.meter,
                    spec=spec,
                    settings=ctx.settings,
                    benchmark=ctx.benchmark,
                )
                if reruns
                else None,
                rerun_per_cluster=reruns,
                user_failures=mine,
            )
        except Exception as exc:
            failure = _teacher_failure(sid, "diagnose", exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            _record_cost(ctx, sid, "diagnose", spent)
    else:
        diagnosis = rule_based_diagnosis(failures, totals, mine)
        narrative = "Rule-based diagnosis (no teacher configured)."
    narrative += "\n\n" + render_trace_sources(diagnosis, mine)
    _write_diagnosis(ctx, sid, diagnosis, narrative, result)
    ctx.emit("diagnosis", diagnosis=diagnosis)
    return {
        "session_id": sid,
        "diagnosis": diagnosis.model_dump(),
        "status": "running",
        **scores,
    }


def _write_diagnosis(
    ctx: SearchContext, sid: str, diagnosis: Diagnosis, narrative: str, result: EvalResult
) -> None:
    lines = [
        f"# Diagnosis — session {sid}",
        "",
        f"Source: {diagnosis.source}",
        f"Search-set accuracy of the current spec: {result.accuracy:.3f} "
        f"({len(result.outcomes)} runs)",
        "",
        "| cluster | categories | signature | "
        "student failure rate | teacher success rate | skill gap |",
        "|---|---|---|---|---|---|",
    ]
    for c in diagnosis.clusters:
        teacher = (
            "not measured" if c.teacher_success_rate is None else f"{c.teacher_success_rate:.2f}"
        )
        lines.append(
            f"| {c.id} | {', '.join(c.categories)} | {c.signature} | "
            f"{c.student_failure_rate:.2f} | {teacher} | {c.skill_gap} |"
        )
    lines += ["", narrative.strip(), ""]
    (_session_dir(ctx, sid) / "diagnosis.md").write_text("\n".join(lines))


async def plan(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    from homespun.learning.proposers.base import HistoryEntry, ProposerContext

    ctx = _context(runtime)
    sid = state["session_id"]
    spec = ctx.checkpoints.head_spec()
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    ctx.emit("phase", name="plan", proposer=ctx.proposer.name)
    history = []
    for row in ctx.store.history_entries():
        try:
            p = Proposal.model_validate(
                {
                    "id": row["id"],
                    "target_cluster": row["target"],
                    "ops": json.loads(row["ops"]),
                    "rationale": row["rationale"] or "",
                    "proposer": row["proposer"] or "",
                }
            )
        except Exception:  # a row from an older op schema: skip it, it cannot repeat
            continue
        history.append(HistoryEntry(p, row["status"], row["reason"] or "", row["deltas"]))
    search = ctx.split(spec).search

    async def evaluate_clusters(candidate: Spec) -> dict[str, float]:
        res = await ctx.evaluate(candidate, search, "evolutionary: candidate on the search set")
        scopes = cluster_categories(diagnosis.clusters, {t.category for t in search})
        return {k: v for k, v in cluster_scores(res, scopes).items() if v is not None}

    proposer_ctx = ProposerContext(
        spec=spec,
        diagnosis=diagnosis,
        history=history,
        max_proposals=spec.learning.budgets.max_proposals_per_session,
        seed=spec.learning.gate.seed + len(ctx.store.sessions(limit=1000)),
        teacher=ctx.teacher,
        meter=ctx.meter,
        evaluate=evaluate_clusters,
        tool_names=ctx.tool_names or await _tool_names(spec, ctx.settings),
    )
    spent = _meter_mark(ctx)
    try:
        proposals = await ctx.proposer.propose(proposer_ctx)
    except Exception as exc:
        failure = _teacher_failure(sid, "plan", exc)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        _record_cost(ctx, sid, "plan", spent)
    report = getattr(ctx.proposer, "last_report", None)
    if not proposals and report is not None and (report.notes or report.dropped):
        # Nothing to gate: say why in the session, e.g. a teacher reply that failed
        # validation on its retry too, rather than end as if nothing had been asked.
        why = "; ".join([*report.notes, *report.dropped[:3]])
        note = f"the {ctx.proposer.name} proposer gave no proposal: {why}"
        ctx.store.update_session(sid, note=note)
        ctx.emit("note", text=note)
    # Auto-tier proposals first: a proposal paused for review must not hold back the ones
    # that need no human.
    order = {"auto": 0, "review": 1, "manual": 2}
    proposals = sorted(proposals, key=lambda p: order[risk_tier(p, spec)])
    tiers = [risk_tier(p, spec) for p in proposals]
    ctx.store.add_proposals(sid, proposals, tiers)
    plan_doc = [
        {
            "id": p.id,
            "target_cluster": p.target_cluster,
            "tier": t,
            "proposer": p.proposer,
            "rationale": p.rationale,
            "ops": [o.model_dump() for o in p.ops],
        }
        for p, t in zip(proposals, tiers, strict=True)
    ]
    (_session_dir(ctx, sid) / "plan.json").write_text(json.dumps(plan_doc, indent=2))
    ctx.emit("plan", proposals=proposals, tiers=tiers)
    return {"proposals": [p.model_dump() for p in proposals], "tiers": tiers, "index": 0}


async def _tool_names(spec: Spec, settings: Settings) -> dict[str, list[str]]:
    """Server -> the tool names it offers (all of them, disabled ones included), so tool
    edits can name real tools. A server that fails to start is left out, not fatal."""
    from homespun.mcp_servers.loader import open_tools

    names: dict[str, list[str]] = {}
    for server in spec.tools.servers:
        probe = spec.model_copy(deep=True)
        only = probe.tools.server(server.name)
        only.enabled, only.disabled, only.descriptions = ["*"], [], {}
        probe.tools.servers = [only]
        try:
            async with open_tools(probe, settings) as loaded:
                names[server.name] = sorted(loaded.server_of)
        except Exception:  # noqa: BLE001 - reported by the run itself when it matters
            continue
    return names


async def execute(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    ctx = _context(runtime)
    sid, i = state["session_id"], state["index"]
    proposal = Proposal.model_validate(state["proposals"][i])
    tier = state["tiers"][i]
    approvals = dict(state.get("approvals") or {})
    if tier in ("review", "manual") and proposal.id not in approvals:
        ctx.store.set_proposal(proposal.id, status="pending_review")
        ctx.store.update_session(sid, status="paused")
        ctx.emit("review", proposal=proposal, tier=tier)
        answer = interrupt(
            {
                "proposal_id": proposal.id,
                "tier": tier,
                "target": proposal.target_cluster,
                "ops": describe_proposal(proposal),
                "rationale": proposal.rationale,
            }
        )
        decision = answer if isinstance(answer, dict) else {"approve": bool(answer)}
        approvals[proposal.id] = decision
        ctx.store.update_session(sid, status="running")
        if not decision.get("approve"):
            reason = decision.get("reason") or "rejected in review"
            ctx.store.set_proposal(proposal.id, status="review_rejected", reason=reason)
            return {
                "approvals": approvals,
                "candidate": None,
                "decision": {"accepted": False, "reason": reason, "skipped": True},
            }
        ctx.store.set_proposal(proposal.id, status="approved")
    current = ctx.checkpoints.head_spec()
    ctx.emit("phase", name="execute", proposal=proposal, tier=tier)
    trained: dict = {}
    try:
        proposal, trained = await _train_if_needed(ctx, proposal, current, state)
        candidate = apply_proposal(current, proposal)
    except Exception as exc:  # an invalid edit, or training that failed: recorded, not fatal
        if not isinstance(exc, EditError) and type(exc).__name__ not in (
            "TrainEditError",
            "TrainingError",
            "LoraConversionError",
        ):
            raise
        ctx.store.set_proposal(proposal.id, status="error", reason=str(exc))
        return {
            "approvals": approvals,
            "candidate": None,
            **trained,
            "decision": {"accepted": False, "reason": str(exc), "skipped": True},
        }
    held_out = ctx.split(current).gate
    before = await ctx.evaluate(current, held_out, "gate: current spec")
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    pairs = await _gate_candidate(ctx, current, candidate, proposal, diagnosis, held_out, before)
    return {
        **trained,
        "approvals": approvals,
        "candidate": {
            "pairs": [asdict(p) for p in pairs],
            "accuracy_before": before.accuracy,
            "candidate_hash": candidate.content_hash(),
        },
        "decision": None,
    }


async def _gate_candidate(
    ctx: SearchContext,
    current: Spec,
    candidate: Spec,
    proposal: Proposal,
    diagnosis: Diagnosis,
    held_out: list[Task],
    before: EvalResult,
) -> list[TaskPair]:
    """Run S' on the gate set, target cluster first, in batches of `learning.gate.chunk`
    tasks, until the rest of the set can no longer change the gate's decision."""
    gate_spec = current.learning.gate
    scopes = cluster_categories(diagnosis.clusters, {t.category for t in held_out})
    target = proposal.target_cluster

    def decided(outcomes: list[TaskOutcome]) -> bool:
        pairs = pair_outcomes(before.outcomes, outcomes)
        return settled(pairs, scopes, target, gate_spec) is not None

    # A batch smaller than the concurrency would leave workers idle between looks.
    size = max(gate_spec.chunk, ctx.concurrency) if gate_spec.chunk else 0
    batches = candidate_batches(held_out, scopes.get(target, set()), size)
    after = await ctx.evaluate_batches(
        candidate, batches, f"gate: proposal {proposal.id}", done=decided
    )
    return pair_outcomes(before.outcomes, after.outcomes)


async def _train_if_needed(
    ctx: SearchContext, proposal: Proposal, current: Spec, state: SearchState
) -> tuple[Proposal, dict]:
    """Train the LoRA of an approved train_lora proposal (once: the trained proposal is
    written back into the session state, so a resumed session does not train again)."""
    import asyncio

    from homespun.learning.training.edit import (
        needs_training,
        train_for_proposal,
        training_pairs,
    )

    if not needs_training(proposal):
        return proposal, {}
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    try:
        categories = set(diagnosis.cluster(proposal.target_cluster).categories)
    except KeyError:
        categories = set()
    pairs = training_pairs(ctx.split(current).search, categories)
    ctx.emit("phase", name="train", proposal=proposal, pairs=len(pairs))
    trained = await asyncio.to_thread(
        train_for_proposal, proposal, spec=current, settings=ctx.settings, pairs=pairs
    )
    proposals = list(state["proposals"])
    proposals[state["index"]] = trained.model_dump()
    ctx.store.set_proposal(trained.id, ops=json.dumps([o.model_dump() for o in trained.ops]))
    return trained, {"proposals": proposals}


def gate(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    if state.get("decision") is not None:  # skipped in execute (rejected in review, invalid)
        return {}
    ctx = _context(runtime)
    proposal = Proposal.model_validate(state["proposals"][state["index"]])
    spec = ctx.checkpoints.head_spec()
    pairs = [TaskPair(**p) for p in state["candidate"]["pairs"]]
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    scopes = cluster_categories(diagnosis.clusters, {p.category for p in pairs})
    decision = settled(pairs, scopes, proposal.target_cluster, spec.learning.gate)
    if decision is None:  # execute runs S' until the decision is settled
        raise RuntimeError(f"gate for {proposal.id}: S' stopped before the decision settled")
    ctx.store.set_cluster_scores(state["session_id"], proposal.id, decision.before, decision.after)
    ctx.emit("gate", proposal=proposal, decision=decision)
    return {
        "decision": {
            "accepted": decision.accepted,
            "reason": decision.reason,
            "rule": decision.rule,
            "stopped_early": decision.stopped_early,
            "deltas": decision.deltas(),
        }
    }


def record(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    ctx = _context(runtime)
    sid, i = state["session_id"], state["index"]
    proposal = Proposal.model_validate(state["proposals"][i])
    decision = state["decision"] or {}
    if decision.get("skipped"):
        pass  # already recorded as review_rejected / error
    elif decision.get("accepted"):
        current = ctx.checkpoints.head_spec()
        existing = ctx.checkpoints.find_edit(proposal.id)
        if existing is None:
            candidate = apply_proposal(current, proposal)
            body = (
                f"{describe_proposal(proposal)}\n\nRationale: {proposal.rationale}\n"
                f"Gate: {decision['reason']}"
            )
            from homespun.learning.training.edit import adapters_of

            # One trailer line; several adapters (none today) would be listed comma-separated.
            hashes = [a.sha256 for a in adapters_of(proposal)]
            extra = {"Adapter-SHA256": ", ".join(hashes)} if hashes else {}
            sha = ctx.checkpoints.commit_spec(
                candidate,
                subject=f"spec search: {proposal.target_cluster} "
                f"({', '.join(o.op for o in proposal.ops)})",
                body=body,
                session_id=sid,
                edit_id=proposal.id,
                tier=state["tiers"][i],
                target=proposal.target_cluster,
                extra_trailers=extra,
            )
        else:
            sha = existing.sha
        ctx.store.set_proposal(
            proposal.id, status="accepted", reason=decision["reason"], commit_sha=sha
        )
        ctx.emit("accepted", proposal=proposal, sha=sha)
    else:
        ctx.store.set_proposal(proposal.id, status="rejected", reason=decision.get("reason", ""))
        ctx.emit("rejected", proposal=proposal, reason=decision.get("reason", ""))
    if not decision.get("accepted"):
        from homespun.learning.training.edit import discard_unused_adapters

        discard_unused_adapters(proposal, ctx.checkpoints.head_spec())
    return {"index": i + 1, "candidate": None, "decision": None}


async def finalize(state: SearchState, runtime: Runtime[SearchContext]) -> dict:
    import time

    ctx = _context(runtime)
    sid = state["session_id"]
    spec = ctx.checkpoints.head_spec()
    _, held_out, test = ctx.split(spec)
    after = await ctx.evaluate(spec, held_out, "gate: final spec")
    test_before = state.get("test_score_before")
    if spec.content_hash() == ctx.store.session(sid).spec_hash_before:
        test_after = test_before  # nothing accepted: the same spec, the same score
    else:
        test_after = await ctx.test_accuracy(spec, test, "test: final spec on the test split")
    ctx.store.update_session(
        sid,
        status="done",
        ended_at=time.time(),
        spec_hash_after=spec.content_hash(),
        gate_score_after=after.accuracy,
        test_score_after=test_after,
    )
    ctx.emit(
        "session_done",
        session_id=sid,
        before=state.get("gate_score_before"),
        after=after.accuracy,
        test_before=test_before,
        test_after=test_after,
        test_tasks=len(test),
    )
    return {"status": "done", "gate_score_after": after.accuracy, "test_score_after": test_after}


# --------------------------------------------------------------------------- routing


def _after_diagnose(state: SearchState) -> str:
    if state.get("status") == "nothing_to_fix" or state.get("diagnosis_only"):
        return "finalize"
    return "plan"


def _after_plan(state: SearchState) -> str:
    return "execute" if state.get("proposals") else "finalize"


def _after_record(state: SearchState) -> str:
    return "execute" if state["index"] < len(state.get("proposals") or []) else "finalize"


def build_search_graph(
    checkpointer: BaseCheckpointSaver | None = None,
    *,
    context_schema: type[SearchContext] | type[SearchContextSource] = SearchContext,
) -> CompiledStateGraph:
    """The session graph. Run it with `context=` a SearchContext; a host that can only send
    JSON as the context (LangGraph Studio) compiles it with a `context_schema` that is a
    JSON dataclass standing for one (a SearchContextSource)."""
    g = StateGraph(SearchState, context_schema=context_schema)
    g.add_node("diagnose", diagnose)
    g.add_node("plan", plan)
    g.add_node("execute", execute)
    g.add_node("gate", gate)
    g.add_node("record", record)
    g.add_node("finalize", finalize)
    g.add_edge(START, "diagnose")
    g.add_conditional_edges("diagnose", _after_diagnose, ["plan", "finalize"])
    g.add_conditional_edges("plan", _after_plan, ["execute", "finalize"])
    g.add_edge("execute", "gate")
    g.add_edge("gate", "record")
    g.add_conditional_edges("record", _after_record, ["execute", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer, name="homespun-spec-search")
