"""The evolutionary proposer: GEPA's population, reflective mutation, merge and Pareto frontier,
over whole specs (the paper's evolutionary spec-search baseline, appendix C.7).

A candidate is a whole spec plus the path of ops that turns the current accepted spec (the
root) into it. Each step picks a parent from the Pareto frontier over clusters (weighted, as
in GEPA, by how many clusters it is best on), and either mutates it — one selected primitive
at a time, round-robin over the four, by the teacher when there is one (a short reflective
call given the parent's scores) or else by the random templates — or merges two frontier
members (per cluster, the ops of whichever parent scores higher there; a mutation's ops are
tagged with the cluster they raised most once the child is scored). The child is scored
with `ctx.evaluate` on the search task set and kept only if it beats its parent(s) on some
cluster (GEPA's acceptance test). The budget is `ctx.max_proposals` child
evaluations — the same number of student evaluations the gate spends on that many proposals —
plus one for the root.

The result is one compound proposal per best frontier member: its (pruned) op path, aimed at
the cluster where it gained most over the root. The gate then judges it like any other.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from homespun.engines.cost import BudgetExceeded
from homespun.learning.clusters import Cluster
from homespun.spec import Spec
from homespun.spec.edits import PRIMITIVE_OF, EditError, Proposal, apply_proposal

from .base import (
    ProposalFilter,
    ProposerContext,
    ProposerReport,
    clusters_by_failure,
    ops_key,
)
from .llm import (
    available_ops,
    call_teacher,
    ops_array_schema,
    parse_ops,
    render_catalog,
    render_cluster,
    render_deltas,
    render_history,
    render_spec_summary,
    render_tool_names,
    tool_args,
)
from .random_templates import PRIMITIVE_GROUPS, TemplateInput, draw_op

_GROUP_PRIMITIVES = {
    "intelligence": {"intelligence"},
    "engine": {"engine"},
    "agent": {"agent"},
    "tools_memory": {"tools", "memory"},
}
SUBMIT_EDIT = "submit_edit"


# --------------------------------------------------------------------------- Pareto logic


def dominates(
    a: Mapping[str, float], b: Mapping[str, float], keys: Sequence[str] | None = None
) -> bool:
    """a is >= b on every cluster and > on at least one (missing scores count as 0)."""
    keys = keys if keys is not None else sorted(set(a) | set(b))
    ge = all(a.get(k, 0.0) >= b.get(k, 0.0) for k in keys)
    return ge and any(a.get(k, 0.0) > b.get(k, 0.0) for k in keys)


def pareto_frontier(scores: Sequence[Mapping[str, float]]) -> list[int]:
    """Indices of the score vectors no other vector dominates (equal vectors all stay)."""
    keys = sorted({k for s in scores for k in s})
    return [
        i
        for i, s in enumerate(scores)
        if not any(dominates(o, s, keys) for j, o in enumerate(scores) if j != i)
    ]


def best_counts(scores: Sequence[Mapping[str, float]], members: Sequence[int]) -> dict[int, int]:
    """For each member: on how many clusters it has the top score among `members`."""
    keys = sorted({k for i in members for k in scores[i]})
    counts = {i: 0 for i in members}
    for k in keys:
        top = max(scores[i].get(k, 0.0) for i in members)
        for i in members:
            if scores[i].get(k, 0.0) == top:
                counts[i] += 1
    return counts


def select_parent(
    scores: Sequence[Mapping[str, float]], frontier: Sequence[int], rng: random.Random
) -> int:
    """GEPA's frontier sampling: weight = number of clusters the member is best on."""
    counts = best_counts(scores, frontier)
    weights = [counts[i] for i in frontier]
    if not any(weights):
        return rng.choice(list(frontier))
    return rng.choices(list(frontier), weights=weights, k=1)[0]


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    spec: Spec
    path: tuple[tuple[Any, str], ...]  # (op, cluster id it was aimed at), from the root
    scores: dict[str, float] = field(default_factory=dict)
    parent: int | None = None
    other_parent: int | None = None  # merges only
    origin: str = "root"  # root | mutation | merge

    @property
    def ops(self) -> list[Any]:
        return [op for op, _ in self.path]


def _weakest(diagnosis_clusters: list[Cluster], scores: Mapping[str, float]) -> Cluster:
    # clusters_by_failure order breaks ties toward the higher failure rate.
    return min(diagnosis_clusters, key=lambda c: scores.get(c.id, 0.0))


