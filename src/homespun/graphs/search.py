"""The spec-search session as a durable LangGraph (paper Algorithm 1, one session).

    diagnose -> plan -> execute -> gate -> record -> (execute ... ) -> finalize

State holds only JSON data (ids, proposals, scores), so the SQLite checkpointer in
HOMESPUN_HOME/learning/search.db can resume a killed session at the node it stopped in.
Everything with side effects is idempotent on resume: evaluations are cached per
(spec hash, task, repeat), and a commit is made at most once per Edit-ID.
Review- and manual-tier proposals pause in `execute` with `interrupt()`; approval resumes
the session and the proposal still has to pass the gate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from homespun.stores.checkpoints import CheckpointRepo
from homespun.learning.clusters import Diagnosis
from homespun.learning.evaluation import EvalResult, StudentFactory, evaluate
from homespun.stores.eval_cache import EvalCache
from homespun.learning.gate import (
    cluster_categories,
    cluster_scores,
    gate_ok,
    gate_subsample,
    split_tasks,
)
from homespun.stores.learning import LearningStore
from homespun.learning.tasks import Benchmark, Task
from homespun.stores.traces import TraceStore
from homespun.spec import Settings, Spec
from homespun.spec.edits import EditError, Proposal, apply_proposal, describe_proposal, risk_tier

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class SearchRuntime:
    """The live collaborators of a session (never checkpointed)."""

    settings: Settings
    benchmark: Benchmark
    proposer: Any  # homespun.learning.proposers.base.Proposer
    teacher: BaseChatModel | None = None
    student: StudentFactory | None = None  # None: the spec's own engine
    concurrency: int = 1
    tasks: list[Task] | None = None  # default: the benchmark's tasks
    on_event: EventCallback | None = None
    meter: Any = None  # CostMeter for this session (built by the loop)
    extra: dict[str, Any] = field(default_factory=dict)

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

    def split(self, spec: Spec) -> tuple[list[Task], list[Task]]:
        tasks = self.tasks if self.tasks is not None else self.benchmark.tasks()
        gate = spec.learning.gate
        search, pool = split_tasks(tasks, seed=gate.seed, benchmark=self.benchmark.name)
        held_out = gate_subsample(pool, size=gate.subsample, seed=gate.seed,
                                  benchmark=self.benchmark.name)
        return search, held_out

    async def evaluate(self, spec: Spec, tasks: list[Task], label: str) -> EvalResult:
        self.emit("evaluate_start", label=label, tasks=len(tasks) * spec.learning.gate.repeats)
        result = await evaluate(
            spec, self.settings, self.benchmark, tasks,
            repeats=spec.learning.gate.repeats, concurrency=self.concurrency,
            cache=self.cache, student=self.student,
            on_outcome=lambda o: self.emit("task_done", label=label, outcome=o),
        )
        self.emit("evaluate_done", label=label, accuracy=result.accuracy, runs=result.runs)
        return result


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
    diagnosis_only: bool  # cold start: diagnose and stop (too few high-feedback traces)


_DEFAULT_RUNTIMES: dict[str, SearchRuntime] = {}


def default_runtime(configurable: dict[str, Any]) -> SearchRuntime:
    """A runtime from HOMESPUN_HOME and the spec, for hosts that cannot pass one (LangGraph
    Studio): `benchmark` and `proposer` may come from the run's configurable."""
    from homespun.learning.benchmarks.registry import get_benchmark
    from homespun.learning.proposers import make_proposer
    from homespun.engines.cost import CostMeter
    from homespun.engines.providers import build_teacher
    from homespun.spec import load_spec

    key = f"{configurable.get('thread_id')}:{configurable.get('benchmark')}"
    if key not in _DEFAULT_RUNTIMES:
        settings = Settings()
        spec = load_spec(settings.spec_path)
        teacher = build_teacher(spec.learning.teacher) if spec.learning.teacher else None
        store = LearningStore(settings.learning_db)
        meter = CostMeter.from_spec(spec.learning, spent_before_usd=store.total_cost())
        proposer = configurable.get("proposer") or spec.learning.proposer
        _DEFAULT_RUNTIMES[key] = SearchRuntime(
            settings=settings,
            benchmark=get_benchmark(configurable.get("benchmark", "starter"), settings),
            proposer=make_proposer(proposer), teacher=teacher, meter=meter)
    return _DEFAULT_RUNTIMES[key]


def _runtime(config: RunnableConfig) -> SearchRuntime:
    configurable = config.get("configurable") or {}
    rt = configurable.get("runtime")
    return rt if rt is not None else default_runtime(configurable)


def _session_dir(rt: SearchRuntime, sid: str):
    path = rt.settings.sessions_dir / sid
    path.mkdir(parents=True, exist_ok=True)
    return path


