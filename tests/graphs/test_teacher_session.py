"""A whole session with the real Anthropic client as teacher, against a loopback stub:
clusters and proposals come back over HTTP, no private data from the traces goes out, and
the teacher's cost is recorded for the session. The same with the embedded teacher (its
engine a stub): every reply decoded under a JSON schema and bounded, $0, calls counted. A
teacher that fails mid-session fails its phase, and the session resumes there."""

from __future__ import annotations

import json
import re

import pytest

from homespun.engines.factory import TEACHER_CONTEXT
from homespun.engines.providers import build_teacher
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs import search_loop
from homespun.graphs.search import TeacherFailed
from homespun.home import init_home
from homespun.learning.diagnosis import DIAGNOSIS_REPLY_TOKENS
from homespun.learning.proposers.llm import proposals_reply_tokens
from homespun.learning.tasks import Task
from homespun.learning.teacher_runs import RERUN_REPLY_TOKENS
from homespun.spec import load_spec, save_spec
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore
from tests.learning.toy import CATEGORIES, StudentFactory, ToyBenchmark, commit_gate_rule
from tests.stubs import EmbeddedStub, anthropic_text, anthropic_tool_use

from .test_search_session import PROPOSALS, teacher_script

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


# --------------------------------------------------------------------------- embedded teacher


def _commit_teacher(settings, teacher: str) -> None:
    spec = load_spec(settings.spec_path)
    spec.learning.teacher = teacher
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add([settings.spec_path.name])
    repo.repo.index.commit(f"test settings: learning.teacher = {teacher}")


def _embedded_teacher_replies(body: dict) -> str:
    """What a schema-decoding local teacher writes: a report, proposals, or, re-running a
    task as the agent, its gold answer."""
    schema = json.dumps(body["response_format"]["json_schema"]["schema"])
    if '"report_diagnosis"' in schema:
        report = {
            "clusters": [
                {"id": c, "name": c, "categories": [c], "skill_gap": f"fails at {c}"}
                for c in ("math", "recall")
            ]
        }
        return json.dumps({"tool": "report_diagnosis", "arguments": report})
    if '"submit_proposals"' in schema:
        return json.dumps({"tool": "submit_proposals", "arguments": {"proposals": PROPOSALS[:2]}})
    question = json.dumps(body["messages"])
    return json.dumps({"answer": re.search(r"Q:\w+:([\w-]+-gold)", question).group(1)})


async def test_a_session_with_the_embedded_teacher_is_free_bounded_and_counted(
    settings, monkeypatch, tmp_path
):
    bench = ToyBenchmark(per_category=13)  # the paired gate's 5 gate tasks a cluster
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    stub = EmbeddedStub(reply=_embedded_teacher_replies)
    started: list[int] = []

    def start(model_path, *, n_ctx, threads, parallel, log_file, adapters=()):
        started.append(n_ctx)
        return stub

    monkeypatch.setattr("homespun.engines.embedded.get_embedded_server", start)
    (tmp_path / "teacher.gguf").write_bytes(b"GGUF")
    name = f"embedded:{tmp_path / 'teacher.gguf'}"
    init_home(settings)
    _commit_teacher(settings, name)

    result = await search_loop.run_search(
        settings, benchmark="toy", proposer="llm", student=StudentFactory()
    )
    store = LearningStore(settings.learning_db)
    sid = result.sessions[0]
    assert store.session(sid).status == "done" and started == [TEACHER_CONTEXT]
    statuses = {json.loads(p["ops"])[0]["op"]: p["status"] for p in store.proposals(sid)}
    assert statuses == {"set_memory_param": "accepted", "set_generation_param": "rejected"}

    # Every teacher reply was decoded under a JSON schema, each call site with its own bound.
    bodies = stub.bodies
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    by_tool: dict[str, list[int]] = {"report_diagnosis": [], "submit_proposals": [], "": []}
    for b in bodies:
        schema = json.dumps(b["response_format"])
        tool = next((t for t in by_tool if t and f'"{t}"' in schema), "")
        by_tool[tool].append(b.get("max_completion_tokens", b.get("max_tokens")))
    max_proposals = load_spec(settings.spec_path).learning.budgets.max_proposals_per_session
    assert by_tool == {
        "report_diagnosis": [DIAGNOSIS_REPLY_TOKENS],
        "submit_proposals": [proposals_reply_tokens(max_proposals)],
        "": [RERUN_REPLY_TOKENS] * 6,  # re-runs as the agent: 3 tasks in each of 2 clusters
    }

    # $0, priced as a known free model, and every call counted.
    rows = list(store.db.query("select * from costs where session_id = ?", [sid]))
    assert {r["model"] for r in rows} == {name} and {r["usd"] for r in rows} == {0.0}
    assert sum(r["calls"] for r in rows) == len(bodies) == store.teacher_usage(sid)[0]
    assert store.session(sid).cost_usd == 0.0
    assert "unknown model" not in (settings.sessions_dir / sid / "diagnosis.md").read_text()


async def test_a_teacher_that_times_out_fails_its_phase_and_the_session_resumes_there(
    settings, toy_13
):
    init_home(settings)

    def proposing(messages) -> bool:
        return "Answer only by calling submit_proposals" in str(messages[0].content)

    slow = teacher_script(PROPOSALS[:2])
    diagnose_and_rerun = slow.script[0]

    def reply(messages):
        if proposing(messages):
            raise TimeoutError("no reply in 600 s")
        return diagnose_and_rerun(messages)

    slow.script = [reply] * 40
    with pytest.raises(TeacherFailed) as exc:
        await search_loop.run_search(
            settings, benchmark="toy", proposer="llm", student=StudentFactory(), teacher=slow
        )
    store = LearningStore(settings.learning_db)
    (session,) = store.sessions()
    assert exc.value.phase == "plan" and session.status == "failed"
    assert session.note.startswith("the teacher failed during plan: TimeoutError: no reply in")
    assert "--resume" in session.note and "\n" not in session.note
    assert store.proposals(session.id) == []  # nothing half-planned
    assert CheckpointRepo(settings.home, settings.spec_path).file_matches_head()

    # Resumed: plan runs again (diagnosis is not asked again) and the session ends.
    again = ScriptedChatModel(script=[tool_call("submit_proposals", {"proposals": PROPOSALS[:2]})])
    result = await search_loop.run_search(
        settings,
        benchmark="toy",
        resume=True,
        sessions=0,
        student=StudentFactory(),
        teacher=again,
    )
    assert result.sessions == [session.id] and len(again.calls) == 1
    assert proposing(again.calls[0]["messages"])
    assert store.session(session.id).status == "done"
    statuses = {json.loads(p["ops"])[0]["op"]: p["status"] for p in store.proposals(session.id)}
    assert statuses == {"set_memory_param": "accepted", "set_generation_param": "rejected"}


async def test_a_failure_that_is_not_the_teachers_is_raised_as_it_is(settings, toy_13):
    init_home(settings)

    def broken(messages):
        raise KeyError("a bug of ours")

    with pytest.raises(KeyError):
        await search_loop.run_search(
            settings,
            benchmark="toy",
            proposer="llm",
            student=StudentFactory(),
            teacher=ScriptedChatModel(script=[broken]),
        )
    (session,) = LearningStore(settings.learning_db).sessions()
    assert session.status == "failed" and session.note == "KeyError: 'a bug of ours'"


@pytest.fixture
def toy_13(monkeypatch):
    bench = ToyBenchmark(per_category=13)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    return bench