def _improves(child: Mapping[str, float], parent: Mapping[str, float]) -> bool:
    """The child scores higher than the parent on at least one cluster."""
    return any(v > parent.get(k, 0.0) for k, v in child.items())


def _retag(
    path: tuple[tuple[Any, str], ...],
    parent: Candidate,
    scores: Mapping[str, float],
    clusters: list[Cluster],
) -> tuple[tuple[Any, str], ...]:
    """Tag a mutation's new ops with the cluster they actually raised most (if any), so a
    later merge can tell complementary candidates apart."""
    gains = {c.id: scores.get(c.id, 0.0) - parent.scores.get(c.id, 0.0) for c in clusters}
    best = max(clusters, key=lambda c: gains[c.id]).id
    if gains[best] <= 0:
        return path
    n = len(parent.path)
    return path[:n] + tuple((op, best) for op, _ in path[n:])


def _prune(root: Spec, ops: list[Any], target: str) -> list[Any]:
    """Drop ops whose removal leaves the final spec the same (later ops overrode them)."""
    final = apply_proposal(root, Proposal(target_cluster=target, ops=ops)).content_hash()
    kept = list(ops)
    i = 0
    while i < len(kept) and len(kept) > 1:
        trial = kept[:i] + kept[i + 1 :]
        try:
            same = (
                apply_proposal(root, Proposal(target_cluster=target, ops=trial)).content_hash()
                == final
            )
        except EditError:
            same = False
        if same:
            kept = trial
        else:
            i += 1
    return kept


_MUTATION_SYSTEM = (
    "You are the reflective mutation step of an evolutionary search over the spec of a small "
    "local assistant. Given one candidate spec and its per-cluster scores on a search task "
    "set, propose ONE edit of the named primitive (one or more ops of that primitive only) "
    "that should raise the score of the named cluster without lowering the others. Answer "
    f"only by calling {SUBMIT_EDIT}."
)


