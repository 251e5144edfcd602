"""The held-out gate, function by function, on small hand-built inputs.

What a user notices is whether an edit is accepted or rejected, and which tasks decided it:
the split and the gate subsample must be the same in every process, every task of the pool
is judged (an errored run is a failure, never dropped). The strict rule is GateOK exactly:
the target strictly improves and no other cluster, the protected `rest` included, drops by
more than eps. The paired rule (the default) accepts only a gain that noise is unlikely to
explain, rejects a shown regression anywhere else, and says in its reason which cluster
decided and with what numbers. Stopping a candidate early never changes a decision.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from math import comb

import pytest

from homespun.learning.clusters import REST_CLUSTER_ID, Cluster
from homespun.learning.evaluation import EvalResult
from homespun.learning.gate import (
    ALL_OTHERS,
    TaskPair,
    candidate_batches,
    cluster_categories,
    cluster_scores,
    flip_ceiling,
    gate_ok,
    gate_subsample,
    judge,
    min_gate_tasks,
    pair_outcomes,
    paired_p,
    settled,
    sign_flip_p,
    split_tasks,
    split_three,
)
from homespun.learning.tasks import Task
from homespun.mcp_servers.core import CORE_TOOL_DESCRIPTIONS
from homespun.spec import SpecError, parse_spec
from homespun.spec.defaults import default_spec_text
from homespun.spec.models import GateSpec
from homespun.stores.eval_cache import TaskOutcome

BENCH = "toy"


def _tasks(**per_category: int) -> list[Task]:
    return [
        Task(id=f"{category}-{i:02d}", query=f"q {category} {i}", category=category)
        for category, n in per_category.items()
        for i in range(n)
    ]


def _ids(tasks: list[Task]) -> list[str]:
    return [t.id for t in tasks]


def _outcome(
    task_id: str,
    category: str,
    score: float,
    status: str = "ok",
    error: str | None = None,
    repeat: int = 0,
) -> TaskOutcome:
    return TaskOutcome(
        task_id=task_id,
        category=category,
        repeat=repeat,
        success=score == 1.0,
        score=score,
        reason=error or "",
        trace_id="",
        status=status,
        error=error,
        answer=None,
        latency_s=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        tool_calls=0,
    )


def _result(*outcomes: TaskOutcome) -> EvalResult:
    return EvalResult(spec_hash="h", benchmark=BENCH, outcomes=list(outcomes))


def _cluster(cluster_id: str, *categories: str) -> Cluster:
    return Cluster(
        id=cluster_id,
        name=cluster_id,
        categories=list(categories),
        student_failure_rate=0.5,
        skill_gap="-",
    )


# --------------------------------------------------------------------------- split


_SPLIT_IN_A_SUBPROCESS = """
import json, sys
from homespun.learning.gate import gate_subsample, split_tasks, split_three
from homespun.learning.tasks import Task
spec = json.loads(sys.argv[1])
tasks = [Task(id=i, query="q", category=c) for i, c in spec["tasks"]]
search, pool = split_tasks(tasks, seed=spec["seed"], benchmark=spec["benchmark"])
sub = gate_subsample(pool, size=spec["size"], seed=spec["seed"], benchmark=spec["benchmark"])
three = split_three(tasks, seed=spec["seed"], benchmark=spec["benchmark"], test_fraction=0.25)
print(json.dumps([[t.id for t in part] for part in (search, pool, sub, *three)]))
"""


def _split_elsewhere(tasks: list[Task], seed: int, size: int, hash_seed: str) -> list:
    arg = json.dumps(
        {
            "tasks": [[t.id, t.category] for t in tasks],
            "seed": seed,
            "benchmark": BENCH,
            "size": size,
        }
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", _SPLIT_IN_A_SUBPROCESS, arg],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_split_and_subsample_are_the_same_in_every_process():
    tasks = _tasks(arithmetic=9, memory=6, files=5)
    search, pool = split_tasks(tasks, seed=7, benchmark=BENCH)
    sub = gate_subsample(pool, size=6, seed=7, benchmark=BENCH)
    three = split_three(tasks, seed=7, benchmark=BENCH, test_fraction=0.25)
    here = [_ids(search), _ids(pool), _ids(sub), *(_ids(part) for part in three)]
    # Python's own hash() differs between these processes; the split must not.
    assert _split_elsewhere(tasks, 7, 6, hash_seed="1") == here
    assert _split_elsewhere(tasks, 7, 6, hash_seed="2") == here
    # and the input order does not matter either
    again = split_tasks(list(reversed(tasks)), seed=7, benchmark=BENCH)
    assert sorted(_ids(again[0])) == sorted(_ids(search))
    assert sorted(_ids(again[1])) == sorted(_ids(pool))
    reordered = split_three(list(reversed(tasks)), seed=7, benchmark=BENCH, test_fraction=0.25)
    assert [sorted(_ids(part)) for part in reordered] == [sorted(_ids(part)) for part in three]


def test_split_depends_on_the_seed_and_the_benchmark():
    tasks = _tasks(arithmetic=20)
    held = set(_ids(split_tasks(tasks, seed=7, benchmark=BENCH)[1]))
    assert set(_ids(split_tasks(tasks, seed=7, benchmark=BENCH)[1])) == held
    assert set(_ids(split_tasks(tasks, seed=8, benchmark=BENCH)[1])) != held
    assert set(_ids(split_tasks(tasks, seed=7, benchmark="other")[1])) != held


def test_split_is_disjoint_covering_and_halves_each_category():
    tasks = _tasks(arithmetic=9, memory=6, files=2, weather=1)
    search, pool = split_tasks(tasks, seed=3, benchmark=BENCH)
    assert not set(_ids(search)) & set(_ids(pool))  # the gate never sees a search task
    assert sorted(_ids(search) + _ids(pool)) == sorted(_ids(tasks))  # nothing lost
    assert len(search) == len(set(_ids(search))) and len(pool) == len(set(_ids(pool)))

    def count(part: list[Task], category: str) -> int:
        return sum(t.category == category for t in part)

    assert (count(search, "arithmetic"), count(pool, "arithmetic")) == (4, 5)
    assert (count(search, "memory"), count(pool, "memory")) == (3, 3)
    assert (count(search, "files"), count(pool, "files")) == (1, 1)
    # a lone task protects (held out) rather than being searched on
    assert (count(search, "weather"), count(pool, "weather")) == (0, 1)


def test_split_of_nothing_is_empty():
    assert split_tasks([], seed=1, benchmark=BENCH) == ([], [])
    assert split_three([], seed=1, benchmark=BENCH, test_fraction=0.25) == ([], [], [])


def test_three_way_split_is_disjoint_covering_with_shares_per_category():
    tasks = _tasks(arithmetic=12, memory=8, files=4, pair=2, weather=1)
    search, pool, test = split_three(tasks, seed=3, benchmark=BENCH, test_fraction=0.25)
    parts = [set(_ids(search)), set(_ids(pool)), set(_ids(test))]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sorted(_ids(search) + _ids(pool) + _ids(test)) == sorted(_ids(tasks))

    def counts(category: str) -> tuple[int, int, int]:
        return tuple(sum(t.category == category for t in part) for part in (search, pool, test))

    # a quarter, rounded down, to test; the rest halved, the odd one to the gate
    assert counts("arithmetic") == (4, 5, 3)
    assert counts("memory") == (3, 3, 2)
    assert counts("files") == (1, 2, 1)
    # too small for a test task: one to search, one to protect; a lone task protects
    assert counts("pair") == (1, 1, 0)
    assert counts("weather") == (0, 1, 0)
    # however large the share, a category keeps one task to search and one to protect
    big = split_three(_tasks(files=3), seed=3, benchmark=BENCH, test_fraction=0.5)
    assert [len(part) for part in big] == [1, 1, 1]


def test_three_way_split_depends_on_the_seed_and_the_benchmark():
    tasks = _tasks(arithmetic=20)

    def test_ids(seed: int, benchmark: str) -> set[str]:
        return set(_ids(split_three(tasks, seed=seed, benchmark=benchmark, test_fraction=0.25)[2]))

    held = test_ids(7, BENCH)
    assert len(held) == 5 and test_ids(7, BENCH) == held
    assert test_ids(8, BENCH) != held
    assert test_ids(7, "other") != held


def test_no_test_share_is_the_two_way_split_and_a_bigger_one_only_moves_tasks_into_test():
    tasks = _tasks(arithmetic=9, memory=6, files=2, weather=1)
    search, pool = split_tasks(tasks, seed=3, benchmark=BENCH)
    assert split_three(tasks, seed=3, benchmark=BENCH, test_fraction=0.0) == (search, pool, [])
    small = split_three(tasks, seed=3, benchmark=BENCH, test_fraction=0.2).test
    large = split_three(tasks, seed=3, benchmark=BENCH, test_fraction=0.5).test
    assert set(_ids(small)) < set(_ids(large))


@pytest.mark.parametrize("value", [-0.1, 0.6])
def test_a_test_fraction_out_of_range_is_an_error_naming_the_field(value):
    text = default_spec_text(CORE_TOOL_DESCRIPTIONS)
    assert parse_spec(text).learning.gate.test_fraction == 0.25  # the default
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace("\ntest_fraction = 0.25", f"\ntest_fraction = {value}", 1))
    assert "learning.gate.test_fraction" in err.value.fields


# --------------------------------------------------------------------------- subsample


def test_subsample_has_the_asked_size_spread_over_categories_and_is_stable():
    pool = _tasks(arithmetic=10, memory=10, files=2)
    sub = gate_subsample(pool, size=7, seed=5, benchmark=BENCH)
    assert len(sub) == 7 and len(set(_ids(sub))) == 7
    assert set(_ids(sub)) <= set(_ids(pool))
    assert _ids(sub) == sorted(_ids(sub))
    per_category = {c: sum(t.category == c for t in sub) for c in ("arithmetic", "memory", "files")}
    # round-robin over categories: the small one is used up, the others share the rest
    assert per_category == {"arithmetic": 3, "memory": 2, "files": 2}
    assert gate_subsample(pool, size=7, seed=5, benchmark=BENCH) == sub
    assert gate_subsample(list(reversed(pool)), size=7, seed=5, benchmark=BENCH) == sub
    assert gate_subsample(pool, size=7, seed=6, benchmark=BENCH) != sub


def test_subsample_no_bigger_than_the_pool():
    pool = _tasks(arithmetic=3, memory=1)
    assert _ids(gate_subsample(pool, size=50, seed=5, benchmark=BENCH)) == sorted(_ids(pool))
    assert gate_subsample(pool, size=0, seed=5, benchmark=BENCH) == []
    assert gate_subsample([], size=4, seed=5, benchmark=BENCH) == []


def test_subsample_grows_without_reshuffling():
    """A bigger gate keeps the tasks of a smaller one: raising subsample adds evidence."""
    pool = _tasks(arithmetic=8, memory=8)
    small = set(_ids(gate_subsample(pool, size=4, seed=9, benchmark=BENCH)))
    big = set(_ids(gate_subsample(pool, size=10, seed=9, benchmark=BENCH)))
    assert small < big


# --------------------------------------------------------------------------- cluster scores


def test_uncovered_categories_form_the_protected_rest_cluster():
    clusters = [_cluster("arith", "arithmetic"), _cluster("mem", "memory", "notes")]
    scopes = cluster_categories(clusters, {"arithmetic", "memory", "files", "weather"})
    assert scopes == {
        "arith": {"arithmetic"},
        "mem": {"memory", "notes"},
        REST_CLUSTER_ID: {"files", "weather"},
    }
    assert REST_CLUSTER_ID not in cluster_categories(clusters, {"arithmetic", "memory"})
    assert cluster_categories([], {"files"}) == {REST_CLUSTER_ID: {"files"}}


def test_cluster_score_is_the_mean_and_an_errored_run_counts_as_failed():
    scopes = {"arith": {"arithmetic"}, "mem": {"memory"}, "web": {"weather"}}
    result = _result(
        _outcome("a1", "arithmetic", 1.0),
        _outcome("a2", "arithmetic", 0.0, status="error", error="engine down"),
        _outcome("a3", "arithmetic", 0.5),
        _outcome("a4", "arithmetic", 0.0, status="error", error="environment error: boom"),
        _outcome("m1", "memory", 1.0),
    )
    scores = cluster_scores(result, scopes)
    assert scores["arith"] == (1.0 + 0.0 + 0.5 + 0.0) / 4  # not 0.75: errors stay in
    assert scores["mem"] == 1.0
    assert scores["web"] is None  # no held-out task covers it: unknown, not 0


def test_an_edit_that_only_trades_a_failure_for_a_crash_is_not_an_improvement():
    scopes = {"arith": {"arithmetic"}, "mem": {"memory"}}
    before = _result(
        _outcome("a1", "arithmetic", 1.0),
        _outcome("a2", "arithmetic", 0.0),
        _outcome("m1", "memory", 1.0),
    )
    after = _result(
        _outcome("a1", "arithmetic", 0.0, status="error", error="crash"),
        _outcome("a2", "arithmetic", 1.0),
        _outcome("m1", "memory", 1.0),
    )
    decision = gate_ok(
        cluster_scores(before, scopes), cluster_scores(after, scopes), "arith", eps=0.01
    )
    assert not decision.accepted  # had the crash been dropped, arith would read 1.0
    assert "did not improve" in decision.reason


def test_an_edit_that_crashes_another_clusters_runs_is_rejected():
    scopes = {"arith": {"arithmetic"}, "mem": {"memory"}}
    before = _result(
        _outcome("a1", "arithmetic", 0.0),
        _outcome("m1", "memory", 1.0),
        _outcome("m2", "memory", 1.0),
    )
    after = _result(
        _outcome("a1", "arithmetic", 1.0),
        _outcome("m1", "memory", 1.0),
        _outcome("m2", "memory", 0.0, status="error", error="timeout"),
    )
    decision = gate_ok(
        cluster_scores(before, scopes), cluster_scores(after, scopes), "arith", eps=0.01
    )
    assert not decision.accepted
    assert decision.regressions == {"mem": 0.5}


# --------------------------------------------------------------------------- GateOK


def test_strict_improvement_with_others_within_eps_is_accepted():
    before = {"arith": 0.25, "mem": 0.75, "files": 0.5}
    after = {"arith": 0.5, "mem": 0.5, "files": 1.0}  # mem drops by exactly eps: allowed
    decision = gate_ok(before, after, "arith", eps=0.25)
    assert decision.accepted, decision.reason
    assert decision.regressions == {}
    assert decision.deltas() == {"arith": 0.25, "mem": -0.25, "files": 0.5}
    assert "'arith' improved 0.250 -> 0.500" in decision.reason


def test_a_drop_beyond_eps_on_another_cluster_is_rejected_and_named():
    before = {"arith": 0.25, "mem": 0.75, "files": 0.5}
    after = {"arith": 1.0, "mem": 0.5, "files": 0.5}
    decision = gate_ok(before, after, "arith", eps=0.125)
    assert not decision.accepted
    assert decision.regressions == {"mem": 0.25}
    assert "mem -0.250" in decision.reason and "eps=0.125" in decision.reason
    # the same drop within a wider eps passes
    assert gate_ok(before, after, "arith", eps=0.25).accepted
    # with eps 0 any drop elsewhere is a rejection
    assert not gate_ok(
        {"arith": 0.0, "mem": 1.0}, {"arith": 1.0, "mem": 0.96875}, "arith", eps=0.0
    ).accepted


def test_a_tie_or_a_loss_on_the_target_is_rejected():
    tie = gate_ok({"arith": 0.5, "mem": 0.5}, {"arith": 0.5, "mem": 1.0}, "arith", eps=0.01)
    assert not tie.accepted  # others improving does not make up for no gain on the target
    assert "did not improve (0.500 -> 0.500)" in tie.reason
    worse = gate_ok({"arith": 0.5}, {"arith": 0.25}, "arith", eps=0.5)
    assert not worse.accepted  # eps only forgives the *other* clusters
    # a gain smaller than eps on the target still counts: the target rule is strict
    assert gate_ok({"arith": 0.5}, {"arith": 0.5078125}, "arith", eps=0.25).accepted


def test_the_rest_cluster_is_guarded_like_any_other():
    clusters = [_cluster("arith", "arithmetic")]
    scopes = cluster_categories(clusters, {"arithmetic", "files"})
    before = _result(
        _outcome("a1", "arithmetic", 0.0),
        _outcome("f1", "files", 1.0),
        _outcome("f2", "files", 1.0),
    )
    after = _result(
        _outcome("a1", "arithmetic", 1.0),
        _outcome("f1", "files", 1.0),
        _outcome("f2", "files", 0.0),
    )
    decision = gate_ok(
        cluster_scores(before, scopes), cluster_scores(after, scopes), "arith", eps=0.01
    )
    assert not decision.accepted  # the gain was bought by breaking a task that passed
    assert decision.regressions == {REST_CLUSTER_ID: 0.5}
    assert f"{REST_CLUSTER_ID} -0.500" in decision.reason

    kept = _result(
        _outcome("a1", "arithmetic", 1.0),
        _outcome("f1", "files", 1.0),
        _outcome("f2", "files", 1.0),
    )
    assert gate_ok(
        cluster_scores(before, scopes), cluster_scores(kept, scopes), "arith", eps=0.01
    ).accepted


def test_a_target_no_held_out_task_covers_is_rejected():
    decision = gate_ok({"arith": None, "mem": 0.5}, {"arith": None, "mem": 1.0}, "arith", eps=0.01)
    assert not decision.accepted
    assert decision.reason == "no held-out task covers cluster 'arith'"
    unknown = gate_ok({"mem": 0.5}, {"mem": 1.0}, "ghost", eps=0.01)
    assert not unknown.accepted and "'ghost'" in unknown.reason


def test_clusters_without_a_score_on_either_side_are_not_regressions():
    before = {"arith": 0.0, "mem": None, "files": 1.0}
    after = {"arith": 1.0, "mem": 0.0, "files": None}
    decision = gate_ok(before, after, "arith", eps=0.01)
    assert decision.accepted, decision.reason
    assert decision.deltas() == {"arith": 1.0}


# --------------------------------------------------------------------------- paired outcomes

PAIRED = GateSpec()  # the default: rule "paired"
STRICT = GateSpec(rule="strict")


def _pairs(cluster: str, before: str, after: str | None = None) -> list[TaskPair]:
    """One task per character, its category the cluster's id: '1' passed, '0' failed;
    `after` None: S' has not run them yet."""
    return [
        TaskPair(
            f"{cluster}-{i:02d}",
            cluster,
            1,
            int(b),
            float(b),
            None if after is None else int(after[i]),
            None if after is None else float(after[i]),
        )
        for i, b in enumerate(before)
    ]


