"""Failure clusters: what diagnosis produces and what the gate scores per cluster."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Rule-based failure signatures, from the trace alone.
FailureSignature = Literal[
    "no_tool_call",  # answered without using any tool although the task needs one
    "unknown_tool",  # called a tool that does not exist
    "bad_arguments",  # a tool rejected its arguments
    "tool_error",  # a tool ran and failed
    "wrong_answer",  # finished, but the grader says no
    "turn_limit",  # ran out of model calls
    "engine_error",  # the run itself errored (engine down, crash)
]


class Cluster(BaseModel):
    """A group of failing tasks that share a root cause."""

    id: str = Field(description="Short stable id, e.g. 'arithmetic-wrong_answer'.")
    name: str = Field(description="One-line human name.")
    categories: list[str] = Field(
        description="Task categories this cluster covers; the gate scores the cluster on "
        "held-out tasks of these categories."
    )
    task_ids: list[str] = Field(default_factory=list, description="Failing tasks seen.")
    trace_ids: list[str] = Field(
        default_factory=list,
        description="The traces the cluster was diagnosed from: the failing benchmark runs "
        "of its tasks and the user's own failing conversations it explains (only the latter "
        "have no task; the gate never re-runs them).",
    )
    signature: str = Field("", description="Dominant failure signature.")
    student_failure_rate: float = Field(ge=0.0, le=1.0)
    teacher_success_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="Measured only when the teacher re-ran the tasks."
    )
    skill_gap: str = Field(description="What the student lacks, in a sentence or two.")


class Diagnosis(BaseModel):
    clusters: list[Cluster]
    source: Literal["teacher", "rules"]
    summary: str = ""

    def cluster(self, cluster_id: str) -> Cluster:
        for c in self.clusters:
            if c.id == cluster_id:
                return c
        raise KeyError(cluster_id)


REST_CLUSTER_ID = "rest"  # every category no cluster names: protected by the gate too
