"""The held-out gate, function by function, on small hand-built inputs.

What a user notices is whether an edit is accepted or rejected, and which tasks decided it:
the split and the gate subsample must be the same in every process, every task of the pool
is judged (an errored run is a failure, never dropped), and GateOK holds exactly: the target
strictly improves and no other cluster, the protected `rest` included, drops by more than eps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from homespun.learning.clusters import REST_CLUSTER_ID, Cluster
from homespun.learning.evaluation import EvalResult
from homespun.learning.gate import (
    cluster_categories,
    cluster_scores,
    gate_ok,
    gate_subsample,
    split_tasks,
)
from homespun.learning.tasks import Task
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
    task_id: str, category: str, score: float, status: str = "ok", error: str | None = None
) -> TaskOutcome:
    return TaskOutcome(
        task_id=task_id,
        category=category,
        repeat=0,
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
from homespun.learning.gate import gate_subsample, split_tasks
from homespun.learning.tasks import Task
spec = json.loads(sys.argv[1])
tasks = [Task(id=i, query="q", category=c) for i, c in spec["tasks"]]
search, pool = split_tasks(tasks, seed=spec["seed"], benchmark=spec["benchmark"])
sub = gate_subsample(pool, size=spec["size"], seed=spec["seed"], benchmark=spec["benchmark"])
print(json.dumps([[t.id for t in search], [t.id for t in pool], [t.id for t in sub]]))
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
    here = [_ids(search), _ids(pool), _ids(sub)]
    # Python's own hash() differs between these processes; the split must not.
    assert _split_elsewhere(tasks, 7, 6, hash_seed="1") == here
    assert _split_elsewhere(tasks, 7, 6, hash_seed="2") == here
    # and the input order does not matter either
    again = split_tasks(list(reversed(tasks)), seed=7, benchmark=BENCH)
    assert sorted(_ids(again[0])) == sorted(_ids(search))
    assert sorted(_ids(again[1])) == sorted(_ids(pool))


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
