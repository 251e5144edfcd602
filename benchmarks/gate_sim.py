"""Simulated gate decisions: false accepts, power and student runs, for both gate rules.

A noisy student: each gate task has its own success probability p ~ U(0.2, 0.8). The
current spec S and the candidate S' each run every task `repeats` times. A null edit
re-samples S' from the same p; a real edit adds +10 or +25 percentage points (capped at 1)
on the target cluster's tasks only, so every other cluster is null and can only cost the
edit its acceptance through noise; a trade adds +25 points on the target and takes 25 from
the next cluster, which the gate should reject. Both rules judge the same draws.

Every decision is made by the real gate (`homespun.learning.gate`): `candidate_batches`
orders S''s batches as the search graph's execute node does, and after each batch `settled`
judges the `TaskPair`s run so far, so "S' runs" counts early stopping. S's runs are not
counted: they are cached across the proposals of a session.

Two columns are computed, not simulated. "worst case" is the paired rule's largest
false-accept rate over every per-task p (exact: its target test alone, which bounds the rule).
The "bound" rows (one run per task) are the most any test can do on the target cluster at
the paired rule's alpha, by Neyman-Pearson (randomised, so out of reach for a real gate):
first among tests whose false accepts stay under alpha for every per-task p, then, in
brackets, for an oracle that knows p ~ U(0.2, 0.8) and is valid for nothing else.

    python benchmarks/gate_sim.py [--trials 4000] [--seed 0] [--repeats 1 3]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from homespun.learning.gate import TaskPair, candidate_batches, flip_ceiling, paired_p, settled
from homespun.learning.tasks import Task
from homespun.spec.models import GateSpec

SHAPES = ((10, 5), (5, 10), (3, 15), (2, 25))  # clusters x gate tasks per cluster
# (gain on the target cluster, loss on the next cluster): null, +10pp, +25pp, a trade
CASES = ((0.0, 0.0), (0.10, 0.0), (0.25, 0.0), (0.25, 0.25))
RULES = ("paired", "strict")
TARGET = "c0"
P_RANGE = (0.2, 0.8)


@dataclass
class Shape:
    """The gate set of one shape and the order S' runs it in (the real batching)."""

    clusters: int
    per_cluster: int
    tasks: list[Task]
    scopes: dict[str, set[str]]
    batches: list[list[int]]  # task indexes, batch by batch

    @classmethod
    def build(cls, clusters: int, per_cluster: int, chunk: int) -> Shape:
        tasks = [
            Task(id=f"c{k}-{i:02d}", query="-", category=f"c{k}")
            for k in range(clusters)
            for i in range(per_cluster)
        ]
        scopes = {f"c{k}": {f"c{k}"} for k in range(clusters)}
        index = {t.id: i for i, t in enumerate(tasks)}
        batches = [
            [index[t.id] for t in batch]
            for batch in candidate_batches(tasks, scopes[TARGET], chunk)
        ]
        return cls(clusters, per_cluster, tasks, scopes, batches)


def draw(
    shape: Shape, gain: float, loss: float, repeats: int, trials: int, rng: np.random.Generator
):
    """Passes of S and S' per trial and task (trials x tasks), over `repeats` runs."""
    p = rng.uniform(*P_RANGE, size=(trials, shape.clusters, shape.per_cluster))
    q = p.copy()
    q[:, 0, :] = np.minimum(p[:, 0, :] + gain, 1.0)  # cluster c0 is the target
    if loss and shape.clusters > 1:
        q[:, 1, :] = np.maximum(p[:, 1, :] - loss, 0.0)
    before = rng.binomial(repeats, p).reshape(trials, -1)
    after = rng.binomial(repeats, q).reshape(trials, -1)
    return before.tolist(), after.tolist()


