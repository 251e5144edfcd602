"""A session's diagnosis reads the user's own failing conversations since the last session:
scrubbed in diagnosis.md and in what the teacher is sent, cited by the cluster they joined;
never a sensitive conversation, never an evaluation run, never one a past session read."""

from __future__ import annotations

import pytest
from langgraph.runtime import Runtime

from homespun.graphs import search_loop
from homespun.graphs.search import SearchContext, diagnose
from homespun.home import init_home
from homespun.learning.clusters import Diagnosis
from homespun.learning.proposers.random_templates import RandomTemplateProposer
from homespun.spec import load_spec
from homespun.stores.traces import TraceStore
from tests.graphs.test_search_session import PROPOSALS, teacher_script
from tests.learning.test_user_failures import PRIVATE, seed
from tests.learning.toy import StudentFactory, ToyBenchmark

EMAIL, PHONE = "alice.smith@example.org", "7946 0958"
USELESS = {
    "target_cluster": "math",
    "rationale": "unrelated to math",
    "ops": [{"op": "set_memory_param", "param": "top_k", "value": 7}],
}


@pytest.fixture
def toy(monkeypatch):
    bench = ToyBenchmark(per_category=13)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *args: bench)
    return bench


async def session(settings, teacher) -> tuple[str, Diagnosis]:
    """One session on the toy benchmark: its diagnosis.md and its diagnosis."""
    diagnoses: list[Diagnosis] = []
    result = await search_loop.run_search(
        settings,
        benchmark="toy",
        proposer="llm",
        student=StudentFactory(),
        teacher=teacher,
        on_event=lambda e, d: diagnoses.append(d["diagnosis"]) if e == "diagnosis" else None,
    )
    sid = result.sessions[0]
    return (settings.sessions_dir / sid / "diagnosis.md").read_text(), diagnoses[0]


async def test_the_users_failing_conversations_join_the_diagnosis_scrubbed(settings, toy):
    init_home(settings)
    traces = TraceStore(settings.traces_db)
    down = seed(traces, PRIVATE, feedback=0.0)  # `homespun ask`, then `feedback ... down`
    secret = seed(traces, "summarise SENSITIVE-NOTE", feedback=0.0, sensitive=True)
    evaluated = seed(traces, "EVAL-RUN question", source="eval:starter", feedback=0.0)

    seen: list[str] = []
    text, diagnosis = await session(settings, teacher_script(PROPOSALS[:1], seen, cite=[down]))
    sent = "\n".join(seen)

    # the teacher read it, scrubbed, and put it in the math cluster
    assert down in sent and "<EMAIL>" in sent and "<PHONE>" in sent
    assert down in diagnosis.cluster("math").trace_ids
    assert f"| `{down}` |" in text and "| math | Mail <EMAIL> or call <PHONE> about" in text
    assert f"your conversations: `{down}`" in text
    # the cluster also names the benchmark runs it came from
    math_runs = [t for t in diagnosis.cluster("math").trace_ids if t != down]
    assert math_runs and TraceStore(settings.traces_db).get(math_runs[0]).source == "eval:toy"
    # no private data anywhere; no sensitive conversation, no evaluation run as the user's
    for blob in (text, sent):
        assert EMAIL not in blob and PHONE not in blob
        assert "SENSITIVE-NOTE" not in blob and secret not in blob
        assert "EVAL-RUN" not in blob and evaluated not in blob
    assert all(secret not in c.trace_ids for c in diagnosis.clusters)

    # The next session reads only what came in since this one started.
    later = seed(traces, "book the dentist for Tuesday", source="telegram", feedback=0.0)
    seen = []
    text, diagnosis = await session(settings, teacher_script([USELESS], seen, cite=[later]))
    sent = "\n".join(seen)
    assert later in sent and f"| `{later}` |" in text
    assert later in diagnosis.cluster("math").trace_ids
    assert down not in sent and down not in text  # read by the last session already
    assert all(down not in c.trace_ids for c in diagnosis.clusters)


async def test_rules_cite_the_conversation_in_the_cluster_with_its_failure(settings):
    init_home(settings)
    traces = TraceStore(settings.traces_db)
    down = seed(traces, PRIVATE, feedback=0.0)
    ctx = SearchContext(
        settings=settings,
        benchmark=ToyBenchmark(per_category=4),
        proposer=RandomTemplateProposer(),
        student=StudentFactory(),
    )
    out = await diagnose({}, Runtime(context=ctx))
    diagnosis = Diagnosis.model_validate(out["diagnosis"])
    assert diagnosis.source == "rules" and load_spec(settings.spec_path).learning.teacher == ""
    # the student answers "no idea": wrong answers, like the rated-down conversation
    (home,) = [c for c in diagnosis.clusters if down in c.trace_ids]
    assert home.signature == "wrong_answer"
    text = (settings.sessions_dir / out["session_id"] / "diagnosis.md").read_text()
    assert f"| `{down}` |" in text and "Mail <EMAIL> or call <PHONE>" in text
    assert EMAIL not in text and PHONE not in text
