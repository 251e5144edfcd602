"""homespun's default spec against the naive loop, on an outside benchmark (BFCL v4).

For each catalog model, one run evaluates, on the same fixed, seeded sample of BFCL's held-out
split (tasks that the spec search's diagnosis and proposers never see), with the same model,
the same MCP tools and the same turn cap:

- homespun's default spec for that model (what `homespun init --model NAME` writes), and
- the naive loop (`homespun bench run --baseline naive`): full argument schemas in the system
  prompt, one JSON object per step under the same constrained decoding.

and prints accuracy per BFCL category for both, the difference and its paired 95% interval.

    python benchmarks/outside.py                 # 200 tasks per model, both catalog models
    python benchmarks/outside.py --quick         # 40 tasks per model
    python benchmarks/outside.py --models smollm2-135m --tasks 90

Models come from HOMESPUN_MODELS_DIR (or ~/.homespun/models); pull them first with
`homespun models pull NAME` (Qwen2.5-Coder-1.5B needs `--allow-third-party`). Runs happen in a
scratch HOMESPUN_HOME, so nothing of yours is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from homespun.engines.catalog import CATALOG, DEFAULT_MODEL, ModelNotAvailable, resolve_model_path
from homespun.learning.benchmarks.bfcl import CATEGORIES, BfclBenchmark
from homespun.learning.evaluation import EvalResult, compare, evaluate
from homespun.learning.gate import split_tasks
from homespun.learning.tasks import Task
from homespun.mcp_servers.core import CORE_TOOL_DESCRIPTIONS
from homespun.spec import Settings, Spec
from homespun.spec.defaults import default_spec
from homespun.stores.eval_cache import EvalCache

SAMPLE_SEED = 20261202
QWEN = "qwen2.5-coder-1.5b"


@contextmanager
def run_settings(home: str, prefix: str) -> Iterator[Settings]:
    """Settings for a benchmark run: HOMESPUN_HOME is `home` (kept, so its eval cache carries
    over to a re-run) or a scratch folder removed afterwards; models from HOMESPUN_MODELS_DIR."""
    models_dir = os.environ.get("HOMESPUN_MODELS_DIR")
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        yield Settings(
            home=Path(home) if home else Path(scratch),
            models_dir=Path(models_dir) if models_dir else None,
        )


def sample(tasks: list[Task], n: int, seed: int) -> list[Task]:
    """About n tasks, the same share of each category (round-robin over categories, each in
    its stable split order), so small categories are not drowned by live_multiple's 1000."""
    by_cat: dict[str, list[Task]] = {}
    for task in tasks:
        by_cat.setdefault(task.category, []).append(task)
    # split_tasks orders by sha256 of (seed, benchmark, id): reuse it as a stable shuffle.
    for cat, items in by_cat.items():
        first, second = split_tasks(items, seed=seed, benchmark=f"outside:{cat}")
        by_cat[cat] = first + second
    chosen: list[Task] = []
    depth = 0
    while len(chosen) < n and any(depth < len(v) for v in by_cat.values()):
        for cat in sorted(by_cat):
            if depth < len(by_cat[cat]) and len(chosen) < n:
                chosen.append(by_cat[cat][depth])
        depth += 1
    return chosen


async def _evaluate_both(
    spec: Spec, settings: Settings, bench: BfclBenchmark, tasks: list[Task], label: str
) -> tuple[EvalResult, EvalResult]:
    results = []
    for loop in ("assistant", "naive"):
        done = 0
        started = time.perf_counter()

        def progress(outcome, loop=loop, started=started) -> None:
            nonlocal done
            done += 1
            if done % 10 == 0 or done == len(tasks):
                print(
                    f"  {label} · {loop}: {done}/{len(tasks)} tasks "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        results.append(
            await evaluate(
                spec,
                settings,
                bench,
                tasks,
                loop=loop,
                on_outcome=progress,
                cache=EvalCache(settings.learning_db),
            )
        )
    return results[0], results[1]


def _print_table(model: str, spec: EvalResult, naive: EvalResult) -> None:
    rows = compare(spec, naive)
    print(f"\n{model}: homespun default spec vs the naive loop (paired by task)")
    print(f"{'category':<18} {'n':>4} {'homespun':>9} {'naive':>7} {'diff':>7}  95% interval")
    for r in rows:
        interval = "n/a" if r.low is None else f"[{r.low:+.3f}, {r.high:+.3f}]"
        print(f"{r.category:<18} {r.n:>4} {r.a:>9.3f} {r.b:>7.3f} {r.diff:>+7.3f}  {interval}")


async def _run_models(
    models: list[str], settings: Settings, bench: BfclBenchmark, tasks: list[Task]
) -> None:
    # One event loop for every evaluation: the OpenAI client pools connections per process.
    for model in models:
        try:
            resolve_model_path(model, settings.models_path)
        except ModelNotAvailable as exc:
            print(f"\n{model}: skipped: {exc}")
            continue
        spec = default_spec(CORE_TOOL_DESCRIPTIONS, model)
        ours, naive = await _evaluate_both(spec, settings, bench, tasks, model)
        _print_table(model, ours, naive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 tasks per model")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per model (default 200)")
    parser.add_argument(
        "--models", default=f"{DEFAULT_MODEL},{QWEN}", help="comma-separated catalog names"
    )
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    parser.add_argument(
        "--home",
        default="",
        help="a HOMESPUN_HOME to keep results in (its eval cache skips what a re-run repeats); "
        "default: a scratch folder",
    )
    args = parser.parse_args(argv)
    n = args.tasks or (40 if args.quick else 200)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CATALOG]
    if unknown:
        parser.error(f"not catalog models: {', '.join(unknown)} (choose from {', '.join(CATALOG)})")

    bench = BfclBenchmark("all")  # the data lives in the user's cache, fetched once
    _, held_out = split_tasks(bench.tasks(), seed=0, benchmark=bench.name)
    tasks = sample(held_out, n, args.seed)
    cats = {c: sum(t.category == c for t in tasks) for c in CATEGORIES}
    print(
        f"BFCL v4 held-out sample: {len(tasks)} tasks (seed {args.seed}): "
        + ", ".join(f"{c} {k}" for c, k in cats.items() if k)
    )
    with run_settings(args.home, "homespun-outside-") as settings:
        asyncio.run(_run_models(models, settings, bench, tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
