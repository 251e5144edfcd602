"""Student task-evaluations per gate decision, against the naive count.

Runs real spec-search sessions (search graph, gate, git checkpoints, evaluation cache) with
the random proposer on a synthetic benchmark whose scripted student reacts to the spec, and
counts the task runs the student actually made for gate decisions. The naive count re-runs
both specs for every decision: 2 x gate tasks x repeats. Ours evaluates the current spec
once until it changes and never re-runs an unchanged (spec, task, repeat).

    python benchmarks/gate_cost.py [--sessions 3] [--proposals 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from langchain_core.messages import HumanMessage

from homespun.engines.testing import ScriptedChatModel
from homespun.graphs import search_loop
from homespun.home import init_home
from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import Settings, Spec, load_spec, save_spec

CATEGORIES = ("math", "recall", "files", "time")


class SyntheticBenchmark:
    name = "synthetic"
    version = "1"

    def tasks(self) -> list[Task]:
        return [
            Task(id=f"{c}-{i}", query=f"{c}:{i}", category=c, gold="ok")
            for c in CATEGORIES
            for i in range(10)
        ]

    @asynccontextmanager
    async def environment(self, task, spec, settings):
        yield SimpleEnvironment(
            tools=[],
            grader=lambda tr: Grade(tr.final_answer == "ok", float(tr.final_answer == "ok")),
        )


def student(spec: Spec) -> ScriptedChatModel:
    """Passes a task when a cheap function of the spec and the task says so: edits move
    scores up and down across categories, like a real student."""

    def reply(messages):
        q = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
        category, i = q.split(":")
        knob = (
            len(spec.agent.system_prompt)
            + spec.intelligence.top_k
            + int(spec.intelligence.temperature * 10)
            + spec.memory.top_k
            + len(spec.agent.few_shot) * 7
            + CATEGORIES.index(category) * 3
            + int(i)
        )
        return "ok" if knob % 3 else "no"

    return ScriptedChatModel(script=[reply] * 20)


async def main(sessions: int, proposals: int) -> None:
    bench = SyntheticBenchmark()
    search_loop.get_benchmark = lambda name, *args: bench
    runs = {"gate": 0, "other": 0}
    decisions = 0
    gate_tasks = 0

    def on_event(event: str, data: dict) -> None:
        nonlocal decisions, gate_tasks
        if event == "evaluate_done":
            key = (
                "gate"
                if data["label"].startswith("gate: proposal")
                or data["label"] == "gate: current spec"
                else "other"
            )
            runs[key] += data["runs"]
        elif event == "evaluate_start" and data["label"].startswith("gate: proposal"):
            gate_tasks = data["tasks"]
        elif event == "gate":
            decisions += 1

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp))
        init_home(settings)
        spec = load_spec(settings.spec_path)
        spec.learning.budgets.max_proposals_per_session = proposals
        spec.learning.loop.stagnation_k = 100
        spec.learning.gate.subsample = 20
        # no human in the loop here: every op is auto tier
        from homespun.spec.models import OP_NAMES

        spec.learning.tier_overrides = {op: "auto" for op in OP_NAMES}
        save_spec(spec, settings.spec_path)
        from homespun.stores.checkpoints import CheckpointRepo

        repo = CheckpointRepo(settings.home, settings.spec_path)
        repo.repo.index.add(["spec.toml"])
        repo.repo.index.commit("benchmark settings")
        await search_loop.run_search(
            settings,
            benchmark="synthetic",
            proposer="random",
            sessions=sessions,
            student=student,
            on_event=on_event,
        )
    naive = 2 * gate_tasks * decisions
    ours = runs["gate"]
    print(
        f"sessions={sessions} proposals/session<={proposals} gate decisions={decisions} "
        f"gate tasks per evaluation={gate_tasks}"
    )
    print(
        f"naive student task-evaluations (both specs every decision): {naive} "
        f"({naive / max(decisions, 1):.1f} per decision)"
    )
    print(
        f"homespun (cached by spec hash, task, repeat):               {ours} "
        f"({ours / max(decisions, 1):.1f} per decision)"
    )
    print(f"ratio homespun / naive: {ours / max(naive, 1):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.proposals))
