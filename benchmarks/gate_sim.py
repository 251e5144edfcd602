"""Simulated gate decisions: false accepts, power and student runs, for both gate rules.

A noisy student: each gate task has its own success probability p ~ U(0.2, 0.8). The
current spec S and the candidate S' each run every task `repeats` times. A null edit
re-samples S' from the same p; a real edit adds +10 or +25 percentage points (capped at 1)
on the target cluster's tasks only, so every other cluster is null and can only cost the
edit its acceptance through noise. Both rules judge the same draws.

Every decision is made by the real gate (`homespun.learning.gate`): `candidate_batches`
orders S''s batches as the search graph's execute node does, and after each batch `settled`
judges the `TaskPair`s run so far, so "S' runs" counts early stopping. S's runs are not
counted: they are cached across the proposals of a session.

    python benchmarks/gate_sim.py [--trials 2000] [--seed 0] [--repeats 1 3]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from homespun.learning.gate import TaskPair, candidate_batches, settled
from homespun.learning.tasks import Task
from homespun.spec.models import GateSpec

SHAPES = ((10, 5), (5, 10), (3, 15), (2, 25))  # clusters x gate tasks per cluster
EFFECTS = (0.0, 0.10, 0.25)  # null, +10pp, +25pp on the target cluster
RULES = ("paired", "strict")
TARGET = "c0"


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


def draw(shape: Shape, effect: float, repeats: int, trials: int, rng: np.random.Generator):
    """Passes of S and S' per trial and task (trials x tasks), over `repeats` runs."""
    p = rng.uniform(0.2, 0.8, size=(trials, shape.clusters, shape.per_cluster))
    q = p.copy()
    q[:, 0, :] = np.minimum(p[:, 0, :] + effect, 1.0)  # cluster c0 is the target
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


def cell(shape: Shape, effect: float, repeats: int, trials: int, rng, gates) -> dict:
    """Accept rate and mean S' runs per rule for one (shape, effect, repeats)."""
    before, after = draw(shape, effect, repeats, trials, rng)
    out = {}
    for rule, gate in gates.items():
        accepted = runs = 0
        for b, a in zip(before, after, strict=True):
            ok, n = decide(shape, b, a, repeats, gate)
            accepted += ok
            runs += n
        out[rule] = (accepted / trials, runs / trials)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="decisions per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    gates = {rule: GateSpec(rule=rule) for rule in RULES}
    defaults = gates["paired"]
    started = time.perf_counter()
    print(
        f"{args.trials} decisions per cell, seed {args.seed}; gate defaults: alpha "
        f"{defaults.alpha}, regression_alpha {defaults.regression_alpha}, max_regression "
        f"{defaults.max_regression}, eps {defaults.eps}, chunk {defaults.chunk}\n"
    )
    print(
        "| clusters x tasks | repeats | rule | false accepts (null) | power +10pp "
        "| power +25pp | S' runs / decision: null, +10, +25 (all) |"
    )
    print("|---|---|---|---|---|---|---|")
    for clusters, per_cluster in SHAPES:
        shape = Shape.build(clusters, per_cluster, defaults.chunk)
        for repeats in args.repeats:
            cells = [cell(shape, e, repeats, args.trials, rng, gates) for e in EFFECTS]
            for rule in RULES:
                (fa, r0), (p10, r10), (p25, r25) = (c[rule] for c in cells)
                full = clusters * per_cluster * repeats
                print(
                    f"| {clusters} x {per_cluster} | {repeats} | {rule} | {fa:.1%} | {p10:.1%} "
                    f"| {p25:.1%} | {r0:.1f}, {r10:.1f}, {r25:.1f} ({full}) |"
                )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
