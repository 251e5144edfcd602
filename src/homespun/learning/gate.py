"""The held-out gate (paper Algorithm 1, GateOK), with two rules (`learning.gate.rule`).

For a proposal e targeting cluster c, with S the *current accepted* spec and
S' = apply(S, e), both run on the same held-out gate tasks:

strict (the paper's GateOK)
    G_c(S') > G_c(S)  and  G_c'(S') >= G_c'(S) - eps  for every other c'
    where G_c is the mean score over the gate tasks whose category c covers. It has no noise
    control: with a stochastic student it accepts edits that change nothing.

paired (the default)
    Per task, the net gain d = (passes of S') - (passes of S) over the same repeats: a win
    (d > 0), a loss (d < 0) or a tie. Accept only if the target's wins against its losses
    give one-sided p <= alpha (`paired_p`: the sign test, with its false-accept chance
    counted over every outcome, so it spends alpha instead of a fraction of it, for any
    per-task success probability), and no other cluster (nor all of them together) lost more
    than eps with p <= regression_alpha (the exact sign-flip test, `sign_flip_p`), nor more
    than max_regression at all.

Every category no cluster names falls into the implicit 'rest' cluster, so tasks that
already pass are protected too. The task split and the gate subsample come from sha256 of
(seed, benchmark, task id): stable across processes, unlike Python's hash(). A session splits
three ways (`split_three`): search, gate, and a test split that only its before/after report
reads, since a gate score is chosen on and so flatters the edits it picked.

The candidate runs the gate set in batches, target cluster first, and stops as soon as the
remaining tasks cannot change the decision (`settled`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from homespun.learning.clusters import REST_CLUSTER_ID, Cluster
from homespun.learning.evaluation import EvalResult
from homespun.learning.tasks import Task
from homespun.spec.models import GateSpec
from homespun.stores.eval_cache import TaskOutcome

ALL_OTHERS = "all other clusters"  # the pooled regression check's name in reasons


def _rank(seed: int, benchmark: str, task_id: str) -> str:
    return hashlib.sha256(f"{seed}:{benchmark}:{task_id}".encode()).hexdigest()


def _ranked_by_category(tasks: list[Task], seed: int, benchmark: str) -> list[list[Task]]:
    """Each category's tasks in stable rank order, categories sorted by name."""
    by_category: dict[str, list[Task]] = {}
    for t in tasks:
        by_category.setdefault(t.category, []).append(t)
    return [
        sorted(by_category[c], key=lambda t: _rank(seed, benchmark, t.id))
        for c in sorted(by_category)
    ]


def split_tasks(tasks: list[Task], *, seed: int, benchmark: str) -> tuple[list[Task], list[Task]]:
    """(search set, held-out gate pool): half each per category, by stable rank.

    Diagnosis and proposers only ever see the search set; the gate only the pool. The
    benchmark scripts draw their samples from this two-way split; a session uses
    `split_three`, which is this split when it sets no test task aside.
    """
    search: list[Task] = []
    held_out: list[Task] = []
    for ranked in _ranked_by_category(tasks, seed, benchmark):
        half = len(ranked) // 2
        if len(ranked) == 1:
            held_out.extend(ranked)  # a lone task is better used to protect than to search
            continue
        search.extend(ranked[:half])
        held_out.extend(ranked[half:])
    return search, held_out


class TaskSplit(NamedTuple):
    """A benchmark's tasks in three disjoint sets: diagnosis and proposers see `search`, the
    gate `gate`, and only a session's before/after report `test`."""

    search: list[Task]
    gate: list[Task]
    test: list[Task]


def set_aside_for_test(n: int, test_fraction: float) -> int:
    """How many of a category's n tasks the test split takes: n * test_fraction rounded
    down, but never so many that fewer than two stay (one to search, one to protect)."""
    # The epsilon keeps 0.29 * 100 = 28.999... from losing a task to float rounding.
    return max(0, min(math.floor(n * test_fraction + 1e-9), n - 2))