def _scopes(*clusters: str) -> dict[str, set[str]]:
    return {c: {c} for c in clusters}


def test_pairs_are_made_by_task_over_the_repeats_both_ran_and_a_crash_is_a_failure():
    before = [
        _outcome("a1", "arith", 0.0, repeat=0),
        _outcome("a1", "arith", 1.0, repeat=1),
        _outcome("a2", "arith", 1.0, repeat=0),
        _outcome("a2", "arith", 1.0, repeat=1),
        _outcome("m1", "mem", 1.0),
    ]
    after = [
        _outcome("a1", "arith", 1.0, repeat=0),
        _outcome("a1", "arith", 1.0, repeat=1),
        _outcome("a2", "arith", 0.0, "error", "timeout", repeat=0),
        _outcome("a2", "arith", 1.0, repeat=1),
    ]
    a1, a2, m1 = pair_outcomes(before, after)
    assert (a1.runs, a1.before_passed, a1.after_passed) == (2, 1, 2)
    assert (a2.before_passed, a2.after_passed, a2.after_score) == (2, 1, 1.0)  # crash counted
    assert m1.pending and m1.before_passed == 1  # S' has not run it
    assert [p.task_id for p in pair_outcomes(before, [])] == ["a1", "a2", "m1"]


def test_the_paired_test_is_the_exact_sign_test_and_counts_tasks_not_repeats():
    for n in range(8):
        for better in range(n + 1):
            exact = sum(comb(n, k) for k in range(better, n + 1)) / 2**n
            assert sign_flip_p([1] * better + [-1] * (n - better)) == pytest.approx(exact)
    assert sign_flip_p([0, 0, 0]) == 1.0  # no task changed: no evidence at all
    # Two tasks fixed in all 3 repeats are two tasks, not six runs, of evidence: a
    # deterministic student repeats a lucky flip in every repeat.
    assert sign_flip_p([3, 3]) == 0.25
    assert sign_flip_p([2, 1, 1]) == 1 / 8 and sign_flip_p([2, -1]) == 1 / 2


