"""What every proposer of spec search shares: its context, its result rules, its registry.

A proposer turns a diagnosis (failure clusters) of the current accepted spec into candidate
proposals for the gate. Whatever the proposer, a returned proposal

- applies cleanly to `ctx.spec` and changes it (a no-op would only waste a gate evaluation),
- targets a cluster of the diagnosis,
- is not one the history already holds (same ops), nor a repeat within the batch,
- carries the proposer's name.

Candidates that break a rule are dropped and counted in the proposer's `last_report`, never
returned.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from langchain_core.language_models import BaseChatModel

from homespun.learning.clusters import Cluster, Diagnosis
from homespun.spec import Spec
from homespun.spec.edits import EditError, Proposal, apply_proposal

PROPOSER_NAMES = ("random", "llm", "evolutionary")

Decision = str  # "accepted" | "rejected" | "pending" | "error"


@dataclass
class HistoryEntry:
    """A proposal tried earlier (this or an earlier session) and what the gate said of it."""

    proposal: Proposal
    decision: Decision  # "accepted" | "rejected" | "pending" | "error"
    reason: str = ""
    deltas: dict[str, float] = field(default_factory=dict)  # cluster id -> G_c(S') - G_c(S)


@dataclass
class ProposerContext:
    spec: Spec  # the current accepted spec
    diagnosis: Diagnosis
    history: list[HistoryEntry]  # what was tried before and what the gate said
    max_proposals: int  # cap on proposals returned (evolutionary: also its evaluation budget)
    seed: int = 0
    teacher: BaseChatModel | None = None
    meter: Any | None = None  # CostMeter: check() before every teacher call, record() after
    # Per-cluster scores (0..1) of a spec on the SEARCH (non-gate) task set; evolutionary only.
    # Each call costs student runs.
    evaluate: Callable[[Spec], Awaitable[dict[str, float]]] | None = None
    tool_names: dict[str, list[str]] = field(default_factory=dict)  # server -> tools it offers


@dataclass
class ProposerReport:
    """What one `propose` call did, for the session log and the CLI."""

    proposer: str
    returned: int = 0
    dropped: list[str] = field(default_factory=list)  # one reason per dropped candidate
    teacher_calls: int = 0
    evaluations: int = 0  # evolutionary: calls of ctx.evaluate
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_count(self) -> int:
        return len(self.dropped)


@runtime_checkable
class Proposer(Protocol):
    name: str

    async def propose(self, ctx: ProposerContext) -> list[Proposal]: ...


def make_proposer(name: str) -> Proposer:
    """The proposer named by `learning.proposer`."""
    if name == "random":
        from .random_templates import RandomTemplateProposer

        return RandomTemplateProposer()
    if name == "llm":
        from .llm import LLMProposer

        return LLMProposer()
    if name == "evolutionary":
        from .evolutionary import EvolutionaryProposer

        return EvolutionaryProposer()
    raise ValueError(
        f"unknown learning.proposer {name!r}; choose one of: {', '.join(PROPOSER_NAMES)}"
    )


# --------------------------------------------------------------------------- shared rules


def _canonical(value: Any) -> Any:
    # 0 and 0.0 are the same edit; JSON would tell them apart.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def ops_key(ops: Iterable[Any]) -> str:
    """Identity of a set of ops: the same ops in any order give the same key."""
    parts = sorted(json.dumps(_canonical(op.model_dump(mode="json")), sort_keys=True) for op in ops)
    return "\n".join(parts)


def clusters_by_failure(diagnosis: Diagnosis) -> list[Cluster]:
    """Clusters, highest student failure rate first (ties keep the diagnosis order)."""
    return sorted(diagnosis.clusters, key=lambda c: -c.student_failure_rate)


class ProposalFilter:
    """Admits proposals that follow the rules above; counts the rest in `report.dropped`."""

    def __init__(self, ctx: ProposerContext, report: ProposerReport) -> None:
        self.ctx = ctx
        self.report = report
        self.cluster_ids = {c.id for c in ctx.diagnosis.clusters}
        self.seen = {ops_key(h.proposal.ops) for h in ctx.history}
        self.base_hash = ctx.spec.content_hash()

    def check(self, proposal: Proposal) -> str | None:
        """Why `proposal` may not be returned, or None. Does not record anything."""
        if proposal.target_cluster not in self.cluster_ids:
            return f"targets unknown cluster {proposal.target_cluster!r}"
        key = ops_key(proposal.ops)
        if key in self.seen:
            return "repeats a proposal already tried (or already in this batch)"
        from homespun.spec.edits import TrainLora

        untrained = [o for o in proposal.ops if isinstance(o, TrainLora) and o.adapter is None]
        if untrained:
            # Trained only after approval, in the session; the other ops must still apply.
            from homespun.learning.training.edit import training_available

            if not training_available(self.ctx.spec):
                return "train_lora needs the train extra and the embedded engine"
            rest = [o for o in proposal.ops if o not in untrained]
            if rest:
                try:
                    apply_proposal(self.ctx.spec, proposal.model_copy(update={"ops": rest}))
                except EditError as exc:
                    return f"does not apply: {exc}"
            return None
        try:
            new = apply_proposal(self.ctx.spec, proposal)
        except EditError as exc:
            return f"does not apply: {exc}"
        if new.content_hash() == self.base_hash:
            return "changes nothing in the current spec"
        return None

    def admit(self, proposal: Proposal, label: str = "") -> bool:
        reason = self.check(proposal)
        if reason is not None:
            self.report.dropped.append(f"{label or proposal.id}: {reason}")
            return False
        self.seen.add(ops_key(proposal.ops))
        return True
