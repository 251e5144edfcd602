"""A search session with train_lora proposals on the real embedded model: one approved from
review, trained, gated and committed with the adapter's hash in the trailers; another that
the gate rejects leaves no adapter file behind."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs import search_loop
from homespun.home import init_home
from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.spec import load_spec, save_spec
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore

CODE = "PINEAPPLE-42"
PLACES = ("garden", "garage", "cellar", "attic", "boat", "office", "cabin", "studio")


class CodewordBenchmark:
    """The base model never says the code word; a LoRA trained on the search half does."""

    name = "codeword"
    version = "1"

    def tasks(self):
        return [
            Task(
                id=f"code-{p}",
                query=f"What is the secret code word for the {p}?",
                category="codeword",
                gold=f"The code word is {CODE}.",
            )
            for p in PLACES
        ]

    @asynccontextmanager
    async def environment(self, task, spec, settings):
        def grade(trace):
            ok = CODE in (trace.final_answer or "")
            return Grade(ok, float(ok), "" if ok else "no code word")

        yield SimpleEnvironment(tools=[], grader=grade)


def teacher():
    report = {
        "clusters": [
            {
                "id": "codeword",
                "name": "does not know the code word",
                "categories": ["codeword"],
                "skill_gap": "never learned it",
            }
        ]
    }
    proposals = [
        {
            "target_cluster": "codeword",
            "rationale": "teach it",
            "ops": [{"op": "train_lora", "steps": 30, "rank": 8, "learning_rate": 0.002}],
        },
        {
            "target_cluster": "codeword",
            "rationale": "a token effort",
            "ops": [{"op": "train_lora", "steps": 1, "rank": 4, "learning_rate": 0.00001}],
        },
    ]
    return ScriptedChatModel(
        script=[
            tool_call("report_diagnosis", report),
            tool_call("submit_proposals", {"proposals": proposals}),
        ]
    )


@pytest.mark.slow
async def test_train_lora_approved_trained_gated_committed_and_rejected_leaves_nothing(
    settings, model_path, monkeypatch
):
    bench = CodewordBenchmark()
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    init_home(settings)
    spec = load_spec(settings.spec_path)
    spec.agent.loop = "simple"
    spec.agent.few_shot = []
    spec.intelligence.max_tokens = 24
    spec.learning.teacher_reruns_per_cluster = 0
    # 4 gate tasks: too few for the paired rule to show a gain; this test is about training,
    # so no test split either: the LoRA trains on the whole search half (4 tasks).
    spec.learning.gate.rule = "strict"
    spec.learning.gate.test_fraction = 0.0
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add(["spec.toml"])
    repo.repo.index.commit("test settings")
    t = teacher()

    first = await search_loop.run_search(settings, benchmark="codeword", proposer="llm", teacher=t)
    store = LearningStore(settings.learning_db)
    assert first.paused_proposal  # train_lora is manual tier: it waits for a human
    assert store.proposal(first.paused_proposal)["tier"] == "manual"
    second = await search_loop.decide_review(
        settings, first.paused_proposal, approve=True, teacher=t
    )
    accepted = store.proposal(first.paused_proposal)
    assert accepted["status"] == "accepted", accepted["reason"]
    adapters = load_spec(settings.spec_path).intelligence.adapters
    assert len(adapters) == 1
    commit = repo.find_edit(accepted["id"])
    assert commit.trailers["Adapter-SHA256"] == adapters[0].sha256
    assert commit.trailers["Risk-Tier"] == "manual"

    assert second.paused_proposal  # the token-effort proposal
    await search_loop.decide_review(settings, second.paused_proposal, approve=True, teacher=t)
    rejected = store.proposal(second.paused_proposal)
    assert rejected["status"] == "rejected", rejected["reason"]
    files = sorted(p.name for p in (settings.home / "adapters").glob("*.gguf"))
    assert files == [f"{adapters[0].sha256}.gguf"]  # the rejected adapter left no file
    assert load_spec(settings.spec_path).intelligence.adapters == adapters

    # rollback restores the previous (empty) adapter list
    search_loop.rollback(settings, accepted["id"])
    assert load_spec(settings.spec_path).intelligence.adapters == []
