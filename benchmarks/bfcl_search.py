"""Does a spec search on BFCL move a score it never saw? Random-proposer sessions, then a test.

One run, in a scratch HOMESPUN_HOME written by `homespun init --model NAME`:

1. `run_search` (what `homespun learning run` runs) for a few sessions with the template-random
   proposer and the rule-based diagnoser (no teacher), on a category-balanced sample of BFCL's
   *search* half. The session splits that sample again, per category: diagnosis reads its
   search set, the gate decides on its gate set, and it reports its own small test split.
2. The spec it started from and the spec it ended with are both evaluated on the *test* sample:
   the fixed, seeded sample of BFCL's held-out half that `benchmarks/outside.py` reports on,
   which neither diagnosis, the proposers nor the gate ever saw. Printed per category with the
   difference and its paired 95% interval, with every proposal (its ops and the gate's word).

    python benchmarks/bfcl_search.py --model smollm2-135m --sessions 3 \
        --categories simple,live_simple,irrelevance,live_irrelevance,live_relevance

Review-tier ops (prompt texts, few-shot edits, rendering texts) are made `auto` for this run
(`learning.tier_overrides`), so the gate alone decides every proposal and nobody needs to sit
at a review prompt; the gate rule itself is the spec's default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from outside import SAMPLE_SEED, run_settings, sample

from homespun.engines.catalog import CATALOG, DEFAULT_MODEL
from homespun.graphs.search_loop import run_search
from homespun.home import init_home
from homespun.learning.benchmarks.bfcl import CATEGORIES, BfclBenchmark
from homespun.learning.evaluation import compare, evaluate
from homespun.learning.gate import split_tasks
from homespun.spec import Settings, load_spec, save_spec
from homespun.spec.edits import DEFAULT_TIERS
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.eval_cache import EvalCache
from homespun.stores.learning import LearningStore


def _printer():
    started = time.perf_counter()

    def on_event(event: str, data: dict) -> None:
        stamp = f"[{time.perf_counter() - started:6.0f} s]"
        if event == "evaluate_done":
            print(f"{stamp} {data['label']}: {data['accuracy']:.3f}", file=sys.stderr, flush=True)
        elif event == "gate":
            p, d = data["proposal"], data["decision"]
            ops = ", ".join(o.op for o in p.ops)
            word = "accepted" if d.accepted else "rejected"
            print(f"{stamp} gate: {ops} -> {word}: {d.reason}", file=sys.stderr, flush=True)

    return on_event


def _ops_text(ops_json: str) -> str:
    parts = []
    for op in json.loads(ops_json):
        name = op.pop("op")
        args = ", ".join(f"{k}={v!r}" for k, v in op.items())
        parts.append(f"{name}({args})")
    return "; ".join(parts)


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    bench = BfclBenchmark("all")
    search_half, held_out = split_tasks(bench.tasks(), seed=0, benchmark=bench.name)
    chosen = set(args.categories.split(",")) if args.categories else set(CATEGORIES)
    unknown = chosen - set(CATEGORIES)
    if unknown:
        sys.exit(f"unknown categories: {', '.join(sorted(unknown))} (from {', '.join(CATEGORIES)})")
    search_half = [t for t in search_half if t.category in chosen]
    held_out = [t for t in held_out if t.category in chosen]
    search_tasks = sample(search_half, args.per_category * len(chosen), args.seed)
    test_tasks = sample(held_out, args.test_tasks, SAMPLE_SEED)

    init_home(settings, model=args.model)
    spec = load_spec(settings.spec_path)
    spec.learning.tier_overrides = {
        op: "auto" for op, tier in DEFAULT_TIERS.items() if tier == "review"
    }
    spec.learning.budgets.max_proposals_per_session = args.proposals
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add([repo.rel])  # a session starts only from a committed spec
    repo.repo.index.commit("bfcl_search: review-tier ops decided by the gate alone")
    start = load_spec(settings.spec_path)

    print(
        f"{args.model}: {args.sessions} random-proposer sessions on {len(search_tasks)} tasks of "
        f"BFCL's search half; test: {len(test_tasks)} held-out tasks (seed {SAMPLE_SEED})"
    )
    result = await run_search(
        settings,
        benchmark=bench.name,
        proposer="random",
        sessions=args.sessions,
        tasks=search_tasks,
        on_event=_printer(),
    )
    store = LearningStore(settings.learning_db)
    print(f"\nsessions: {len(result.sessions)}, stopped: {result.stopped_because or 'done'}")
    kinds: dict[str, int] = {}
    for sid in result.sessions:
        row = store.session(sid)
        print(
            f"session {sid}: gate {row.gate_score_before} -> {row.gate_score_after}, "
            f"session test split {row.test_score_before} -> {row.test_score_after} "
            f"({row.status})"
        )
        for p in store.proposals(sid):
            for op in json.loads(p["ops"]):
                kinds[op["op"]] = kinds.get(op["op"], 0) + 1
            print(f"  {p['status']:<9} {_ops_text(p['ops'])}")
    print("ops proposed: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))

    end = load_spec(settings.spec_path)
    cache = EvalCache(settings.learning_db)
    before = await evaluate(start, settings, bench, test_tasks, cache=cache)
    after = (
        before
        if end.content_hash() == start.content_hash()
        else await evaluate(end, settings, bench, test_tasks, cache=cache)
    )
    print(f"\ntest split: the spec after the search vs the spec before ({len(test_tasks)} tasks)")
    print(f"{'category':<18} {'n':>4} {'after':>7} {'before':>7} {'diff':>7}  95% interval")
    for r in compare(after, before):
        interval = "n/a" if r.low is None else f"[{r.low:+.3f}, {r.high:+.3f}]"
        print(f"{r.category:<18} {r.n:>4} {r.a:>7.3f} {r.b:>7.3f} {r.diff:>+7.3f}  {interval}")
    if end.content_hash() == start.content_hash():
        print("no edit was accepted: the spec, and so its test score, did not change")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(CATALOG))
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=4, help="proposals per session")
    parser.add_argument(
        "--categories", default="", help="comma-separated BFCL categories (default: all)"
    )
    parser.add_argument(
        "--per-category",
        type=int,
        default=20,
        help="search-half tasks per category; the session splits them again into search, "
        "gate and test tasks (20: 7 / 8 / 5; the paired gate needs 5 or more gate tasks in a "
        "cluster to accept anything)",
    )
    parser.add_argument("--test-tasks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--home", default="", help="keep the run in this HOMESPUN_HOME")
    args = parser.parse_args(argv)
    with run_settings(args.home, "homespun-bfcl-search-") as settings:
        asyncio.run(_run(args, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
