"""Benchmarks by name: 'starter', 'agentdojo:SUITE', 'bfcl:CATEGORY', 'personal' (latest
personal_vN)."""

from __future__ import annotations

from homespun.learning.tasks import Benchmark
from homespun.spec import Settings


class UnknownBenchmark(ValueError):
    pass


def get_benchmark(name: str, settings: Settings | None = None) -> Benchmark:
    if name == "starter":
        from .starter import StarterBenchmark

        return StarterBenchmark()
    if name.startswith("agentdojo:"):
        from .agentdojo import AgentDojoBenchmark

        return AgentDojoBenchmark(name.split(":", 1)[1])
    if name.startswith("bfcl:"):
        from .bfcl import CATEGORIES, BfclBenchmark

        category = name.split(":", 1)[1]
        if category != "all" and category not in CATEGORIES:
            raise UnknownBenchmark(
                f"unknown BFCL category {category!r}: use 'bfcl:CATEGORY' "
                f"({', '.join(CATEGORIES)}) or 'bfcl:all'"
            )
        return BfclBenchmark(category, settings)
    if name == "personal" or name.startswith("personal_v"):
        from .personal import load_personal

        version = int(name.removeprefix("personal_v")) if name.startswith("personal_v") else None
        return load_personal(settings or Settings(), version)
    raise UnknownBenchmark(
        f"unknown benchmark {name!r}: use 'starter', 'personal', "
        "'agentdojo:SUITE' (banking, slack, travel, workspace) or "
        "'bfcl:CATEGORY' (simple, multiple, parallel, parallel_multiple, "
        "irrelevance, live_simple, live_multiple, live_relevance, "
        "live_irrelevance, all)"
    )