def _null_accepts(ps: list[float], runs: int, alpha: float) -> float:
    """The exact chance that the target test passes an edit that changes nothing, when task
    i succeeds with chance ps[i] in every run of S and of S' (runs independent)."""
    chances: dict[tuple[int, int], float] = {(0, 0): 1.0}  # (won, lost) -> chance
    for p in ps:
        passes = [comb(runs, j) * p**j * (1 - p) ** (runs - j) for j in range(runs + 1)]
        win = sum(passes[b] * passes[a] for b in range(runs + 1) for a in range(b + 1, runs + 1))
        step: dict[tuple[int, int], float] = {}
        for (won, lost), chance in chances.items():
            for key, q in (
                ((won + 1, lost), win),
                ((won, lost + 1), win),
                ((won, lost), 1 - 2 * win),
            ):
                step[key] = step.get(key, 0.0) + chance * q
        chances = step
    return sum(c for (w, lost), c in chances.items() if paired_p(w, lost, len(ps), runs) <= alpha)


@pytest.mark.parametrize("runs", [1, 2, 3])
def test_an_edit_that_changes_nothing_passes_at_most_alpha_of_the_time_whatever_each_task_p(runs):
    rng = random.Random(runs)
    for n in (3, 5, 10, 16):
        half = n // 2
        for alpha in (0.05, 0.1):
            for ps in (
                [0.5] * n,  # the worst case: every task a coin toss ...
                [0.5] * half + [1.0] * (n - half),  # ... or some, the rest never changing
                [rng.random() for _ in range(n)],
                [rng.choice([0.0, 0.2, 0.5, 0.7, 1.0]) for _ in range(n)],
                [rng.uniform(0.2, 0.8) for _ in range(n)],  # the gate simulation's student
            ):
                assert _null_accepts(ps, runs, alpha) <= alpha + 1e-12, (n, alpha, ps)


