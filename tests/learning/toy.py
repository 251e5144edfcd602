"""A toy benchmark and a spec-aware scripted student for deterministic search tests.

The student's answers depend on the spec it runs under, so an edit visibly fixes or breaks
categories:
- math   passes when the system prompt contains "USE-CALC" or temperature >= 1.5
- recall passes when memory.top_k == 9
- tone   passes while temperature < 1.0
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

from langchain_core.messages import HumanMessage

from homespun.engines.testing import ScriptedChatModel
from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import Settings, Spec, load_spec, save_spec
from homespun.stores.checkpoints import CheckpointRepo

CATEGORIES = ("math", "recall", "tone")


class ToyBenchmark:
    name = "toy"
    version = "toy-1"

    def __init__(self, per_category: int = 4):
        self.per_category = per_category

    def tasks(self) -> list[Task]:
        return [
            Task(
                id=f"{c}-{i}",
                query=f"Q:{c}:{c}-{i}-gold",
                category=c,
                suite="toy",
                gold=f"{c}-{i}-gold",
            )
            for c in CATEGORIES
            for i in range(self.per_category)
        ]

    @asynccontextmanager
    async def environment(self, task, spec, settings):
        def grade(trace):
            ok = trace.final_answer == task.gold
            return Grade(ok, float(ok), "" if ok else "wrong")

        yield SimpleEnvironment(tools=[], grader=grade)


def passes(spec: Spec, category: str) -> bool:
    if category == "math":
        return "USE-CALC" in spec.agent.system_prompt or spec.intelligence.temperature >= 1.5
    if category == "recall":
        return spec.memory.top_k == 9
    return spec.intelligence.temperature < 1.0


class StudentFactory:
    """student(spec) -> a scripted model; counts the model calls it serves and records which
    task each one was about under which spec (`asked`: (spec hash, task id) pairs)."""

    def __init__(self) -> None:
        self.calls = 0
        self.asked: list[tuple[str, str]] = []

    def __call__(self, spec: Spec) -> ScriptedChatModel:
        spec_hash = spec.content_hash()

        def reply(messages):
            self.calls += 1
            question = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
            _, category, gold = question.split(":")
            self.asked.append((spec_hash, gold.removesuffix("-gold")))
            return gold if passes(spec, category) else "no idea"

        return ScriptedChatModel(script=[reply] * 50)


class NaiveAwareStudent:
    """student(spec) -> a scripted model that also speaks the naive loop's protocol.

    Under the assistant it answers as `StudentFactory` does; under the naive loop (its system
    message holds the protocol) it answers `{"answer": ...}`, right for math only. With the
    default spec: assistant math 0, recall 0, tone 1; naive math 1, recall 0, tone 0.
    """

    def __call__(self, spec: Spec) -> ScriptedChatModel:
        from homespun.learning.naive_loop import PROTOCOL

        def reply(messages):
            question = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
            _, category, gold = question.split(":")
            if PROTOCOL in str(messages[0].content):
                return json.dumps({"answer": gold if category == "math" else "no idea"})
            return gold if passes(spec, category) else "no idea"

        return ScriptedChatModel(script=[reply] * 50)


def commit_gate_rule(settings: Settings, rule: str) -> None:
    """Commit `learning.gate.rule = rule` to the spec of an initialised HOMESPUN_HOME.

    For session tests whose toy gate has 2-4 tasks a cluster: too few for the paired rule to
    ever show a gain (5 are needed at alpha 0.05). They test the session, not the gate.
    """
    spec = load_spec(settings.spec_path)
    spec.learning.gate.rule = rule
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add([settings.spec_path.name])
    repo.repo.index.commit(f"test settings: learning.gate.rule = {rule}")
