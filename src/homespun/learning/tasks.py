"""Tasks, benchmarks and their environments: what an evaluation runs and how it is graded.

A benchmark hands out tasks; for each task run it opens a fresh *environment* that supplies
the tools the assistant gets (MCP tools over a fresh state) and grades the finished trace
against that state. Grading happens in the harness, never through a tool the agent could
call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from langchain_core.tools import BaseTool

from homespun.spec import Settings, Spec
from homespun.stores.traces import Trace


@dataclass(frozen=True)
class Task:
    id: str  # unique within its benchmark, stable across versions
    query: str  # what the user asks
    category: str  # the skill it exercises (e.g. "arithmetic", "memory"); clusters scope by it
    suite: str = ""  # e.g. "starter", "banking"
    difficulty: str = "easy"  # easy | medium | hard
    gold: str | None = None  # reference answer where the benchmark has one
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    success: bool
    score: float  # 0..1; success usually means score == 1
    reason: str = ""


@runtime_checkable
class TaskEnvironment(Protocol):
    """One fresh world for one task run."""

    tools: list[BaseTool]  # what the assistant may call (replaces the spec's servers)

    def grade(self, trace: Trace) -> Grade: ...


@runtime_checkable
class Benchmark(Protocol):
    name: str  # e.g. "starter", "agentdojo:banking", "personal_v1"
    version: str  # part of the evaluation cache key: a changed benchmark is re-run

    def tasks(self) -> list[Task]: ...

    def environment(
        self, task: Task, spec: Spec, settings: Settings
    ) -> AbstractAsyncContextManager[TaskEnvironment]:
        """Open a fresh environment for `task` under `spec` (tools + grader)."""
        ...


@dataclass
class SimpleEnvironment:
    """A TaskEnvironment made of a tool list and a grading function."""

    tools: list[BaseTool]
    grader: Any  # Callable[[Trace], Grade]

    def grade(self, trace: Trace) -> Grade:
        return self.grader(trace)


AsyncEnv = AsyncIterator[TaskEnvironment]