def split_three(tasks: list[Task], *, seed: int, benchmark: str, test_fraction: float) -> TaskSplit:
    """(search, gate pool, test) per category, by the same stable rank as `split_tasks`.

    Each category's last-ranked `set_aside_for_test` tasks form the test split; the rest split as
    `split_tasks` does (half to search rounded down, the rest to the gate, a lone task to
    the gate). So test_fraction 0 gives `split_tasks` exactly, a tiny category gives no
    test task, and raising test_fraction only moves tasks into the test split.
    """
    split = TaskSplit([], [], [])
    for ranked in _ranked_by_category(tasks, seed, benchmark):
        kept = len(ranked) - set_aside_for_test(len(ranked), test_fraction)
        half = kept // 2
        split.search.extend(ranked[:half])
        split.gate.extend(ranked[half:kept])
        split.test.extend(ranked[kept:])
    return split


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
    """What the gate decided about one proposal, and why: `reason` is what a user reads.

    `before`/`after` are G_c(S) and G_c(S') per cluster on the tasks both ran: mean scores
    under the strict rule, pass rates under the paired rule (the same for pass/fail tasks).
    """

    accepted: bool
    target: str
    before: dict[str, float | None]
    after: dict[str, float | None]
    eps: float
    reason: str
    regressions: dict[str, float] = field(default_factory=dict)
    rule: str = "strict"
    stopped_early: bool = False  # S' did not run every gate task: the rest could not matter

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


# --------------------------------------------------------------------------- paired outcomes


@dataclass(frozen=True, slots=True)
class TaskPair:
    """One gate task run by S and by S' over the same repeats (passes and scores summed).

    `after_*` is None while S' has not run the task: the gate may stop before it does.
    """

    task_id: str
    category: str
    runs: int
    before_passed: int
    before_score: float
    after_passed: int | None = None
    after_score: float | None = None

    @property
    def pending(self) -> bool:
        return self.after_passed is None


def pair_outcomes(before: Iterable[TaskOutcome], after: Iterable[TaskOutcome]) -> list[TaskPair]:
    """S's and S''s outcomes paired by task over the repeats both ran, sorted by task id.

    A task S' has not run yet is pending. An errored run is a failure (success False, score
    0): it is counted, never dropped.
    """
    ours, theirs = _by_task(before), _by_task(after)
    pairs: list[TaskPair] = []
    for task_id in sorted(ours):
        runs_s = ours[task_id]
        category = next(iter(runs_s.values())).category
        runs_c = theirs.get(task_id)
        if runs_c is None:
            s = list(runs_s.values())
            pairs.append(TaskPair(task_id, category, len(s), _passes(s), _score(s)))
            continue
        both = sorted(runs_s.keys() & runs_c.keys())
        s, c = [runs_s[r] for r in both], [runs_c[r] for r in both]
        pairs.append(
            TaskPair(task_id, category, len(both), _passes(s), _score(s), _passes(c), _score(c))
        )
    return pairs


def _by_task(outcomes: Iterable[TaskOutcome]) -> dict[str, dict[int, TaskOutcome]]:
    out: dict[str, dict[int, TaskOutcome]] = {}
    for o in outcomes:
        out.setdefault(o.task_id, {})[o.repeat] = o
    return out


def _passes(outcomes: list[TaskOutcome]) -> int:
    return sum(o.success for o in outcomes)


def _score(outcomes: list[TaskOutcome]) -> float:
    return float(sum(o.score for o in outcomes))


def candidate_batches(
    tasks: list[Task], target_categories: set[str], size: int
) -> list[list[Task]]:
    """The gate set in the order S' runs it, `size` tasks a batch (0: all in one batch).

    The target cluster's tasks come first: they alone decide most rejections, so a candidate
    that cannot win stops before it runs the rest.
    """
    ordered = [t for t in tasks if t.category in target_categories]
    ordered += [t for t in tasks if t.category not in target_categories]
    if not ordered:
        return []
    step = size if size > 0 else len(ordered)
    return [ordered[i : i + step] for i in range(0, len(ordered), step)]


# --------------------------------------------------------------------------- the paired test


def sign_flip_p(diffs: Iterable[int]) -> float:
    """Exact one-sided p-value of 'S' is no better than S' from per-task net gains.

    If the edit changes nothing, S and S' are exchangeable on each task, so each task's gain
    d is as likely to be +|d| as -|d|: the null distribution of sum(d) is that of
    sum(+-|d_i|) over the 2^m sign patterns of the m nonzero tasks, counted exactly. With one
    run per task and pass/fail outcomes this is the exact one-sided sign test (McNemar on
    the discordant tasks). It is exact for any small n and asks nothing but exchangeability
    (not even independent runs), which makes it conservative: it conditions on which tasks
    changed, and its p-values come in coarse steps. The regression check uses it; the target
    uses `paired_p`. Why the task and not the run is the unit: a deterministic student
    repeats the same flip in every repeat, and counting those repeats as independent
    evidence would accept noise.
    """
    nonzero = [d for d in diffs if d]
    return _sign_flip_tail(tuple(sorted(abs(d) for d in nonzero)), sum(nonzero))


