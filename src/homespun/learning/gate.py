"""The held-out gate (paper Algorithm 1, GateOK).

For a proposal e targeting cluster c, with S the *current accepted* spec and
S' = apply(S, e):

    GateOK  <=>  G_c(S') > G_c(S)  and  G_c'(S') >= G_c'(S) - eps  for every other c'

G_c is the mean score over held-out gate tasks whose category the cluster covers. Every
category no cluster names falls into the implicit 'rest' cluster, so tasks that already
pass are protected too. The task split and the gate subsample come from sha256 of
(seed, benchmark, task id): stable across processes, unlike Python's hash().
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from homespun.learning.clusters import REST_CLUSTER_ID, Cluster
from homespun.learning.evaluation import EvalResult
from homespun.learning.tasks import Task


def _rank(seed: int, benchmark: str, task_id: str) -> str:
    return hashlib.sha256(f"{seed}:{benchmark}:{task_id}".encode()).hexdigest()


def split_tasks(tasks: list[Task], *, seed: int, benchmark: str) -> tuple[list[Task], list[Task]]:
    """(search set, held-out gate pool): half each per category, by stable rank.

    Diagnosis and proposers only ever see the search set; the gate only the pool.
    """
    search: list[Task] = []
    held_out: list[Task] = []
    by_category: dict[str, list[Task]] = {}
    for t in tasks:
        by_category.setdefault(t.category, []).append(t)
    for category in sorted(by_category):
        ranked = sorted(by_category[category], key=lambda t: _rank(seed, benchmark, t.id))
        half = len(ranked) // 2
        if len(ranked) == 1:
            held_out.extend(ranked)  # a lone task is better used to protect than to search
            continue
        search.extend(ranked[:half])
        held_out.extend(ranked[half:])
    return search, held_out


def gate_subsample(pool: list[Task], *, size: int, seed: int, benchmark: str) -> list[Task]:
    """`size` tasks of the held-out pool, spread over categories, stable for a seed."""
    by_category: dict[str, list[Task]] = {}
    for t in sorted(pool, key=lambda t: _rank(seed + 1, benchmark, t.id)):
        by_category.setdefault(t.category, []).append(t)
    picked: list[Task] = []
    while len(picked) < min(size, len(pool)):
        for category in sorted(by_category):
            if by_category[category] and len(picked) < size:
                picked.append(by_category[category].pop(0))
    return sorted(picked, key=lambda t: t.id)


def cluster_categories(clusters: list[Cluster], all_categories: set[str]) -> dict[str, set[str]]:
    scopes = {c.id: set(c.categories) for c in clusters}
    named = set().union(*scopes.values()) if scopes else set()
    rest = all_categories - named
    if rest:
        scopes[REST_CLUSTER_ID] = rest
    return scopes


def cluster_scores(result: EvalResult, scopes: dict[str, set[str]]) -> dict[str, float | None]:
    """G_c for each cluster: mean score of the gate outcomes in its categories (None: no
    held-out task covers it)."""
    out: dict[str, float | None] = {}
    for cluster_id, categories in scopes.items():
        scores = [o.score for o in result.outcomes if o.category in categories]
        out[cluster_id] = sum(scores) / len(scores) if scores else None
    return out


@dataclass
class GateDecision:
    accepted: bool
    target: str
    before: dict[str, float | None]
    after: dict[str, float | None]
    eps: float
    reason: str
    regressions: dict[str, float] = field(default_factory=dict)

    def deltas(self) -> dict[str, float]:
        return {
            c: round((self.after[c] or 0.0) - (self.before[c] or 0.0), 4)
            for c in self.before
            if self.before[c] is not None and self.after.get(c) is not None
        }


def gate_ok(
    before: dict[str, float | None], after: dict[str, float | None], target: str, eps: float
) -> GateDecision:
    """GateOK exactly: the target strictly improves and no other cluster drops > eps."""
    g_before, g_after = before.get(target), after.get(target)
    if g_before is None or g_after is None:
        return GateDecision(
            False, target, before, after, eps, f"no held-out task covers cluster {target!r}"
        )
    regressions = {
        c: round(before[c] - after[c], 4)  # type: ignore[operator]
        for c in before
        if c != target
        and before[c] is not None
        and after.get(c) is not None
        and after[c] < before[c] - eps  # type: ignore[operator]
    }
    if not g_after > g_before:
        reason = f"target {target!r} did not improve ({g_before:.3f} -> {g_after:.3f})"
        return GateDecision(False, target, before, after, eps, reason, regressions)
    if regressions:
        worst = ", ".join(f"{c} -{d:.3f}" for c, d in sorted(regressions.items()))
        reason = (
            f"target {target!r} improved ({g_before:.3f} -> {g_after:.3f}) but other "
            f"clusters dropped by more than eps={eps}: {worst}"
        )
        return GateDecision(False, target, before, after, eps, reason, regressions)
    return GateDecision(
        True,
        target,
        before,
        after,
        eps,
        f"target {target!r} improved {g_before:.3f} -> {g_after:.3f}; "
        f"no other cluster dropped by more than {eps}",
    )