def test_the_paired_test_spends_alpha_where_the_sign_test_wastes_it():
    # With 10 coin-toss tasks the exact sign test passes a null edit 1.4% of the time at
    # alpha 0.05; the paired test passes it 3.3% of the time, still under alpha ...
    assert _null_accepts([0.5] * 10, 1, 0.05) == pytest.approx(0.0335, abs=1e-4)
    # ... and never asks more than the sign test did: what it accepted is still accepted.
    for n in range(1, 21):
        for won in range(n + 1):
            for lost in range(n + 1 - won):
                sign_test = sign_flip_p([1] * won + [-1] * lost)
                assert paired_p(won, lost, n) <= sign_test
    # a task can flip at most as often as two runs of a fair coin differ
    assert flip_ceiling(1) == 0.5 and flip_ceiling(3) == 0.6875
    grid = [i / 200 for i in range(201)]
    for runs in (1, 2, 4):
        most = max(
            1 - sum((comb(runs, j) * p**j * (1 - p) ** (runs - j)) ** 2 for j in range(runs + 1))
            for p in grid
        )
        assert most == pytest.approx(flip_ceiling(runs))


def test_an_edit_that_fixes_4_of_10_tasks_and_breaks_none_is_accepted():
    """The sign test's p is 1/16 here, so the old rule rejected it; 4 clean wins of 10 tasks
    happen by chance at most 3.3% of the time."""
    pairs = _pairs("arith", "0000001111", "1111001111") + _pairs("mem", "11100", "11100")
    decision = judge(pairs, _scopes("arith", "mem"), "arith", PAIRED)
    assert decision.accepted, decision.reason
    assert "4 task(s) better, 0 worse of 10 (0.400 -> 0.800), one-sided p=0.0328" in (
        decision.reason
    )
    # three of three is the smallest clean sweep that clears alpha 0.05 (two coins: 1/16)
    assert min_gate_tasks(0.05) == 3 and min_gate_tasks(0.05, runs=3) == 3
    assert min_gate_tasks(0.01) == 4
    sweep = _pairs("arith", "000", "111") + _pairs("mem", "11100", "11100")
    assert judge(sweep, _scopes("arith", "mem"), "arith", PAIRED).accepted