@lru_cache(maxsize=8192)
def _sign_flip_tail(magnitudes: tuple[int, ...], observed: int) -> float:
    ways: dict[int, int] = {0: 1}  # sum -> number of sign patterns giving it
    for m in magnitudes:
        step: dict[int, int] = {}
        for total, n in ways.items():
            step[total + m] = step.get(total + m, 0) + n
            step[total - m] = step.get(total - m, 0) + n
        ways = step
    tail = sum(n for total, n in ways.items() if total >= observed)
    return tail / 2 ** len(magnitudes)


def flip_ceiling(runs: int) -> float:
    """The most often a task's result can differ between S and S' when the edit changes
    nothing: the chance that two independent draws of Binomial(runs, p) differ, largest at
    p = 1/2, where it is 1 - C(2 runs, runs) / 4^runs (1/2 for one run, 0.6875 for three).

    Why p = 1/2: P(A = B) = (1/2pi) * integral of (1 - 2p(1-p)(1 - cos t))^runs dt, which
    falls as p(1-p) grows."""
    return 1.0 - math.comb(2 * runs, runs) / 4**runs


def paired_p(better: int, worse: int, tasks: int, runs: int = 1) -> float:
    """One-sided p-value of 'S' is no better than S'' from `better` tasks won and `worse`
    lost of `tasks` (runs per task: `runs`), valid whatever each task's success probability.

    The exact sign test (`sign_flip_p` with one run) conditions on how many tasks changed
    and wastes most of alpha: its p-values come in steps, so at alpha 0.05 with 10 tasks an
    edit that changes nothing passes it 1.4% of the time at most. This p-value ranks outcomes
    by the sign test's p-value, but counts the chance of an outcome ranked at least as
    extreme over all of them, unchanged tasks included. If the edit changes nothing and S'
    runs independently of S, a task is won with the same chance as it is lost, r/2 each,
    where r <= `flip_ceiling(runs)`; the chance is multilinear in the tasks' r, so it is
    largest with k tasks at the ceiling and the rest never changing, and the p-value is
    the largest over k = 0..tasks. So P(p <= alpha) <= alpha for every per-task p (and
    for a deterministic student), and p never exceeds the sign test's p on the same wins
    and losses: everything the exact sign test accepts, this accepts too. It assumes only
    that an edit that changes nothing does not make S' fail the tasks S passed and pass
    those it failed more often than re-running S would.

    With repeats a task counts by the sign of its net gain, not its size: that keeps the
    bound above exact, and in simulation (10 tasks, 3 runs, +25 points) it finds 60% of the
    real edits where the sign-flip test on net gains finds 52% (benchmarks/gate_sim.py).
    """
    return _paired_p(better, worse, max(tasks, better + worse), runs)


@lru_cache(maxsize=65536)
def _paired_p(better: int, worse: int, tasks: int, runs: int) -> float:
    changed = better + worse
    if changed == 0:
        return 1.0
    observed = _sign_tails(changed)[better]  # the sign test's p, as tail / 2**changed
    # For each number of changed tasks d, the chance (given d) of a sign-test p at most the
    # observed one: the largest such tail, compared exactly as integers.
    at_most: list[float] = []
    for d in range(tasks + 1):
        tails = _sign_tails(d)
        fits = [t for t in tails if t * 2**changed <= observed * 2**d]
        at_most.append(max(fits) / 2**d if fits else 0.0)
    r = flip_ceiling(runs)
    worst = 0.0
    for k in range(tasks + 1):  # k tasks at the flip ceiling, the rest never change
        chance = sum(math.comb(k, d) * r**d * (1 - r) ** (k - d) * at_most[d] for d in range(k + 1))
        worst = max(worst, chance)
    return min(worst, 1.0)


@lru_cache(maxsize=512)
def _sign_tails(changed: int) -> tuple[int, ...]:
    """For w = 0..changed, the count of sign patterns with at least w wins (of 2**changed)."""
    tails = [0] * (changed + 2)
    for w in range(changed, -1, -1):
        tails[w] = tails[w + 1] + math.comb(changed, w)
    return tuple(tails[: changed + 1])


