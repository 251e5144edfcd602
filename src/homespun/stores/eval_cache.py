"""Cached task outcomes by (spec hash, benchmark + version, task id, repeat) in learning.db,
so that an unchanged spec is never run twice on the same task."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from homespun.stores.sqlite import open_database


class BenchmarkId(Protocol):
    """What the cache needs of a benchmark: its name and the version of its task set."""

    name: str
    version: str


@dataclass
class TaskOutcome:
    task_id: str
    category: str
    repeat: int
    success: bool
    score: float
    reason: str
    trace_id: str
    status: str
    error: str | None
    answer: str | None
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    tool_calls: int
    cached: bool = False
    # Measured by the runner; None = not measured. Defaults keep older cache rows loadable.
    energy_j: float | None = None
    cost_usd: float | None = None


class EvalCache:
    """Outcomes by (spec hash, benchmark, version, task, repeat) in learning.db."""

    def __init__(self, path: Path):
        self.db = open_database(path)
        if "eval_cache" not in self.db.table_names():
            self.db["eval_cache"].create(
                {
                    "spec_hash": str,
                    "benchmark": str,
                    "version": str,
                    "task_id": str,
                    "repeat": int,
                    "outcome": str,
                    "created_at": float,
                },
                pk=("spec_hash", "benchmark", "version", "task_id", "repeat"),
            )

    def get(
        self, spec_hash: str, benchmark: BenchmarkId, task_id: str, repeat: int
    ) -> TaskOutcome | None:
        rows = list(
            self.db.query(
                "select outcome from eval_cache where spec_hash = ? and benchmark = ? and "
                "version = ? and task_id = ? and repeat = ?",
                [spec_hash, benchmark.name, benchmark.version, task_id, repeat],
            )
        )
        if not rows:
            return None
        outcome = TaskOutcome(**json.loads(rows[0]["outcome"]))
        outcome.cached = True
        return outcome

    def put(self, spec_hash: str, benchmark: BenchmarkId, outcome: TaskOutcome) -> None:
        self.db["eval_cache"].upsert(
            {
                "spec_hash": spec_hash,
                "benchmark": benchmark.name,
                "version": benchmark.version,
                "task_id": outcome.task_id,
                "repeat": outcome.repeat,
                "outcome": json.dumps({**asdict(outcome), "cached": False}),
                "created_at": time.time(),
            },
            pk=("spec_hash", "benchmark", "version", "task_id", "repeat"),
        )