def _meter_mark(rt: SearchRuntime) -> tuple[float, int, int]:
    m = rt.meter
    if m is None:
        return (0.0, 0, 0)
    return (float(m.spent_usd), int(m.input_tokens), int(m.output_tokens))


def _record_cost(rt: SearchRuntime, sid: str, kind: str, mark: tuple[float, int, int]) -> None:
    """Persist what the teacher cost since `mark` (every call, fallbacks included)."""
    if rt.meter is None:
        return
    now = _meter_mark(rt)
    usd, tin, tout = now[0] - mark[0], now[1] - mark[1], now[2] - mark[2]
    if usd > 0 or tin or tout:
        rt.store.add_cost(sid, kind=kind, model=rt.meter.model, input_tokens=tin,
                          output_tokens=tout, usd=usd)


# --------------------------------------------------------------------------- nodes


async def diagnose(state: SearchState, config: RunnableConfig) -> dict:
    from homespun.learning.diagnosis import FailedRun, rule_based_diagnosis, teacher_diagnosis

    rt = _runtime(config)
    spec = rt.checkpoints.head_spec()
    sid = state.get("session_id") or rt.store.new_session(
        benchmark=rt.benchmark.name, proposer=getattr(rt.proposer, "name", "?"),
        teacher=spec.learning.teacher, spec_hash=spec.content_hash())
    search, held_out = rt.split(spec)
    rt.emit("phase", name="diagnose", search_tasks=len(search), gate_tasks=len(held_out))
    result = await rt.evaluate(spec, search, "diagnose: current spec on the search set")
    gate_now = await rt.evaluate(spec, held_out, "gate: current spec on held-out tasks")
    by_id = {t.id: t for t in search}
    traces = TraceStore(rt.settings.traces_db)
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
                failures.append(FailedRun(by_id[o.task_id], trace, Grade(False, o.score,
                                                                         o.reason)))
    rt.store.update_session(sid, gate_score_before=gate_now.accuracy)
    if not failures:
        rt.store.update_session(sid, status="nothing_to_fix", note="every search task passed")
        return {"session_id": sid, "status": "nothing_to_fix", "diagnosis": None,
                "gate_score_before": gate_now.accuracy}
    narrative = ""
    if rt.teacher is not None:
        spent = _meter_mark(rt)
        try:
            from homespun.learning.teacher_runs import teacher_rerun

            reruns = spec.learning.teacher_reruns_per_cluster
            diagnosis, narrative = await teacher_diagnosis(
                failures, totals, teacher=rt.teacher, meter=rt.meter,
                max_tool_calls=spec.learning.budgets.max_tool_calls_per_diagnosis,
                scrub=spec.learning.privacy.scrub_pii,
                rerun=teacher_rerun(teacher=rt.teacher, meter=rt.meter, spec=spec,
                                    settings=rt.settings, benchmark=rt.benchmark)
                if reruns else None,
                rerun_per_cluster=reruns,
            )
        finally:
            _record_cost(rt, sid, "diagnose", spent)
    else:
        diagnosis = rule_based_diagnosis(failures, totals)
        narrative = "Rule-based diagnosis (no teacher configured)."
    _write_diagnosis(rt, sid, diagnosis, narrative, result)
    rt.emit("diagnosis", diagnosis=diagnosis)
    return {"session_id": sid, "diagnosis": diagnosis.model_dump(), "status": "running",
            "gate_score_before": gate_now.accuracy}


def _write_diagnosis(rt: SearchRuntime, sid: str, diagnosis: Diagnosis, narrative: str,
                     result: EvalResult) -> None:
    lines = [f"# Diagnosis — session {sid}", "", f"Source: {diagnosis.source}",
             f"Search-set accuracy of the current spec: {result.accuracy:.3f} "
             f"({len(result.outcomes)} runs)", "", "| cluster | categories | signature | "
             "student failure rate | teacher success rate | skill gap |", "|---|---|---|---|---|---|"]
    for c in diagnosis.clusters:
        teacher = "not measured" if c.teacher_success_rate is None else f"{c.teacher_success_rate:.2f}"
        lines.append(f"| {c.id} | {', '.join(c.categories)} | {c.signature} | "
                     f"{c.student_failure_rate:.2f} | {teacher} | {c.skill_gap} |")
    lines += ["", narrative.strip(), ""]
    (_session_dir(rt, sid) / "diagnosis.md").write_text("\n".join(lines))