def test_a_coin_toss_edit_on_a_large_cluster_is_rejected():
    same = "0110100110010"  # 13 of 25 tasks as they were
    scopes, others = _scopes("arith", "mem"), _pairs("mem", "1" * 10, "1" * 10)
    toss = _pairs("arith", "0" * 6 + "1" * 6 + same, "1" * 6 + "0" * 6 + same)
    decision = judge(toss + others, scopes, "arith", PAIRED)
    assert not decision.accepted
    assert "6 task(s) better, 6 worse of 25" in decision.reason
    # nor is a lucky 8 against 3 on 25 tasks: noise does that too often
    lucky = _pairs("arith", "0" * 8 + "1" * 3 + same + "0", "1" * 8 + "0" * 3 + same + "0")
    decision = judge(lucky + others, scopes, "arith", PAIRED)
    assert not decision.accepted and "8 task(s) better, 3 worse of 25" in decision.reason


def test_a_winner_that_breaks_a_quarter_of_a_large_cluster_is_rejected():
    fixed = _pairs("arith", "0000000000", "1111111111")
    broken = _pairs("mem", "1" * 20, "0" * 5 + "1" * 15)  # 1.000 -> 0.750 on 20 tasks
    decision = judge(fixed + broken, _scopes("arith", "mem"), "arith", PAIRED)
    assert not decision.accepted and decision.regressions == {"mem": 0.25}
    assert "'mem' regressed: 5 task(s) worse, 0 better of 20 (1.000 -> 0.750)" in decision.reason


