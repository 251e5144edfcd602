"""A whole spec-search session with a scripted teacher and a scripted student.

One proposal is accepted (commit with trailers, spec changed); one fixes its target but
drops another cluster by more than eps and is rejected (spec file and git untouched); one
review-tier proposal pauses, is approved, gated and committed; `rollback --last` reverts.
The gate is the default paired rule, so the toy has 13 tasks a category: 3 go to the test
split (learning.gate.test_fraction 0.25), the other 10 to 5 search and 5 gate tasks, the
fewest with which a fix of every task is significant at alpha 0.05. The test split is run
for the session's before/after report only: neither the teacher (diagnosis, proposals) nor
any candidate spec the gate runs ever sees one of its tasks.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from homespun.cli import app
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs import search_loop
from homespun.home import init_home
from homespun.spec import load_spec
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore
from tests.learning.toy import StudentFactory, ToyBenchmark

PROPOSALS = [
    {
        "target_cluster": "recall",
        "rationale": "more memories per search",
        "ops": [{"op": "set_memory_param", "param": "top_k", "value": 9}],
    },
    {
        "target_cluster": "math",
        "rationale": "hotter sampling",
        "ops": [{"op": "set_generation_param", "param": "temperature", "value": 1.5}],
    },
    {
        "target_cluster": "math",
        "rationale": "tell it to use the calculator",
        "ops": [{"op": "patch_system_prompt", "mode": "append", "text": "USE-CALC"}],
    },
]


def teacher_script(
    proposals: list[dict] | None = None,
    seen: list[str] | None = None,
    cite: list[str] | None = None,
) -> ScriptedChatModel:
    """Diagnoses, solves the re-run tasks itself (teacher success rate), then proposes
    `proposals` (default: PROPOSALS). Every message it is sent goes into `seen`; the math
    cluster cites the user's conversations `cite` (trace ids)."""
    report = {
        "clusters": [
            {
                "id": "math",
                "name": "math answers wrong",
                "categories": ["math"],
                "trace_ids": cite or [],
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
    jobs = [
        tool_call("report_diagnosis", report),
        tool_call("submit_proposals", {"proposals": proposals or PROPOSALS}),
    ]

    def reply(messages):
        from langchain_core.messages import HumanMessage

        if seen is not None:
            seen.extend(str(m.content) for m in messages)
        question = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
        if question.startswith("Q:"):  # a re-run: the teacher acting as the agent
            return question.split(":")[2].split(" ")[0]
        return jobs.pop(0)

    return ScriptedChatModel(script=[reply] * 40)


@pytest.fixture
def toy(monkeypatch):
    bench = ToyBenchmark(per_category=13)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *args: bench)
    return bench


def git_log(settings) -> list:
    return CheckpointRepo(settings.home, settings.spec_path).commits()


async def test_full_session_accepts_rejects_pauses_and_rolls_back(settings, toy):
    init_home(settings)
    spec0 = load_spec(settings.spec_path)
    student = StudentFactory()
    events: list[str] = []
    result = await search_loop.run_search(
        settings,
        benchmark="toy",
        proposer="llm",
        sessions=1,
        student=student,
        teacher=teacher_script(),
        on_event=lambda e, d: events.append(e),
    )
    store = LearningStore(settings.learning_db)
    sid = result.sessions[0]
    rows = {p["target"] + ":" + json.loads(p["ops"])[0]["op"]: p for p in store.proposals(sid)}

    # 1. accepted: committed with trailers, spec changed on disk
    accepted = rows["recall:set_memory_param"]
    assert accepted["status"] == "accepted"
    commit = CheckpointRepo(settings.home, settings.spec_path).find_edit(accepted["id"])
    assert commit is not None
    assert commit.trailers["Session-ID"] == sid and commit.trailers["Risk-Tier"] == "auto"
    assert load_spec(settings.spec_path).memory.top_k == 9

    # 2. rejected: fixes math but drops tone by more than eps; nothing on disk changed
    rejected = rows["math:set_generation_param"]
    assert rejected["status"] == "rejected"
    assert "tone" in rejected["reason"] or "rest" in rejected["reason"]
    assert load_spec(settings.spec_path).intelligence.temperature == spec0.intelligence.temperature
    assert all(c.trailers.get("Edit-ID") != rejected["id"] for c in git_log(settings))

    # 3. review tier: paused, waiting
    review = rows["math:patch_system_prompt"]
    assert result.paused_proposal == review["id"]
    assert store.proposal(review["id"])["status"] == "pending_review"
    assert "USE-CALC" not in load_spec(settings.spec_path).agent.system_prompt
    commits_before = len(git_log(settings))

    # approve -> still gated -> accepted and committed
    approved = await search_loop.decide_review(
        settings, review["id"], approve=True, student=student, teacher=teacher_script()
    )
    assert approved.stopped_because == "session finished"
    assert store.proposal(review["id"])["status"] == "accepted"
    assert "USE-CALC" in load_spec(settings.spec_path).agent.system_prompt
    assert len(git_log(settings)) == commits_before + 1
    assert git_log(settings)[0].trailers["Risk-Tier"] == "review"
    session = store.session(sid)
    assert session.status == "done" and session.gate_score_after > session.gate_score_before
    assert (settings.sessions_dir / sid / "diagnosis.md").exists()
    assert json.loads((settings.sessions_dir / sid / "plan.json").read_text())
    diagnosis_md = (settings.sessions_dir / sid / "diagnosis.md").read_text()
    assert "| math | math |" in diagnosis_md and "| 1.00 |" in diagnosis_md  # teacher re-ran

    # rollback --last: a revert commit, the prompt edit is gone, history kept
    res = CliRunner().invoke(app, ["learning", "rollback", "--last"])
    assert res.exit_code == 0, res.output
    assert "USE-CALC" not in load_spec(settings.spec_path).agent.system_prompt
    assert load_spec(settings.spec_path).memory.top_k == 9  # the earlier edit stays
    log = git_log(settings)
    assert log[0].trailers.get("Reverts-Edit-ID") == review["id"]
    assert len(log) == commits_before + 2
    assert CheckpointRepo(settings.home, settings.spec_path).file_matches_head()


async def test_a_candidate_that_cannot_pass_stops_before_the_rest_of_the_gate(settings, toy):
    init_home(settings)
    useless = {
        "target_cluster": "math",
        "rationale": "unrelated to math",
        "ops": [{"op": "set_memory_param", "param": "top_k", "value": 7}],
    }
    events: list[tuple[str, dict]] = []
    result = await search_loop.run_search(
        settings,
        benchmark="toy",
        proposer="llm",
        sessions=1,
        student=StudentFactory(),
        teacher=teacher_script([useless]),
        on_event=lambda e, d: events.append((e, d)),
    )
    (row,) = LearningStore(settings.learning_db).proposals(result.sessions[0])
    assert row["status"] == "rejected"
    # math runs first; once its 5 tasks are in, no outcome of the other 10 could pass it
    assert row["reason"].startswith(
        "paired rule: stopped after 5 of 15 gate tasks, since even if S' passed every "
        "remaining run: target 'math' not shown to improve: 0 task(s) better, 0 worse of 5 "
        "(0.000 -> 0.000), one-sided p=1 > alpha=0.05"
    ), row["reason"]
    candidate = [d for e, d in events if e == "evaluate_done" and "proposal" in d["label"]]
    assert [d["runs"] for d in candidate] == [5]
    assert "stopped after 5 of 15 tasks" in candidate[0]["label"]
    # Nothing accepted: the test split ran once, and the session's end reuses that score.
    tested = [d["label"] for e, d in events if e == "evaluate_start" and "test" in d["label"]]
    assert tested == ["test: current spec on the test split"]
    session = LearningStore(settings.learning_db).session(result.sessions[0])
    assert session.test_score_after == session.test_score_before == pytest.approx(1 / 3)


async def test_rejecting_in_review_leaves_no_trace_on_disk(settings, toy):
    init_home(settings)
    student = StudentFactory()
    teacher = teacher_script()
    result = await search_loop.run_search(
        settings, benchmark="toy", proposer="llm", student=student, teacher=teacher
    )
    text_before = settings.spec_path.read_text()
    n_commits = len(git_log(settings))
    await search_loop.decide_review(
        settings,
        result.paused_proposal,
        approve=False,
        reason="too blunt",
        student=student,
        teacher=teacher,
    )
    store = LearningStore(settings.learning_db)
    row = store.proposal(result.paused_proposal)
    assert (row["status"], row["reason"]) == ("review_rejected", "too blunt")
    assert settings.spec_path.read_text() == text_before
    assert len(git_log(settings)) == n_commits


async def test_a_dirty_spec_stops_a_session(settings, toy):
    init_home(settings)
    settings.spec_path.write_text(settings.spec_path.read_text().replace("top_k = 5", "top_k = 6"))
    with pytest.raises(Exception, match="commit or revert manual changes first"):
        await search_loop.run_search(
            settings, benchmark="toy", proposer="random", student=StudentFactory()
        )


async def test_an_unchanged_spec_is_never_re_run(settings, toy):
    init_home(settings)
    student = StudentFactory()
    from homespun.learning.evaluation import evaluate
    from homespun.stores.eval_cache import EvalCache

    spec = load_spec(settings.spec_path)
    cache = EvalCache(settings.learning_db)
    first = await evaluate(spec, settings, toy, toy.tasks(), cache=cache, student=student)
    calls = student.calls
    assert first.runs == len(toy.tasks()) and calls > 0
    again = await evaluate(spec, settings, toy, toy.tasks(), cache=cache, student=student)
    assert student.calls == calls  # zero model calls
    assert again.runs == 0 and again.accuracy == first.accuracy


async def test_the_test_split_is_seen_only_by_the_before_and_after_report(settings, toy):
    init_home(settings)
    start_hash = load_spec(settings.spec_path).content_hash()
    student, seen = StudentFactory(), []
    events: list[tuple[str, dict]] = []
    # No review-tier proposal: the session runs to its end in one go.
    result = await search_loop.run_search(
        settings,
        benchmark="toy",
        proposer="llm",
        student=student,
        teacher=teacher_script(PROPOSALS[:2], seen=seen),
        on_event=lambda e, d: events.append((e, d)),
    )
    store = LearningStore(settings.learning_db)
    session = store.session(result.sessions[0])
    final_hash = load_spec(settings.spec_path).content_hash()
    assert final_hash != start_hash  # the recall edit was accepted

    phase = next(d for e, d in events if e == "phase" and d["name"] == "diagnose")
    assert (phase["search_tasks"], phase["gate_tasks"], phase["test_tasks"]) == (15, 15, 9)
    by_label: dict[str, set[str]] = {}
    for e, d in events:
        if e == "task_done":
            by_label.setdefault(d["label"], set()).add(d["outcome"].task_id)
    test_ids = by_label.pop("test: current spec on the test split")
    assert by_label.pop("test: final spec on the test split") == test_ids and len(test_ids) == 9
    assert all(not ids & test_ids for ids in by_label.values())  # diagnosis and gate runs

    # The student ran each test task twice, under the first and the final spec: never
    # under the rejected candidate, nor again for the unchanged one.
    on_test = [(h, t) for h, t in student.asked if t in test_ids]
    assert sorted(on_test) == sorted((h, t) for h in (start_hash, final_hash) for t in test_ids)
    assert {t for _, t in student.asked} - test_ids  # it did run the other tasks
    # The teacher diagnosed and proposed without a word about a test task.
    text = "\n".join(seen)
    assert "math-" in text  # it was shown failing search runs ...
    assert not [t for t in test_ids if re.search(rf"\b{t}\b", text)]  # ... and no test one

    # recall fixed: 3 of 9 test tasks pass before (tone), 6 of 9 after
    assert session.test_tasks == 9
    assert (session.test_score_before, session.test_score_after) == pytest.approx((1 / 3, 2 / 3))
    done = next(d for e, d in events if e == "session_done")
    assert (done["test_before"], done["test_after"]) == pytest.approx((1 / 3, 2 / 3))
    assert result.test_scores == [(session.test_score_before, session.test_score_after)]


def test_the_test_split_is_measured_on_at_most_subsample_tasks(tmp_path):
    # a quarter of a large benchmark would cost more than the session: cap it like the gate
    from homespun.graphs.search import SearchContext
    from homespun.learning.proposers.random_templates import RandomTemplateProposer
    from homespun.spec import Settings, Spec

    spec = Spec()
    spec.learning.gate.subsample = 6
    ctx = SearchContext(
        settings=Settings(home=tmp_path),
        benchmark=ToyBenchmark(per_category=40),
        proposer=RandomTemplateProposer(),
    )
    split = ctx.split(spec)
    assert len(split.gate) == 6 and len(split.test) == 6
    assert {t.category for t in split.test} == {t.category for t in ctx.benchmark.tasks()}
    assert split.test == ctx.split(spec).test  # stable
    assert not {t.id for t in split.test} & {t.id for t in split.gate + split.search}