async def plan(state: SearchState, config: RunnableConfig) -> dict:
    from homespun.learning.proposers.base import HistoryEntry, ProposerContext

    rt = _runtime(config)
    sid = state["session_id"]
    spec = rt.checkpoints.head_spec()
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    rt.emit("phase", name="plan", proposer=getattr(rt.proposer, "name", "?"))
    history = []
    for row in rt.store.history_entries():
        try:
            p = Proposal.model_validate({"id": row["id"], "target_cluster": row["target"],
                                         "ops": json.loads(row["ops"]),
                                         "rationale": row["rationale"] or "",
                                         "proposer": row["proposer"] or ""})
        except Exception:  # a row from an older op schema: skip it, it cannot repeat
            continue
        history.append(HistoryEntry(p, row["status"], row["reason"] or "", row["deltas"]))
    search, _ = rt.split(spec)

    async def evaluate_clusters(candidate: Spec) -> dict[str, float]:
        res = await rt.evaluate(candidate, search, "evolutionary: candidate on the search set")
        scopes = cluster_categories(diagnosis.clusters, {t.category for t in search})
        return {k: v for k, v in cluster_scores(res, scopes).items() if v is not None}

    ctx = ProposerContext(
        spec=spec, diagnosis=diagnosis, history=history,
        max_proposals=spec.learning.budgets.max_proposals_per_session,
        seed=spec.learning.gate.seed + len(rt.store.sessions(limit=1000)),
        teacher=rt.teacher, meter=rt.meter, evaluate=evaluate_clusters,
        tool_names=rt.extra.get("tool_names") or await _tool_names(spec, rt.settings),
    )
    spent = _meter_mark(rt)
    try:
        proposals = await rt.proposer.propose(ctx)
    finally:
        _record_cost(rt, sid, "plan", spent)
    # Auto-tier proposals first: a proposal paused for review must not hold back the ones
    # that need no human.
    order = {"auto": 0, "review": 1, "manual": 2}
    proposals = sorted(proposals, key=lambda p: order[risk_tier(p, spec)])
    tiers = [risk_tier(p, spec) for p in proposals]
    rt.store.add_proposals(sid, proposals, tiers)
    plan_doc = [{"id": p.id, "target_cluster": p.target_cluster, "tier": t,
                 "proposer": p.proposer, "rationale": p.rationale,
                 "ops": [o.model_dump() for o in p.ops]} for p, t in zip(proposals, tiers,
                                                                         strict=True)]
    (_session_dir(rt, sid) / "plan.json").write_text(json.dumps(plan_doc, indent=2))
    rt.emit("plan", proposals=proposals, tiers=tiers)
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


async def execute(state: SearchState, config: RunnableConfig) -> dict:
    rt = _runtime(config)
    sid, i = state["session_id"], state["index"]
    proposal = Proposal.model_validate(state["proposals"][i])
    tier = state["tiers"][i]
    approvals = dict(state.get("approvals") or {})
    if tier in ("review", "manual") and proposal.id not in approvals:
        rt.store.set_proposal(proposal.id, status="pending_review")
        rt.store.update_session(sid, status="paused")
        rt.emit("review", proposal=proposal, tier=tier)
        answer = interrupt({"proposal_id": proposal.id, "tier": tier,
                            "target": proposal.target_cluster,
                            "ops": describe_proposal(proposal),
                            "rationale": proposal.rationale})
        decision = answer if isinstance(answer, dict) else {"approve": bool(answer)}
        approvals[proposal.id] = decision
        rt.store.update_session(sid, status="running")
        if not decision.get("approve"):
            reason = decision.get("reason") or "rejected in review"
            rt.store.set_proposal(proposal.id, status="review_rejected", reason=reason)
            return {"approvals": approvals, "candidate": None,
                    "decision": {"accepted": False, "reason": reason, "skipped": True}}
        rt.store.set_proposal(proposal.id, status="approved")
    current = rt.checkpoints.head_spec()
    rt.emit("phase", name="execute", proposal=proposal, tier=tier)
    trained: dict = {}
    try:
        proposal, trained = await _train_if_needed(rt, proposal, current, state)
        candidate = apply_proposal(current, proposal)
    except Exception as exc:  # an invalid edit, or training that failed: recorded, not fatal
        if not isinstance(exc, EditError) and type(exc).__name__ not in (
                "TrainEditError", "TrainingError", "LoraConversionError"):
            raise
        rt.store.set_proposal(proposal.id, status="error", reason=str(exc))
        return {"approvals": approvals, "candidate": None, **trained,
                "decision": {"accepted": False, "reason": str(exc), "skipped": True}}
    _, held_out = rt.split(current)
    before = await rt.evaluate(current, held_out, "gate: current spec")
    after = await rt.evaluate(candidate, held_out, f"gate: proposal {proposal.id}")
    diagnosis = Diagnosis.model_validate(state["diagnosis"])
    scopes = cluster_categories(diagnosis.clusters, {t.category for t in held_out})
    return {
        **trained,
        "approvals": approvals,
        "candidate": {"before": cluster_scores(before, scopes),
                      "after": cluster_scores(after, scopes),
                      "accuracy_before": before.accuracy, "accuracy_after": after.accuracy,
                      "candidate_hash": candidate.content_hash()},
        "decision": None,
    }