def test_a_null_ish_candidate_is_rejected_with_the_cluster_and_its_numbers():
    pairs = _pairs("arith", "0101010101", "1100110011") + _pairs("mem", "11111", "11111")
    decision = judge(pairs, _scopes("arith", "mem"), "arith", PAIRED)
    assert not decision.accepted and decision.rule == "paired"
    assert decision.reason.startswith("paired rule: target 'arith' not shown to improve")
    assert "3 task(s) better, 2 worse of 10 (0.500 -> 0.600)" in decision.reason
    assert "p=0.412 > alpha=0.05" in decision.reason
    # the strict rule takes the same coin toss for a gain
    assert judge(pairs, _scopes("arith", "mem"), "arith", STRICT).accepted


def test_a_clear_improvement_is_accepted():
    pairs = _pairs("arith", "0000000011", "1111110011") + _pairs("mem", "11110", "11110")
    decision = judge(pairs, _scopes("arith", "mem"), "arith", PAIRED)
    assert decision.accepted, decision.reason
    assert "target 'arith' improved: 6 task(s) better, 0 worse of 10 (0.200 -> 0.800)" in (
        decision.reason
    )
    assert "p=0.00432 <= alpha=0.05" in decision.reason
    assert decision.before == {"arith": 0.2, "mem": 0.8}
    assert decision.after == {"arith": 0.8, "mem": 0.8}