class EvolutionaryProposer:
    """GEPA-style search over whole specs with a matched evaluation budget."""

    name = "evolutionary"

    def __init__(
        self,
        merge_probability: float = 1 / 3,
        max_attempts_per_step: int = 12,
        # One edit's ops and a sentence of rationale: a few hundred tokens of JSON, which a
        # local teacher writes at ~10 tokens/s on 2 cores (Qwen2.5-Coder-1.5B).
        max_output_tokens: int = 512,
    ) -> None:
        self.merge_probability = merge_probability
        self.max_attempts_per_step = max_attempts_per_step
        self.max_output_tokens = max_output_tokens
        self.last_report = ProposerReport(proposer=self.name)
        self.last_population: list[Candidate] = []

    async def propose(self, ctx: ProposerContext) -> list[Proposal]:
        report = self.last_report = ProposerReport(proposer=self.name)
        if ctx.evaluate is None:
            raise ValueError(
                "the evolutionary proposer needs ctx.evaluate (per-cluster scores "
                "of a spec on the search task set)"
            )
        clusters = clusters_by_failure(ctx.diagnosis)
        budget = ctx.max_proposals
        if not clusters or budget <= 0:
            return []

        rng = random.Random(f"{ctx.seed}:evolutionary")
        root = Candidate(spec=ctx.spec, path=(), scores=dict(await ctx.evaluate(ctx.spec)))
        report.evaluations = 1
        population = self.last_population = [root]
        known = {ctx.spec.content_hash()}
        tried = {ops_key(h.proposal.ops) for h in ctx.history}
        use_teacher = ctx.teacher is not None
        group_offset = rng.randrange(len(PRIMITIVE_GROUPS))
        attempts = 0

        for step in range(budget):
            child: Candidate | None = None
            while child is None and attempts < budget * self.max_attempts_per_step:
                attempt, attempts = attempts, attempts + 1
                frontier = pareto_frontier([c.scores for c in population])
                with_ops = [i for i in frontier if population[i].path]
                if len(with_ops) >= 2 and rng.random() < self.merge_probability:
                    child = self._merge(ctx, population, with_ops, rng, report)
                else:
                    group = PRIMITIVE_GROUPS[(group_offset + attempt) % len(PRIMITIVE_GROUPS)]
                    child, use_teacher = await self._mutate(
                        ctx,
                        population,
                        frontier,
                        clusters,
                        group,
                        rng,
                        attempt,
                        use_teacher,
                        report,
                    )
                if child is None:
                    continue
                h = child.spec.content_hash()
                if h in known:
                    report.dropped.append(
                        f"step {step}: the child equals a spec already in the population"
                    )
                    child = None
                elif ops_key(child.ops) in tried:
                    report.dropped.append(
                        f"step {step}: the child repeats a proposal the gate already judged"
                    )
                    child = None
                else:
                    known.add(h)
            if child is None:
                report.notes.append(
                    f"stopped after {step} of {budget} steps: no new valid candidate"
                )
                break
            child.scores = dict(await ctx.evaluate(child.spec))
            report.evaluations += 1
            parents = [population[i] for i in (child.parent, child.other_parent) if i is not None]
            # GEPA keeps a child only if it beats its parent(s) somewhere; a neutral op
            # would otherwise ride along into every later candidate and proposal.
            if not all(_improves(child.scores, p.scores) for p in parents):
                report.dropped.append(
                    f"step {step}: the {child.origin} child scored no "
                    "better than its parent(s); not kept"
                )
                continue
            if child.origin == "mutation":
                child.path = _retag(child.path, parents[0], child.scores, clusters)
            population.append(child)

        out = self._select(ctx, population, clusters, report)
        report.returned = len(out)
        return out

    # ----------------------------------------------------------------- mutation and merge

    async def _mutate(
        self,
        ctx: ProposerContext,
        population: list[Candidate],
        frontier: list[int],
        clusters: list[Cluster],
        group: str,
        rng: random.Random,
        attempt: int,
        use_teacher: bool,
        report: ProposerReport,
    ) -> tuple[Candidate | None, bool]:
        parent_i = select_parent([c.scores for c in population], frontier, rng)
        parent = population[parent_i]
        cluster = _weakest(clusters, parent.scores)
        ops: list[Any] = []
        if use_teacher:
            ops, use_teacher = await self._teacher_ops(
                ctx, population, parent, cluster, group, report
            )
        how = "teacher"
        if not ops:
            how = "template"
            t_rng = random.Random(f"{ctx.seed}:evolutionary:{attempt}")
            categories = sorted({c for cl in clusters for c in cl.categories})
            t = TemplateInput(
                spec=parent.spec,
                cluster=cluster,
                category=t_rng.choice(cluster.categories) if cluster.categories else cluster.id,
                all_categories=categories,
                tool_names=ctx.tool_names,
                rng=t_rng,
            )
            op = draw_op(t, group)
            if op is None:
                report.dropped.append(f"mutation {attempt}: no {group} template fits")
                return None, use_teacher
            ops = [op]
        path = parent.path + tuple((op, cluster.id) for op in ops)
        spec = self._apply_path(ctx.spec, path, cluster.id, f"{how} mutation {attempt}", report)
        if spec is None:
            return None, use_teacher
        return Candidate(spec=spec, path=path, parent=parent_i, origin="mutation"), use_teacher

    def _merge(
        self,
        ctx: ProposerContext,
        population: list[Candidate],
        members: list[int],
        rng: random.Random,
        report: ProposerReport,
    ) -> Candidate | None:
        i, j = rng.sample(members, 2)
        a, b = population[i], population[j]
        tags = {t for _, t in a.path} | {t for _, t in b.path}
        owner = {t: (i if a.scores.get(t, 0.0) >= b.scores.get(t, 0.0) else j) for t in tags}
        path: list[tuple[Any, str]] = []
        seen: set[str] = set()
        for who, cand in ((i, a), (j, b)):
            for op, t in cand.path:
                key = ops_key([op])
                if owner[t] == who and key not in seen:
                    seen.add(key)
                    path.append((op, t))
        if not path or ops_key([o for o, _ in path]) in (ops_key(a.ops), ops_key(b.ops)):
            return None  # nothing complementary to combine
        spec = self._apply_path(ctx.spec, tuple(path), path[0][1], f"merge of {i} and {j}", report)
        if spec is None:
            return None
        return Candidate(spec=spec, path=tuple(path), parent=i, other_parent=j, origin="merge")

    @staticmethod
    def _apply_path(
        root: Spec,
        path: tuple[tuple[Any, str], ...],
        target: str,
        label: str,
        report: ProposerReport,
    ) -> Spec | None:
        try:
            return apply_proposal(root, Proposal(target_cluster=target, ops=[o for o, _ in path]))
        except EditError as exc:
            report.dropped.append(f"{label}: does not apply: {exc}")
            return None

    async def _teacher_ops(
        self,
        ctx: ProposerContext,
        population: list[Candidate],
        parent: Candidate,
        cluster: Cluster,
        group: str,
        report: ProposerReport,
    ) -> tuple[list[Any], bool]:
        """The teacher's ops for one mutation, and whether to keep using the teacher."""
        allowed = [
            n for n in available_ops(ctx.spec) if PRIMITIVE_OF[n] in _GROUP_PRIMITIVES[group]
        ]
        tool = {
            "type": "function",
            "function": {
                "name": SUBMIT_EDIT,
                "description": f"Submit one edit of the {group} primitive.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "rationale": {"type": "string"},
                        "ops": ops_array_schema(allowed),
                    },
                    "required": ["rationale", "ops"],
                    "additionalProperties": False,
                },
            },
        }
        messages = self._mutation_messages(ctx, population[0], parent, cluster, group, allowed)
        try:
            reply = await call_teacher(
                ctx, messages, tool, report, max_output_tokens=self.max_output_tokens
            )
        except BudgetExceeded as exc:  # the meter says no: templates from now on
            report.notes.append(f"teacher stopped ({exc}); mutating with templates")
            return [], False
        except Exception as exc:  # noqa: BLE001 - a failed call: templates from now on
            report.notes.append(
                f"teacher call failed ({type(exc).__name__}: {exc}); mutating with templates"
            )
            return [], False
        args = tool_args(reply, SUBMIT_EDIT)
        if args is None:
            report.dropped.append(f"teacher mutation: no {SUBMIT_EDIT} call")
            return [], True
        return parse_ops(args.get("ops"), allowed, "teacher mutation", report), True

    @staticmethod
    def _mutation_messages(
        ctx: ProposerContext,
        root: Candidate,
        parent: Candidate,
        cluster: Cluster,
        group: str,
        allowed: list[str],
    ) -> list[BaseMessage]:
        vs_root = {
            k: parent.scores.get(k, 0.0) - root.scores.get(k, 0.0)
            for k in sorted(set(parent.scores) | set(root.scores))
        }
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parent.scores.items()))
        body = "\n\n".join(
            [
                "## Candidate spec\n" + render_spec_summary(parent.spec),
                f"## Its search-set scores per cluster\n{scores}\n"
                f"(change from the current accepted spec: {render_deltas(vs_root)})",
                "## Cluster to improve (its weakest)\n" + render_cluster(cluster),
                "## Tools each server offers\n" + render_tool_names(ctx.tool_names),
                f"## Ops of the {group} primitive you may use\n" + render_catalog(allowed),
                "## Gate history\n" + render_history(ctx.history),
                f"## Task\nPropose one {group} edit for cluster `{cluster.id}`.",
            ]
        )
        return [SystemMessage(content=_MUTATION_SYSTEM), HumanMessage(content=body)]

    # ----------------------------------------------------------------- result

    def _select(
        self,
        ctx: ProposerContext,
        population: list[Candidate],
        clusters: list[Cluster],
        report: ProposerReport,
    ) -> list[Proposal]:
        root = population[0]
        frontier = [
            i for i in pareto_frontier([c.scores for c in population]) if population[i].path
        ]
        ranked = []
        for i in frontier:
            m = population[i]
            gains = {c.id: m.scores.get(c.id, 0.0) - root.scores.get(c.id, 0.0) for c in clusters}
            target = max(clusters, key=lambda c: gains[c.id]).id
            if gains[target] <= 0:
                report.dropped.append(f"candidate {i}: gains on no cluster of the diagnosis")
                continue
            keys = set(m.scores) | set(root.scores)
            total = sum(m.scores.get(k, 0.0) - root.scores.get(k, 0.0) for k in keys)
            ranked.append((-total, -gains[target], len(m.path), i, target))
        ranked.sort()
        admitted = ProposalFilter(ctx, report)
        out: list[Proposal] = []
        for _, _, _, i, target in ranked:
            if len(out) >= ctx.max_proposals:
                break
            m = population[i]
            ops = _prune(ctx.spec, m.ops, target)
            deltas = {
                k: m.scores.get(k, 0.0) - root.scores.get(k, 0.0)
                for k in sorted(set(m.scores) | set(root.scores))
            }
            proposal = Proposal(
                target_cluster=target,
                ops=ops,
                proposer=self.name,
                rationale=f"evolutionary search ({m.origin}; {report.evaluations - 1} children "
                f"evaluated, {len(population) - 1} kept): search-set deltas "
                f"{render_deltas(deltas)}",
            )
            if admitted.admit(proposal, label=f"candidate {i}"):
                out.append(proposal)
        return out