async def _train_if_needed(rt: SearchRuntime, proposal: Proposal, current: Spec,
                           state: SearchState) -> tuple[Proposal, dict]:
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
    search, _ = rt.split(current)
    pairs = training_pairs(search, categories)
    rt.emit("phase", name="train", proposal=proposal, pairs=len(pairs))
    trained = await asyncio.to_thread(train_for_proposal, proposal, spec=current,
                                      settings=rt.settings, pairs=pairs)
    proposals = list(state["proposals"])
    proposals[state["index"]] = trained.model_dump()
    rt.store.set_proposal(trained.id, ops=json.dumps([o.model_dump() for o in trained.ops]))
    return trained, {"proposals": proposals}


def gate(state: SearchState, config: RunnableConfig) -> dict:
    if state.get("decision") is not None:  # skipped in execute (rejected in review, invalid)
        return {}
    rt = _runtime(config)
    proposal = Proposal.model_validate(state["proposals"][state["index"]])
    spec = rt.checkpoints.head_spec()
    cand = state["candidate"]
    decision = gate_ok(cand["before"], cand["after"], proposal.target_cluster,
                       spec.learning.gate.eps)
    rt.store.set_cluster_scores(state["session_id"], proposal.id, cand["before"],
                                cand["after"])
    rt.emit("gate", proposal=proposal, decision=decision)
    return {"decision": {"accepted": decision.accepted, "reason": decision.reason,
                         "deltas": decision.deltas()}}


def record(state: SearchState, config: RunnableConfig) -> dict:
    rt = _runtime(config)
    sid, i = state["session_id"], state["index"]
    proposal = Proposal.model_validate(state["proposals"][i])
    decision = state["decision"] or {}
    if decision.get("skipped"):
        pass  # already recorded as review_rejected / error
    elif decision.get("accepted"):
        current = rt.checkpoints.head_spec()
        existing = rt.checkpoints.find_edit(proposal.id)
        if existing is None:
            candidate = apply_proposal(current, proposal)
            body = (f"{describe_proposal(proposal)}\n\nRationale: {proposal.rationale}\n"
                    f"Gate: {decision['reason']}")
            from homespun.learning.training.edit import adapters_of

            extra = {f"Adapter-SHA256": a.sha256 for a in adapters_of(proposal)}
            sha = rt.checkpoints.commit_spec(
                candidate, subject=f"spec search: {proposal.target_cluster} "
                f"({', '.join(o.op for o in proposal.ops)})", body=body, session_id=sid,
                edit_id=proposal.id, tier=state["tiers"][i], target=proposal.target_cluster,
                extra_trailers=extra)
        else:
            sha = existing.sha
        rt.store.set_proposal(proposal.id, status="accepted", reason=decision["reason"],
                              commit_sha=sha)
        rt.emit("accepted", proposal=proposal, sha=sha)
    else:
        rt.store.set_proposal(proposal.id, status="rejected", reason=decision.get("reason", ""))
        rt.emit("rejected", proposal=proposal, reason=decision.get("reason", ""))
    if not decision.get("accepted"):
        from homespun.learning.training.edit import discard_unused_adapters

        discard_unused_adapters(proposal, rt.checkpoints.head_spec())
    return {"index": i + 1, "candidate": None, "decision": None}


async def finalize(state: SearchState, config: RunnableConfig) -> dict:
    rt = _runtime(config)
    sid = state["session_id"]
    spec = rt.checkpoints.head_spec()
    _, held_out = rt.split(spec)
    after = await rt.evaluate(spec, held_out, "gate: final spec")
    import time

    rt.store.update_session(sid, status="done", ended_at=time.time(),
                            spec_hash_after=spec.content_hash(),
                            gate_score_after=after.accuracy)
    rt.emit("session_done", session_id=sid, before=state.get("gate_score_before"),
            after=after.accuracy)
    return {"status": "done", "gate_score_after": after.accuracy}


# --------------------------------------------------------------------------- routing


def _after_diagnose(state: SearchState) -> str:
    if state.get("status") == "nothing_to_fix" or state.get("diagnosis_only"):
        return "finalize"
    return "plan"


def _after_plan(state: SearchState) -> str:
    return "execute" if state.get("proposals") else "finalize"


def _after_record(state: SearchState) -> str:
    return "execute" if state["index"] < len(state.get("proposals") or []) else "finalize"


def build_search_graph(checkpointer: Any = None):
    g = StateGraph(SearchState)
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