def test_a_target_with_too_few_gate_tasks_says_how_many_are_needed():
    pairs = _pairs("time", "00", "11") + _pairs("mem", "11111", "11111")
    decision = judge(pairs, _scopes("time", "mem"), "time", PAIRED)
    assert not decision.accepted  # 2 of 2 fixed is p=1/16: two coins could do it
    assert "with 2 gate task(s) no edit can reach alpha=0.05, at least 3 are needed" in (
        decision.reason
    )
    assert judge(pairs, _scopes("time", "mem"), "time", STRICT).accepted


def test_a_shown_regression_on_another_cluster_rejects_and_is_named():
    fixed = _pairs("arith", "000000", "111111")
    broken = _pairs("mem", "111111", "000000")
    decision = judge(fixed + broken, _scopes("arith", "mem"), "arith", PAIRED)
    assert not decision.accepted
    assert "target 'arith' improved" in decision.reason
    assert "but 'mem' dropped 1.000 -> 0.000, more than max_regression=0.5" in decision.reason
    assert decision.regressions == {"mem": 1.0}
    # a smaller drop, but one noise hardly explains
    half = _pairs("mem", "1111111111", "1111100000")
    decision = judge(fixed + half, _scopes("arith", "mem"), "arith", PAIRED)
    assert not decision.accepted
    assert "'mem' regressed: 5 task(s) worse, 0 better of 10 (1.000 -> 0.500)" in decision.reason
    assert "<= regression_alpha=0.05" in decision.reason


def test_a_small_cluster_that_breaks_entirely_rejects_though_it_cannot_be_significant():
    pairs = _pairs("arith", "000000", "111111") + _pairs(REST_CLUSTER_ID, "11", "00")
    decision = judge(pairs, _scopes("arith", REST_CLUSTER_ID), "arith", PAIRED)
    assert not decision.accepted
    assert f"'{REST_CLUSTER_ID}' dropped 1.000 -> 0.000" in decision.reason
    one_of_two = _pairs("arith", "000000", "111111") + _pairs(REST_CLUSTER_ID, "11", "10")
    assert judge(one_of_two, _scopes("arith", REST_CLUSTER_ID), "arith", PAIRED).accepted


def test_a_regression_spread_over_many_clusters_is_caught_together():
    pairs = _pairs("arith", "000000", "111111")
    others = [f"c{k}" for k in range(6)]
    for c in others:  # one task of three broken in each: noise, cluster by cluster
        pairs += _pairs(c, "111", "110")
    decision = judge(pairs, _scopes("arith", *others), "arith", PAIRED)
    assert not decision.accepted
    assert f"'{ALL_OTHERS}' regressed: 6 task(s) worse, 0 better of 18" in decision.reason
    assert set(decision.regressions) == {ALL_OTHERS}


def test_the_strict_rule_is_gate_ok_on_the_paired_means():
    pairs = _pairs("arith", "0000", "0100") + _pairs("mem", "1111", "1101")
    scopes = _scopes("arith", "mem")
    decision = judge(pairs, scopes, "arith", GateSpec(rule="strict", eps=0.25))
    expected = gate_ok({"arith": 0.0, "mem": 1.0}, {"arith": 0.25, "mem": 0.75}, "arith", 0.25)
    assert decision.accepted == expected.accepted is True
    assert decision.rule == "strict"
    assert decision.reason == f"strict rule: {expected.reason}"
    tight = judge(pairs, scopes, "arith", GateSpec(rule="strict", eps=0.1))
    assert not tight.accepted and tight.regressions == {"mem": 0.25}
    assert "mem -0.250" in tight.reason


