"""Benchmarks by name: 'starter', 'agentdojo:SUITE', 'personal' (latest personal_vN)."""

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
    if name == "personal" or name.startswith("personal_v"):
        from .personal import load_personal

        version = int(name.removeprefix("personal_v")) if name.startswith("personal_v") else None
        return load_personal(settings or Settings(), version)
    raise UnknownBenchmark(f"unknown benchmark {name!r}: use 'starter', 'personal' or "
                           "'agentdojo:SUITE' (banking, slack, travel, workspace)")