@dataclass(frozen=True)
class _Evidence:
    """The paired comparison of S and S' on one set of tasks."""

    diffs: tuple[int, ...]
    before: float  # pass rates over the runs
    after: float
    runs: int  # runs per task (the most any task had)

    @property
    def tasks(self) -> int:
        return len(self.diffs)

    @property
    def better(self) -> int:
        return sum(d > 0 for d in self.diffs)

    @property
    def worse(self) -> int:
        return sum(d < 0 for d in self.diffs)

    def p_gain(self) -> float:
        return paired_p(self.better, self.worse, self.tasks, self.runs)

    def p_loss(self) -> float:
        return sign_flip_p(-d for d in self.diffs)

    def describe(self, first: str, second: str, p: float) -> str:
        counts = {"better": self.better, "worse": self.worse}
        return (
            f"{counts[first]} task(s) {first}, {counts[second]} {second} of {self.tasks} "
            f"({self.before:.3f} -> {self.after:.3f}), one-sided p={p:.3g}"
        )


def _after(pair: TaskPair, fill: bool | None) -> tuple[int, float]:
    """S''s (passes, score) on a pair; a pending one as if S' passed (fill) or failed all."""
    if pair.after_passed is not None:
        return pair.after_passed, pair.after_score or 0.0
    n = pair.runs if fill else 0
    return n, float(n)


def _evidence(pairs: list[TaskPair], fill: bool | None) -> _Evidence | None:
    runs = sum(p.runs for p in pairs)
    if not runs:
        return None
    diffs: list[int] = []
    before = after = 0
    for p in pairs:
        passed = _after(p, fill)[0]
        diffs.append(passed - p.before_passed)
        before += p.before_passed
        after += passed
    return _Evidence(tuple(diffs), before / runs, after / runs, max(p.runs for p in pairs))


def min_gate_tasks(alpha: float, runs: int = 1) -> int:
    """Gate tasks a cluster needs before the paired rule can accept anything at `alpha`: even a
    clean sweep of n tasks (S failed each, S' passed each) has p = (flip_ceiling(runs) / 2)**n,
    so 3 at alpha 0.05 with one run."""
    need = 1
    while paired_p(need, 0, need, runs) > alpha:
        need += 1
    return need


def _too_few(tasks: int, alpha: float, runs: int) -> str:
    need = min_gate_tasks(alpha, runs)
    if tasks >= need:
        return ""
    return (
        f"; with {tasks} gate task(s) no edit can reach alpha={alpha}, at least {need} are "
        "needed (raise learning.gate.subsample, add tasks, or set learning.gate.rule = "
        '"strict")'
    )


# --------------------------------------------------------------------------- the rules

Groups = dict[str, list[TaskPair]]


def _groups(pairs: list[TaskPair], scopes: dict[str, set[str]]) -> Groups:
    return {c: [p for p in pairs if p.category in cats] for c, cats in scopes.items()}


