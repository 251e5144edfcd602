"""A whole session with the real Anthropic client as teacher, against a loopback stub:
clusters and proposals come back over HTTP, no private data from the traces goes out, and
the teacher's cost is recorded for the session."""

from __future__ import annotations

import json

import pytest

from homespun.engines.providers import build_teacher
from homespun.graphs import search_loop
from homespun.home import init_home
from homespun.learning.tasks import Task
from homespun.spec import load_spec
from homespun.stores.learning import LearningStore
from tests.learning.toy import CATEGORIES, StudentFactory, ToyBenchmark, commit_gate_rule
from tests.stubs import anthropic_text, anthropic_tool_use

from .test_search_session import PROPOSALS

EMAIL, PHONE, KEY = (
    "ada.lovelace@example.org",
    "+1 415 555 0134",
    "sk-ant-api03-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm",
)


class PrivateToy(ToyBenchmark):
    """Queries carry an e-mail address, a phone number and an API key."""

    def tasks(self) -> list[Task]:
        return [
            Task(
                id=f"{c}-{i}",
                query=f"Q:{c}:{c}-{i}-gold (mail {EMAIL}, call {PHONE}, key {KEY})",
                category=c,
                gold=f"{c}-{i}-gold",
            )
            for c in CATEGORIES
            for i in range(self.per_category)
        ]


class PrivateStudent(StudentFactory):
    def __call__(self, spec):
        model = super().__call__(spec)
        inner = model.script[0]

        def reply(messages):
            from langchain_core.messages import HumanMessage

            q = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
            clean = q.model_copy(update={"content": q.content.split(" (")[0]})
            out = inner([*messages[:-1], clean])
            return out if out != "no idea" else f"no idea, ask {EMAIL} or {PHONE}"

        model.script = [reply] * 50
        return model


async def test_session_with_the_anthropic_client_never_sends_private_data(
    settings, http_stub, monkeypatch
):
    url, server = http_stub.base_url, http_stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    bench = PrivateToy(per_category=5)  # 1 test, 2 search and 2 gate tasks a category
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    init_home(settings)
    commit_gate_rule(settings, "strict")  # 2 gate tasks a cluster; this test is about privacy
    report = {
        "clusters": [
            {
                "id": "math",
                "name": "math answers wrong",
                "categories": ["math"],
                "skill_gap": "does not compute",
            },
            {
                "id": "recall",
                "name": "recall misses",
                "categories": ["recall"],
                "skill_gap": "memory search too narrow",
            },
        ],
        "summary": "two clusters",
    }
    server.replies = [
        anthropic_tool_use("report_diagnosis", report, (1200, 300)),
        *[anthropic_text("I cannot tell.", (100, 10)) for _ in range(4)],  # teacher re-runs
        anthropic_tool_use("submit_proposals", {"proposals": PROPOSALS[:2]}, (1500, 400)),
    ]
    teacher = build_teacher("anthropic:claude-opus-4-6", base_url=url)
    result = await search_loop.run_search(
        settings, benchmark="toy", proposer="llm", student=PrivateStudent(), teacher=teacher
    )
    store = LearningStore(settings.learning_db)
    sid = result.sessions[0]
    statuses = {json.loads(p["ops"])[0]["op"]: p["status"] for p in store.proposals(sid)}
    assert statuses == {"set_memory_param": "accepted", "set_generation_param": "rejected"}
    assert load_spec(settings.spec_path).memory.top_k == 9

    assert len(server.bodies) == 6  # diagnosis, 4 teacher re-runs, proposals
    sent = "\n".join(r.raw for r in server.requests)
    assert "no idea" in sent  # the failing traces were really shown to the teacher ...
    for secret in (EMAIL, PHONE, KEY, "415 555", "ada.lovelace"):
        assert secret not in sent  # ... with their private data scrubbed
    # the teacher's usage is the session's recorded cost (Opus 4.6: $5 / $25 per Mtok)
    expected = (1200 + 1500 + 400) * 5 / 1e6 + (300 + 400 + 40) * 25 / 1e6
    rows = list(store.db.query("select * from costs"))
    assert store.session(sid).cost_usd == pytest.approx(expected, rel=1e-6), rows