def decide(
    shape: Shape, before: list[int], after: list[int], repeats: int, gate: GateSpec
) -> tuple[bool, int]:
    """(accepted, S' runs) of one candidate, run batch by batch until the gate settles."""
    pairs = [
        TaskPair(t.id, t.category, repeats, b, float(b))
        for t, b in zip(shape.tasks, before, strict=True)
    ]
    ran = 0
    for batch in shape.batches:
        for i in batch:
            t, a = shape.tasks[i], after[i]
            pairs[i] = TaskPair(t.id, t.category, repeats, before[i], float(before[i]), a, float(a))
        ran += len(batch)
        decision = settled(pairs, shape.scopes, TARGET, gate)
        if decision is not None:
            return decision.accepted, ran * repeats
    raise AssertionError("the gate did not settle with every task run")


def cell(
    shape: Shape, gain: float, loss: float, repeats: int, trials: int, rng, gates
) -> dict[str, tuple[float, float]]:
    """Accept rate and mean S' runs per rule for one (shape, case, repeats)."""
    before, after = draw(shape, gain, loss, repeats, trials, rng)
    out = {}
    for rule, gate in gates.items():
        accepted = runs = 0
        for b, a in zip(before, after, strict=True):
            ok, n = decide(shape, b, a, repeats, gate)
            accepted += ok
            runs += n
        out[rule] = (accepted / trials, runs / trials)
    return out


# --------------------------------------------------------------------------- exact columns


def worst_case_false_accepts(tasks: int, repeats: int, alpha: float) -> float:
    """The paired target test's largest false-accept rate over every per-task p: with k tasks
    at the flip ceiling r and the rest never changing (where the maximum lies, see
    `paired_p`), the chance of p <= alpha, largest over k."""
    r = flip_ceiling(repeats)
    worst = 0.0
    for k in range(tasks + 1):
        total = 0.0
        for w in range(k + 1):
            for lost in range(k + 1 - w):
                if paired_p(w, lost, tasks, repeats) <= alpha:
                    total += _multinomial(k, (w, lost), (r / 2, r / 2))
        worst = max(worst, total)
    return worst


def _multinomial(n: int, counts: tuple[int, ...], probs: tuple[float, ...]) -> float:
    """P(counts) of n draws; the draws not in `counts` fall in one remaining cell."""
    rest_n, rest_p = n - sum(counts), 1.0 - sum(probs)
    ways = math.factorial(n) // math.factorial(rest_n)
    chance = rest_p**rest_n
    for c, pr in zip(counts, probs, strict=True):
        ways //= math.factorial(c)
        chance *= pr**c
    return ways * chance


def cell_chances(gain: float) -> dict[str, float]:
    """One task's (S, S') outcome chances with one run each, averaged over p ~ U(0.2, 0.8):
    '01' S failed and S' passed (a win), '10' a loss, '00' and '11' ties."""
    p = np.linspace(*P_RANGE, 200_001)
    q = np.minimum(p + gain, 1.0)
    cells = {"00": (1 - p) * (1 - q), "01": (1 - p) * q, "10": p * (1 - q), "11": p * q}
    return {k: float(np.mean(v)) for k, v in cells.items()}  # a fine uniform grid: the mean


def _neyman_pearson(outcomes: list, null: list[float], alt: list[float], alpha: float) -> float:
    """Power of the most powerful (randomised) test at level alpha of one simple null against
    one simple alternative, over the given outcomes' probabilities."""
    order = sorted(range(len(outcomes)), key=lambda i: alt[i] / null[i], reverse=True)
    size = power = 0.0
    for i in order:
        if size + null[i] <= alpha:
            size += null[i]
            power += alt[i]
        else:
            return power + alt[i] * (alpha - size) / null[i]
    return power


