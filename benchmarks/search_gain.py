"""Does the spec search help on tasks it never saw, and which proposer helps most?

For each benchmark and each proposer, in its own scratch HOMESPUN_HOME written by
`homespun init` (the default spec of --model):

1. `run_search` (what `homespun learning run` runs) for --sessions sessions of --proposals
   proposals each. random and evolutionary use the rule-based diagnoser (no teacher); llm uses
   --teacher for diagnosis and proposals (by default the catalog's Qwen2.5-Coder-1.5B run
   in-process: `embedded:qwen2.5-coder-1.5b`, pulled with `homespun models pull
   qwen2.5-coder-1.5b --allow-third-party`).
2. The spec it started from and the spec it ended with are scored on the session's **test
   split**: tasks set aside by seed that diagnosis, the proposers and the gate never see (the
   session measured both already; the eval cache makes this free). Printed with the paired
   95% interval, the accepted and rejected edits by primitive, student task runs, teacher
   calls and wall time.

    python benchmarks/search_gain.py --quick       # starter benchmark, 1 session x 3 each
    python benchmarks/search_gain.py               # starter and bfcl:all, 3 sessions x 4 each

Review-tier ops are made `auto` for the run (`learning.tier_overrides`) so that the gate alone
decides every proposal; the gate rule is the spec's default. The paper (section 4.4) reports
the LLM proposer ahead of evolutionary and random at the same move space; the table says
whether this machine sees that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from outside import run_settings, sample

from homespun.engines.catalog import CATALOG, DEFAULT_MODEL
from homespun.graphs.search import SearchContext
from homespun.graphs.search_loop import run_search
from homespun.home import init_home
from homespun.learning.benchmarks.bfcl import BfclBenchmark
from homespun.learning.benchmarks.registry import get_benchmark
from homespun.learning.evaluation import compare, evaluate
from homespun.learning.gate import split_tasks
from homespun.learning.proposers.random_templates import RandomTemplateProposer
from homespun.learning.tasks import Task
from homespun.spec import Settings, load_spec, save_spec
from homespun.spec.edits import DEFAULT_TIERS, PRIMITIVE_OF
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.eval_cache import EvalCache
from homespun.stores.learning import LearningStore
from homespun.stores.traces import TraceStore

PROPOSERS = ("random", "evolutionary", "llm")
DEFAULT_TEACHER = "embedded:qwen2.5-coder-1.5b"


@dataclass
class Arm:
    """One proposer's run on one benchmark."""

    benchmark: str
    proposer: str
    test_n: int = 0
    before: float = 0.0
    after: float = 0.0
    diff: float = 0.0
    low: float | None = None
    high: float | None = None
    accepted: dict[str, int] = field(default_factory=dict)  # by primitive
    rejected: dict[str, int] = field(default_factory=dict)
    student_runs: int = 0
    teacher_calls: int = 0
    teacher_s: float = 0.0
    wall_s: float = 0.0
    stopped: str = ""
    failed: str = ""


def _benchmark_tasks(name: str, per_category: int, seed: int) -> list[Task] | None:
    """The tasks a session may split: all of the starter benchmark; for BFCL, a
    category-balanced sample of its search half (the other half is what outside.py reports)."""
    if not name.startswith("bfcl"):
        return None
    bench = BfclBenchmark("all")
    search_half, _ = split_tasks(bench.tasks(), seed=0, benchmark=bench.name)
    categories = {t.category for t in search_half}
    return sample(search_half, per_category * len(categories), seed)


def _prepare_home(settings: Settings, args: argparse.Namespace, proposer: str) -> None:
    init_home(settings, model=args.model)
    spec = load_spec(settings.spec_path)
    spec.learning.tier_overrides = {
        op: "auto" for op, tier in DEFAULT_TIERS.items() if tier == "review"
    }
    spec.learning.budgets.max_proposals_per_session = args.proposals
    spec.learning.teacher = args.teacher if proposer == "llm" else ""
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add([repo.rel])  # a session starts only from a committed spec
    repo.repo.index.commit(f"search_gain: {proposer} proposer, review-tier ops gated alone")


def _student_runs(settings: Settings) -> int:
    """Task runs of the student in this home (each an assistant trace of an evaluation)."""
    store = TraceStore(settings.traces_db)
    return int(
        store.db.execute("select count(*) from traces where source like 'eval:%'").fetchone()[0]
    )


def _progress(label: str):
    started = time.perf_counter()

    def on_event(event: str, data: dict) -> None:
        stamp = f"[{label} {time.perf_counter() - started:5.0f} s]"
        if event == "evaluate_done":
            print(f"{stamp} {data['label']}: {data['accuracy']:.3f}", file=sys.stderr, flush=True)
        elif event == "gate":
            p, d = data["proposal"], data["decision"]
            word = "accepted" if d.accepted else "rejected"
            ops = ", ".join(o.op for o in p.ops)
            print(f"{stamp} gate: {ops} -> {word}", file=sys.stderr, flush=True)
        elif event == "note":
            print(f"{stamp} {data.get('text', '')}", file=sys.stderr, flush=True)

    return on_event