def _means(
    groups: Groups, fill: bool | None, *, scores: bool
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """G_c(S), G_c(S') per cluster: mean scores (strict) or pass rates (paired)."""
    before: dict[str, float | None] = {}
    after: dict[str, float | None] = {}
    for c, pairs in groups.items():
        runs = sum(p.runs for p in pairs)
        if not runs:
            before[c] = after[c] = None
            continue
        if scores:
            b = sum(p.before_score for p in pairs)
            a = sum(_after(p, fill)[1] for p in pairs)
        else:
            b = sum(p.before_passed for p in pairs)
            a = sum(_after(p, fill)[0] for p in pairs)
        before[c], after[c] = b / runs, a / runs
    return before, after


def _paired(
    pairs: list[TaskPair],
    scopes: dict[str, set[str]],
    target: str,
    gate: GateSpec,
    fill: bool | None,
) -> GateDecision:
    groups = _groups(pairs, scopes)
    before, after = _means(groups, fill, scores=False)

    def decide(accepted: bool, reason: str, regressions: dict[str, float] | None = None):
        return GateDecision(
            accepted, target, before, after, gate.eps, reason, regressions or {}, rule="paired"
        )

    gain = _evidence(groups.get(target, []), fill)
    if gain is None:
        return decide(False, f"no held-out task covers cluster {target!r}")
    p = gain.p_gain()
    if p > gate.alpha:
        return decide(
            False,
            f"target {target!r} not shown to improve: {gain.describe('better', 'worse', p)} "
            f"> alpha={gate.alpha}{_too_few(gain.tasks, gate.alpha, gain.runs)}",
        )
    shown = (
        f"target {target!r} improved: {gain.describe('better', 'worse', p)} <= alpha={gate.alpha}"
    )
    found = _regressions(groups, pairs, scopes.get(target, set()), target, gate, fill)
    if found:
        losses = {c: round(loss, 4) for c, (loss, _) in found.items()}
        return decide(False, f"{shown}, but " + "; ".join(w for _, w in found.values()), losses)
    return decide(
        True,
        f"{shown}; no other cluster lost more than eps={gate.eps} at "
        f"regression_alpha={gate.regression_alpha} or more than "
        f"max_regression={gate.max_regression}",
    )


def _regressions(
    groups: Groups,
    pairs: list[TaskPair],
    target_categories: set[str],
    target: str,
    gate: GateSpec,
    fill: bool | None,
) -> dict[str, tuple[float, str]]:
    """Other clusters that lost (loss, why): significantly more than eps, or more than
    max_regression at all, since a small cluster can never show significance."""
    checks = {c: ps for c, ps in groups.items() if c != target and ps}
    if len(checks) > 1:
        # A regression spread thin over many small clusters shows in none of them alone.
        checks[ALL_OTHERS] = [p for p in pairs if p.category not in target_categories]
    found: dict[str, tuple[float, str]] = {}
    for name, group in checks.items():
        ev = _evidence(group, fill)
        if ev is None:
            continue
        loss = ev.before - ev.after
        if loss > gate.max_regression and name != ALL_OTHERS:
            found[name] = (
                loss,
                f"{name!r} dropped {ev.before:.3f} -> {ev.after:.3f}, more than "
                f"max_regression={gate.max_regression}",
            )
        elif loss > gate.eps and (p := ev.p_loss()) <= gate.regression_alpha:
            found[name] = (
                loss,
                f"{name!r} regressed: {ev.describe('worse', 'better', p)} "
                f"<= regression_alpha={gate.regression_alpha}",
            )
    return found


def _strict(
    pairs: list[TaskPair],
    scopes: dict[str, set[str]],
    target: str,
    gate: GateSpec,
    fill: bool | None,
) -> GateDecision:
    before, after = _means(_groups(pairs, scopes), fill, scores=True)
    return gate_ok(before, after, target, gate.eps)


def _judge(
    pairs: list[TaskPair],
    scopes: dict[str, set[str]],
    target: str,
    gate: GateSpec,
    fill: bool | None,
) -> GateDecision:
    rule = _strict if gate.rule == "strict" else _paired
    return rule(pairs, scopes, target, gate, fill)


def _named(decision: GateDecision) -> GateDecision:
    decision.reason = f"{decision.rule} rule: {decision.reason}"
    return decision


def judge(
    pairs: list[TaskPair], scopes: dict[str, set[str]], target: str, gate: GateSpec
) -> GateDecision:
    """The gate's decision by `gate.rule` on pairs S' has run in full; the reason names the
    rule, the cluster that decided and its numbers."""
    if any(p.pending for p in pairs):
        raise ValueError("judge() needs every gate task run by S'; settled() takes pending ones")
    return _named(_judge(pairs, scopes, target, gate, None))


def settled(
    pairs: list[TaskPair], scopes: dict[str, set[str]], target: str, gate: GateSpec
) -> GateDecision | None:
    """The decision once S''s pending tasks can no longer change it; None until then.

    Both rules are monotone in S''s outcomes (a pass never counts against S'). So if S' is
    rejected even when it passes every pending run, or accepted even when it fails every
    one, running the rest would decide the same. Stopping then changes no decision, for
    losers as for winners, so the error rates are exactly those of the full gate: this is
    curtailment, not a sequential test, and needs no correction for looking more than once.
    """
    if not any(p.pending for p in pairs):
        return _named(_judge(pairs, scopes, target, gate, None))
    best = _judge(pairs, scopes, target, gate, True)
    if not best.accepted:
        return _named(_stopped(best, pairs, scopes, "passed"))
    worst = _judge(pairs, scopes, target, gate, False)
    if worst.accepted:
        return _named(_stopped(worst, pairs, scopes, "failed"))
    return None


def _stopped(
    decision: GateDecision, pairs: list[TaskPair], scopes: dict[str, set[str]], how: str
) -> GateDecision:
    """An early decision: scores on the tasks S' ran, the reason says what was assumed."""
    ran = [p for p in pairs if not p.pending]
    decision.before, decision.after = _means(
        _groups(ran, scopes), None, scores=decision.rule == "strict"
    )
    decision.reason = (
        f"stopped after {len(ran)} of {len(pairs)} gate tasks, since even if S' {how} every "
        f"remaining run: {decision.reason}"
    )
    decision.stopped_early = True
    return decision