def power_bounds(tasks: int, gain: float, alpha: float) -> tuple[float, float]:
    """(bound for tests valid for every per-task p, bound for an oracle that knows the prior)
    on the power of a target test with `tasks` tasks and one run each.

    Any test valid for every per-task p is valid for p drawn at random from any distribution
    G, and then tasks are independent with cells ((1-p)^2, p(1-p), p(1-p), p^2) averaged over
    G, which only G's first two moments set. Choosing them to give the same chances of '00'
    and '11' as the real edit leaves only wins against losses to tell the two apart: the
    Neyman-Pearson power against that G bounds every valid test. The oracle's G is the
    simulation's own prior."""
    alt = cell_chances(gain)
    m2 = alt["11"]
    m1 = (1.0 + alt["11"] - alt["00"]) / 2
    if not m1**2 <= m2 <= m1:
        raise ValueError("no distribution of p has these moments")
    changed = (m1 - m2, m1 - m2)  # the matched null's chances of '01' and '10'
    # Ties have the same chance under both, so outcomes are (wins, losses).
    pairs = [(w, lost) for w in range(tasks + 1) for lost in range(tasks + 1 - w)]
    valid = _neyman_pearson(
        pairs,
        [_multinomial(tasks, pair, changed) for pair in pairs],
        [_multinomial(tasks, pair, (alt["01"], alt["10"])) for pair in pairs],
        alpha,
    )
    prior = cell_chances(0.0)
    keys = ("01", "10", "11")  # '00' is the remaining cell
    counts = [
        c
        for c in np.ndindex(tasks + 1, tasks + 1, tasks + 1)
        if sum(c) <= tasks  # (wins, losses, both passed)
    ]
    oracle = _neyman_pearson(
        counts,
        [_multinomial(tasks, c, tuple(prior[k] for k in keys)) for c in counts],
        [_multinomial(tasks, c, tuple(alt[k] for k in keys)) for c in counts],
        alpha,
    )
    return valid, oracle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4000, help="decisions per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    gates = {rule: GateSpec(rule=rule) for rule in RULES}
    defaults = gates["paired"]
    started = time.perf_counter()
    se = 100 * math.sqrt(0.05 * 0.95 / args.trials)
    print(
        f"{args.trials} decisions per cell (standard error {se:.1f} pp at 5%), seed "
        f"{args.seed}; gate defaults: alpha {defaults.alpha}, regression_alpha "
        f"{defaults.regression_alpha}, max_regression {defaults.max_regression}, eps "
        f"{defaults.eps}, chunk {defaults.chunk}\n"
    )
    print(
        "| clusters x tasks | repeats | rule | false accepts (null) | worst case, any p "
        "| power +10pp | power +25pp | accepts +25pp bought with -25pp elsewhere "
        "| S' runs / decision: null, +10, +25 (all) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for clusters, per_cluster in SHAPES:
        shape = Shape.build(clusters, per_cluster, defaults.chunk)
        for repeats in args.repeats:
            cells = [cell(shape, g, lost, repeats, args.trials, rng, gates) for g, lost in CASES]
            worst = worst_case_false_accepts(per_cluster, repeats, defaults.alpha)
            for rule in RULES:
                (fa, r0), (p10, r10), (p25, r25), (trade, _) = (c[rule] for c in cells)
                bound = f"{worst:.1%}" if rule == "paired" else "none"
                full = clusters * per_cluster * repeats
                print(
                    f"| {clusters} x {per_cluster} | {repeats} | {rule} | {fa:.1%} | {bound} "
                    f"| {p10:.1%} | {p25:.1%} | {trade:.1%} "
                    f"| {r0:.1f}, {r10:.1f}, {r25:.1f} ({full}) |"
                )
            if repeats == 1:
                (v10, o10), (v25, o25) = (
                    power_bounds(per_cluster, g, defaults.alpha) for g in (0.10, 0.25)
                )
                print(
                    f"| {clusters} x {per_cluster} | 1 | bound | {defaults.alpha:.1%} "
                    f"| {defaults.alpha:.1%} | {v10:.1%} ({o10:.1%}) | {v25:.1%} ({o25:.1%}) "
                    "| | |"
                )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