async def run_arm(root: Path, benchmark: str, proposer: str, args: argparse.Namespace) -> Arm:
    arm = Arm(benchmark=benchmark, proposer=proposer)
    settings = Settings(
        home=root / f"{benchmark.replace(':', '_')}-{proposer}", models_dir=args.models_dir
    )
    _prepare_home(settings, args, proposer)
    start = load_spec(settings.spec_path)
    tasks = _benchmark_tasks(benchmark, args.per_category, args.seed)
    began = time.perf_counter()
    try:
        result = await run_search(
            settings,
            benchmark=benchmark,
            proposer=proposer,
            sessions=args.sessions,
            tasks=tasks,
            on_event=_progress(f"{benchmark} {proposer}"),
        )
        arm.stopped = result.stopped_because or "done"
    except Exception as exc:  # a failed arm is reported in the table, the others still run
        arm.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result = None
    arm.wall_s = time.perf_counter() - began

    store = LearningStore(settings.learning_db)
    for row in store.sessions(limit=1000):
        calls, seconds = store.teacher_usage(row.id)
        arm.teacher_calls += calls
        arm.teacher_s += seconds
        for p in store.proposals(row.id):
            if p["status"] not in ("accepted", "rejected"):
                continue
            tally = arm.accepted if p["status"] == "accepted" else arm.rejected
            for primitive in {PRIMITIVE_OF[o["op"]] for o in json.loads(p["ops"])}:
                tally[primitive] = tally.get(primitive, 0) + 1

    # The session's own test split, scored for the first and the last spec. Both were run by
    # the sessions (the cache answers); the end spec after a failed arm may need running.
    end = load_spec(settings.spec_path)
    bench = get_benchmark(benchmark, settings)
    ctx = SearchContext(
        settings=settings, benchmark=bench, proposer=RandomTemplateProposer(), tasks=tasks
    )
    test = ctx.split(start).test
    cache = EvalCache(settings.learning_db)
    before = await evaluate(start, settings, bench, test, cache=cache)
    after = (
        before
        if end.content_hash() == start.content_hash()
        else await evaluate(end, settings, bench, test, cache=cache)
    )
    overall = compare(after, before)[-1]
    arm.test_n, arm.before, arm.after, arm.diff = overall.n, overall.b, overall.a, overall.diff
    arm.low, arm.high = overall.low, overall.high
    arm.student_runs = _student_runs(settings)
    return arm


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def print_table(arms: list[Arm]) -> None:
    print(
        f"\n{'benchmark':<10} {'proposer':<13} {'n':>3} {'before':>6} {'after':>6} "
        f"{'diff':>7}  {'95% interval':<17} {'runs':>5} {'teacher':>12} {'wall':>6}"
    )
    for a in arms:
        interval = "n/a" if a.low is None else f"[{a.low:+.3f}, {a.high:+.3f}]"
        teacher = f"{a.teacher_calls} / {a.teacher_s:.0f} s" if a.proposer == "llm" else "-"
        print(
            f"{a.benchmark:<10} {a.proposer:<13} {a.test_n:>3} {a.before:>6.3f} {a.after:>6.3f} "
            f"{a.diff:>+7.3f}  {interval:<17} {a.student_runs:>5} {teacher:>12} "
            f"{a.wall_s / 60:>5.1f}m"
        )
    print("\nedits by primitive (accepted | rejected):")
    for a in arms:
        line = f"  {a.benchmark} {a.proposer}: {_tally(a.accepted)} | {_tally(a.rejected)}"
        if a.failed:
            line += f"  (FAILED: {a.failed})"
        elif a.stopped and a.stopped != "done":
            line += f"  (stopped: {a.stopped})"
        print(line)


async def _run(args: argparse.Namespace, root: Path) -> None:
    arms = []
    for benchmark in args.benchmarks.split(","):
        for proposer in args.proposers.split(","):
            print(f"== {benchmark}, {proposer} proposer", file=sys.stderr, flush=True)
            arms.append(await run_arm(root, benchmark, proposer, args))
    print(
        f"{args.model}: {args.sessions} session(s) x {args.proposals} proposals per proposer; "
        f"test = each session's own test split (never seen by diagnosis, proposers or the gate)"
        + (f"; llm teacher {args.teacher}" if "llm" in args.proposers else "")
    )
    print_table(arms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="starter only, 1 session x 3")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(CATALOG))
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help="the llm proposer's teacher")
    parser.add_argument("--proposers", default=",".join(PROPOSERS))
    parser.add_argument("--benchmarks", default="starter,bfcl:all")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=4, help="proposals per session")
    parser.add_argument("--per-category", type=int, default=20, help="BFCL tasks per category")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--home", default="", help="keep the homes under this folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.benchmarks, args.sessions, args.proposals = "starter", 1, 3
    unknown = set(args.proposers.split(",")) - set(PROPOSERS)
    if unknown:
        parser.error(
            f"unknown proposers: {', '.join(sorted(unknown))} (from {', '.join(PROPOSERS)})"
        )
    with run_settings(args.home, "homespun-search-gain-") as settings:
        args.models_dir = settings.models_dir
        asyncio.run(_run(args, settings.home))
    return 0


if __name__ == "__main__":
    sys.exit(main())