def test_an_unknown_gate_rule_in_the_spec_file_is_an_error_naming_the_field():
    text = default_spec_text(CORE_TOOL_DESCRIPTIONS)
    assert parse_spec(text).learning.gate.rule == "paired"  # the default
    assert '\nrule = "paired"' in text  # the template writes the rule out
    strict = text.replace('\nrule = "paired"', '\nrule = "strict"', 1)
    assert parse_spec(strict).learning.gate.rule == "strict"
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace('\nrule = "paired"', '\nrule = "lucky"', 1))
    assert "learning.gate.rule" in err.value.fields
    assert "learning.gate.rule" in str(err.value)


# --------------------------------------------------------------------------- early stopping


def test_the_candidate_runs_the_target_cluster_first_in_batches():
    tasks = _tasks(files=3, memory=2, arithmetic=4)
    batches = candidate_batches(tasks, {"arithmetic"}, 3)
    assert [len(b) for b in batches] == [3, 3, 3]
    assert [t.category for t in batches[0]] == ["arithmetic"] * 3
    assert batches[1][0].category == "arithmetic"
    assert sorted(t.id for b in batches for t in b) == sorted(_ids(tasks))
    assert candidate_batches(tasks, {"arithmetic"}, 0) == [sum(batches, [])]
    assert candidate_batches([], {"arithmetic"}, 3) == []


def test_a_candidate_that_cannot_win_stops_early_and_says_so():
    ran = _pairs("arith", "0101010101", "0000000001")  # 0 better, 4 worse so far
    pending = _pairs("mem", "1111100000")
    decision = settled(ran + pending, _scopes("arith", "mem"), "arith", PAIRED)
    assert decision is not None and not decision.accepted and decision.stopped_early
    assert decision.reason.startswith(
        "paired rule: stopped after 10 of 20 gate tasks, since even if S' passed every "
        "remaining run: target 'arith' not shown to improve"
    )
    assert decision.after == {"arith": 0.1, "mem": None}  # what S' really did, no guesses


def test_an_undecided_candidate_runs_on_and_a_certain_winner_stops():
    scopes = _scopes("arith", "mem")
    fixed = _pairs("arith", "0000000000", "1111111111")
    assert settled(fixed + _pairs("mem", "11111"), scopes, "arith", PAIRED) is None
    # S failed every remaining task: even if S' fails them too nothing can regress
    winner = settled(fixed + _pairs("mem", "00000"), scopes, "arith", PAIRED)
    assert winner is not None and winner.accepted and winner.stopped_early
    assert "even if S' failed every remaining run" in winner.reason


@pytest.mark.parametrize("rule", ["paired", "strict"])
@pytest.mark.parametrize("runs", [1, 2, 3])
def test_stopping_early_never_changes_a_decision(rule, runs):
    """Against every way the pending runs could come out: `settled` answers exactly when
    they all lead to the same decision, and answers that decision."""
    gate = GateSpec(rule=rule)
    rng = random.Random(f"{rule}{runs}")
    scopes = _scopes("arith", "mem", "files")
    sizes = {"arith": 8, "mem": 4, "files": 3}
    stopped = set()
    for _ in range(120 if runs == 1 else 60):
        pairs = []
        for cluster, n in sizes.items():
            lift = rng.choice([0, 1]) if cluster == "arith" else -rng.choice([0, 1])
            for i in range(n):
                b = rng.randint(0, runs)
                a = min(runs, max(0, rng.randint(0, runs) + lift))
                pairs.append(TaskPair(f"{cluster}-{i}", cluster, runs, b, float(b), a, float(a)))
        pending = rng.sample(range(len(pairs)), rng.randint(1, 5 if runs == 1 else 3))
        partial = [
            TaskPair(p.task_id, p.category, runs, p.before_passed, p.before_score)
            if i in pending
            else p
            for i, p in enumerate(pairs)
        ]
        outcomes = set()
        for fill in itertools.product(range(runs + 1), repeat=len(pending)):
            done = list(partial)
            for i, a in zip(pending, fill, strict=True):
                p = partial[i]
                done[i] = TaskPair(
                    p.task_id, p.category, runs, p.before_passed, p.before_score, a, a
                )
            outcomes.add(judge(done, scopes, "arith", gate).accepted)
        early = settled(partial, scopes, "arith", gate)
        if len(outcomes) == 1:
            assert early is not None and early.accepted == outcomes.pop()
            stopped.add(early.accepted)
        else:
            assert early is None
    assert stopped == {True, False}  # both a certain winner and a certain loser stopped
