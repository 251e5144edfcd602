"""`homespun learning ...` and `homespun bench run` as a user runs them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from homespun.cli import app
from homespun.graphs import search_loop
from homespun.spec import load_spec, save_spec
from homespun.spec.models import OP_NAMES
from homespun.stores.checkpoints import CheckpointRepo
from homespun.stores.learning import LearningStore
from tests.graphs.test_search_session import teacher_script
from tests.learning.toy import ToyBenchmark

runner = CliRunner()


def _commit_spec(settings, **learning):
    spec = load_spec(settings.spec_path)
    for k, v in learning.items():
        setattr(spec.learning.budgets if k.startswith("max_") else spec.learning, k, v)
    save_spec(spec, settings.spec_path)
    repo = CheckpointRepo(settings.home, settings.spec_path)
    repo.repo.index.add([settings.spec_path.name])
    repo.repo.index.commit("test settings")


def test_learning_init_history_review_and_benchmark_show(home, settings):
    assert runner.invoke(app, ["learning", "init"]).exit_code == 0
    assert (home / ".git").is_dir() and (home / "learning").is_dir()
    assert "Nothing waits for review" in runner.invoke(app, ["learning", "review"]).output
    hist = runner.invoke(app, ["learning", "history"])
    assert hist.exit_code == 0 and "spec-search sessions" in hist.output
    shown = runner.invoke(app, ["learning", "benchmark", "show", "starter"])
    assert shown.exit_code == 0
    assert "arith-01" in shown.output and "search" in shown.output and "gate" in shown.output
    bad = runner.invoke(app, ["learning", "run", "--benchmark", "nope"])
    assert bad.exit_code == 1 and "unknown benchmark" in bad.output


def test_a_run_without_a_test_split_says_test_accuracy_is_not_measured(home, settings, monkeypatch):
    from tests.graphs.test_search_session import PROPOSALS
    from tests.learning.toy import StudentFactory

    bench = ToyBenchmark()
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    runner.invoke(app, ["init"])
    spec = load_spec(settings.spec_path)
    spec.learning.gate.test_fraction = 0.0
    save_spec(spec, settings.spec_path)
    _commit_spec(settings)
    real_run = search_loop.run_search

    async def run(*a, **k):
        teacher = teacher_script(PROPOSALS[:2])  # no review tier: the session ends
        return await real_run(*a, **{**k, "student": StudentFactory(), "teacher": teacher})

    monkeypatch.setattr(search_loop, "run_search", run)
    res = runner.invoke(app, ["learning", "run", "--benchmark", "toy", "--proposer", "llm"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "test accuracy not measured: learning.gate.test_fraction = 0" in out
    assert "done: gate accuracy 0.333 → 0.333 · test accuracy not measured" in out
    assert "test accuracy not measured (no test split)" in out
    (session,) = LearningStore(settings.learning_db).sessions()
    assert (session.test_tasks, session.test_score_before, session.test_score_after) == (
        0,
        None,
        None,
    )


def _session(store: LearningStore, **scores) -> str:
    sid = store.new_session(benchmark="toy", proposer="random", teacher="", spec_hash="h")
    store.update_session(sid, status="done", **scores)
    return sid


def _row(output: str, sid: str) -> str:
    return " ".join(next(line for line in output.splitlines() if sid in line).split())


def test_history_and_show_print_test_accuracy_next_to_the_gate_score(home, settings):
    runner.invoke(app, ["init"])
    store = LearningStore(settings.learning_db)
    measured = _session(
        store,
        gate_score_before=0.4,
        gate_score_after=0.6,
        test_score_before=0.25,
        test_score_after=0.5,
        test_tasks=12,
    )
    unmeasured = _session(store, gate_score_before=0.4, gate_score_after=0.4, test_tasks=0)
    hist = runner.invoke(app, ["learning", "history"], env={"COLUMNS": "200"})
    assert hist.exit_code == 0, hist.output
    assert "test on the untouched tasks" in " ".join(hist.output.split())
    assert "0.400 → 0.600 │ 0.250 → 0.500" in _row(hist.output, measured)
    assert "0.400 → 0.400 │ not measured" in _row(hist.output, unmeasured)
    shown = runner.invoke(app, ["learning", "show", measured], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "gate accuracy 0.400 → 0.600 · test accuracy 0.250 → 0.500 (12 untouched tasks)" in (
        shown.output
    )
    shown = runner.invoke(app, ["learning", "show", unmeasured], env={"COLUMNS": "200"})
    assert "test accuracy not measured" in shown.output


def test_a_learning_database_from_before_the_test_split_still_reads(home, settings):
    import sqlite3

    settings.learning_db.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(settings.learning_db)
    columns = (
        "id text primary key, started_at float, ended_at float, status text, benchmark text, "
        "proposer text, teacher text, spec_hash_before text, spec_hash_after text, "
        "gate_score_before float, gate_score_after float, cost_usd float, note text"
    )
    old.execute(f"create table sessions ({columns})")
    old.execute(
        "insert into sessions values ('20240101-000000-abcdef', 0, 1, 'done', 'starter', "
        "'random', '', 'a', 'b', 0.3, 0.5, 0, '')"
    )
    old.commit()
    old.close()
    row = LearningStore(settings.learning_db).session("20240101")
    assert (row.gate_score_after, row.test_score_before, row.test_tasks) == (0.5, None, None)
    hist = runner.invoke(app, ["learning", "history"], env={"COLUMNS": "200"})
    assert hist.exit_code == 0, hist.output
    assert "0.300 → 0.500 │ —" in _row(hist.output, "20240101-000000-abcdef")


def test_rollback_without_edits_says_so(home, settings):
    runner.invoke(app, ["init"])
    res = runner.invoke(app, ["learning", "rollback", "--last"])
    assert res.exit_code == 1 and "no accepted edit" in res.output


def test_review_approve_reject_through_the_cli(home, settings, monkeypatch):
    from tests.learning.toy import StudentFactory

    # 13 a category: 3 test, 5 search and 5 gate tasks, enough for the paired gate
    bench = ToyBenchmark(per_category=13)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    runner.invoke(app, ["init"])
    student = StudentFactory()
    real_run, real_decide = search_loop.run_search, search_loop.decide_review

    async def run(*a, **k):
        return await real_run(*a, **{**k, "student": student, "teacher": teacher_script()})

    async def decide(*a, **k):
        return await real_decide(*a, **{**k, "student": student, "teacher": teacher_script()})

    monkeypatch.setattr(search_loop, "run_search", run)
    monkeypatch.setattr(search_loop, "decide_review", decide)
    res = runner.invoke(app, ["learning", "run", "--benchmark", "toy", "--proposer", "llm"])
    assert res.exit_code == 0, res.output
    assert "ACCEPT" in res.output and "REJECT" in res.output and "paused" in res.output
    out = " ".join(res.output.split())
    assert "15 held-out tasks; test: 9 untouched tasks" in out
    assert "test accuracy 0.333 → — on 9 tasks that no diagnosis, proposer or gate saw" in out
    store = LearningStore(settings.learning_db)
    pending = store.proposals(status="pending_review")[0]["id"]
    listed = runner.invoke(app, ["learning", "review"])
    assert pending in listed.output
    approved = runner.invoke(app, ["learning", "approve", pending])
    assert approved.exit_code == 0, approved.output
    # every cluster fixed: the untouched test split agrees with the gate
    assert "test accuracy 0.333 → 1.000" in " ".join(approved.output.split())
    assert store.proposal(pending)["status"] == "accepted"
    sid = store.proposal(pending)["session_id"]
    shown = runner.invoke(app, ["learning", "show", sid])
    assert shown.exit_code == 0 and "accepted" in shown.output and "rejected" in shown.output
    again = runner.invoke(app, ["learning", "approve", pending])
    assert again.exit_code == 1 and "not waiting for review" in again.output


def _error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("error:"))


def test_a_teacher_that_times_out_is_one_line_then_resumes_with_progress_shown(
    home, settings, monkeypatch
):
    from homespun.engines.testing import ScriptedChatModel, tool_call
    from tests.graphs.test_search_session import PROPOSALS
    from tests.learning.toy import StudentFactory

    bench = ToyBenchmark(per_category=13)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    runner.invoke(app, ["init"])
    slow = teacher_script(PROPOSALS[:2])
    diagnose_and_rerun = slow.script[0]

    def reply(messages):
        if "Answer only by calling submit_proposals" in str(messages[0].content):
            raise TimeoutError("no reply in 600 s")
        return diagnose_and_rerun(messages)

    slow.script = [reply] * 40
    again = ScriptedChatModel(script=[tool_call("submit_proposals", {"proposals": PROPOSALS[:2]})])
    teachers = [slow, again]
    real_run = search_loop.run_search

    async def run(*a, **k):
        return await real_run(*a, **{**k, "student": StudentFactory(), "teacher": teachers.pop(0)})

    monkeypatch.setattr(search_loop, "run_search", run)
    wide = {"COLUMNS": "400"}
    res = runner.invoke(
        app, ["learning", "run", "--benchmark", "toy", "--proposer", "llm"], env=wide
    )
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = _error_line(res.output)
    assert error.startswith("error: the teacher failed during plan: TimeoutError: no reply in 600")
    assert "homespun learning run --resume" in error
    # Not a terminal: each teacher call is a plain line when it starts and when it ends.
    assert "teacher call 1 (diagnose)…" in res.output
    assert "teacher call 1 done after" in res.output
    assert "(plan)…" in res.output and "failed after" in res.output
    (session,) = LearningStore(settings.learning_db).sessions()
    assert session.status == "failed"

    resumed = runner.invoke(app, ["learning", "run", "--benchmark", "toy", "--resume"], env=wide)
    assert resumed.exit_code == 0, resumed.output
    assert "ACCEPT" in resumed.output and "REJECT" in resumed.output
    assert LearningStore(settings.learning_db).session(session.id).status == "done"
    shown = runner.invoke(app, ["learning", "show", session.id], env=wide)
    assert "teacher call(s)" in shown.output


def test_an_embedded_teacher_that_is_not_pulled_is_one_line_naming_the_fix(
    home, settings, monkeypatch, tmp_path
):
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(tmp_path / "no-models"))
    runner.invoke(app, ["init"])
    _commit_spec(settings, teacher="embedded:qwen2.5-coder-1.5b", proposer="llm")
    res = runner.invoke(app, ["learning", "run"], env={"COLUMNS": "400"})
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = _error_line(res.output)
    assert error.startswith("error: learning.teacher = 'embedded:qwen2.5-coder-1.5b': ")
    assert "`homespun models pull qwen2.5-coder-1.5b --allow-third-party`" in error
    assert LearningStore(settings.learning_db).sessions() == []  # refused before it began


def test_a_teacher_id_that_names_no_model_is_one_line(home, settings):
    runner.invoke(app, ["init"])
    _commit_spec(settings, teacher="embedded:gpt-5")
    res = runner.invoke(app, ["learning", "run"], env={"COLUMNS": "400"})
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = _error_line(res.output)
    assert error.startswith("error: learning.teacher = 'embedded:gpt-5': ")
    assert "homespun models list" in error


@pytest.mark.slow
def test_a_session_with_the_embedded_smollm2_teacher_on_the_starter_benchmark(
    home, settings, model_path
):
    """The real engine as teacher and student: the teacher's every reply decoded under a
    JSON schema, so what it proposes parses or is recorded as invalid, never a crash. Kept
    cheap: 2 starter tasks a category (10 search, 10 gate), one proposal, 2 diagnosis tool
    calls, no re-runs."""
    runner.invoke(app, ["init"])
    teacher = "embedded:smollm2-135m"
    _commit_spec(
        settings,
        teacher=teacher,
        proposer="llm",
        teacher_reruns_per_cluster=0,
        max_proposals_per_session=1,
        max_tool_calls_per_diagnosis=2,
        tier_overrides={op: "auto" for op in OP_NAMES},
    )
    res = runner.invoke(app, ["learning", "run", "--limit", "2"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    store = LearningStore(settings.learning_db)
    (session,) = store.sessions()
    assert session.status == "done" and session.teacher == teacher, session.note
    proposals = store.proposals(session.id)
    if proposals:  # each one went through the gate, or failed to apply, on the record
        assert all(p["status"] in ("accepted", "rejected", "error") for p in proposals)
    else:  # the teacher's replies failed validation twice: recorded as such
        assert "the llm proposer gave no proposal" in session.note
    # Nothing invalid on disk: the spec loads, and git has it as it is.
    load_spec(settings.spec_path)
    assert CheckpointRepo(settings.home, settings.spec_path).file_matches_head()
    rows = list(store.db.query("select * from costs where session_id = ?", [session.id]))
    assert rows and {r["model"] for r in rows} == {teacher}
    assert {r["usd"] for r in rows} == {0.0} and session.cost_usd == 0.0
    calls, seconds = store.teacher_usage(session.id)
    assert calls >= 2 and seconds > 0  # at least the diagnosis and the proposals
    assert {r["kind"] for r in rows} == {"diagnose", "plan"}
    assert sum(r["output_tokens"] for r in rows) > 0  # the engine's usage, not estimates


def test_bench_run_prints_a_per_category_table(home, settings, monkeypatch):
    from tests.learning.toy import StudentFactory

    bench = ToyBenchmark()
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    runner.invoke(app, ["init"])
    from homespun.learning import evaluation

    real = evaluation.evaluate

    async def evaluate(*a, **k):
        return await real(*a, **{**k, "student": StudentFactory()})

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    res = runner.invoke(app, ["bench", "run", "--benchmark", "toy"])
    assert res.exit_code == 0, res.output
    for category in ("math", "recall", "tone", "all"):
        assert category in res.output
    assert "s/query" in res.output


def _bench_with_baseline(monkeypatch, *extra):
    from homespun.learning import evaluation
    from tests.learning.toy import NaiveAwareStudent

    bench = ToyBenchmark()
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    real = evaluation.evaluate

    async def evaluate(*a, **k):
        return await real(*a, **{**k, "student": NaiveAwareStudent()})

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    assert runner.invoke(app, ["init"]).exit_code == 0
    return runner.invoke(
        app,
        ["bench", "run", "--benchmark", "toy", "--baseline", "naive", *extra],
        env={"COLUMNS": "200"},
    )


def test_bench_run_against_the_naive_baseline_prints_both_and_the_paired_difference(
    home, settings, monkeypatch
):
    # NaiveAwareStudent: the spec passes tone only, the naive loop math only (4 tasks each).
    res = _bench_with_baseline(monkeypatch)
    assert res.exit_code == 0, res.output
    rows = {
        line.split()[1]: line.split()[2:]
        for line in res.output.splitlines()
        if line.startswith("│") and line.split()[1] in ("math", "recall", "tone", "all")
    }
    cells = {cat: [c for c in row if c != "│"] for cat, row in rows.items()}
    #                  n    spec     naive    diff      95% interval (all equal: zero width)
    assert cells["math"] == ["4", "0.000", "1.000", "-1.000", "[-1.000,", "-1.000]"]
    assert cells["recall"] == ["4", "0.000", "0.000", "+0.000", "[+0.000,", "+0.000]"]
    assert cells["tone"] == ["4", "1.000", "0.000", "+1.000", "[+1.000,", "+1.000]"]
    # all: differences 4 x -1, 4 x 0, 4 x +1: 0 +/- t(0.975, 11) * sqrt(8/11) / sqrt(12)
    assert cells["all"] == ["12", "0.333", "0.333", "+0.000", "[-0.542,", "+0.542]"]
    assert "vs the naive loop" in res.output and "paired t" in res.output
    assert "naive: s/query" in res.output and "new runs 12" in res.output
    again = _bench_with_baseline(monkeypatch)  # both sides cached, under their own keys
    assert again.exit_code == 0 and again.output.count("new runs 0 (the rest cached)") == 2
    from homespun.stores.traces import TraceStore

    sources = {t.source for t in TraceStore(settings.traces_db).list(limit=100)}
    assert sources == {"eval:toy", "baseline:naive:toy"}


def test_bench_run_refuses_an_unknown_baseline_in_one_line(home, settings):
    res = runner.invoke(app, ["bench", "run", "--baseline", "clever"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "clever" in res.output and "naive" in res.output


@pytest.mark.slow
def test_bench_run_against_the_naive_baseline_on_the_embedded_model(home, settings, model_path):
    """The real engine, both loops, two starter tasks per category: the table is printed
    and every naive run left a trace the engine filled (constrained decoding included)."""
    assert runner.invoke(app, ["init"]).exit_code == 0
    res = runner.invoke(
        app,
        ["bench", "run", "--benchmark", "starter", "--limit", "2", "--baseline", "naive"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "vs the naive loop" in res.output and "95% interval" in res.output
    assert "arithmetic" in res.output and "all" in res.output
    from homespun.stores.traces import TraceStore

    traces = TraceStore(settings.traces_db).list(limit=500)
    naive = [t for t in traces if t.source == "baseline:naive:starter"]
    spec_runs = [t for t in traces if t.source == "eval:starter"]
    assert naive and len(naive) == len(spec_runs)
    assert all(t.status in ("ok", "error") and t.stop_reason is not None for t in naive)
    assert all(t.loop == "naive" and t.model_calls > 0 and t.prompt_tokens > 0 for t in naive)


@pytest.mark.slow
def test_agentdojo_banking_random_two_sessions_on_the_embedded_model(home, settings, model_path):
    runner.invoke(app, ["init"])
    # A small subsample for CI, and no human in the loop: every op auto-tier.
    _commit_spec(
        settings, max_proposals_per_session=1, tier_overrides={op: "auto" for op in OP_NAMES}
    )
    res = runner.invoke(
        app,
        [
            "learning",
            "run",
            "--benchmark",
            "agentdojo:banking",
            "--proposer",
            "random",
            "--sessions",
            "2",
            "--limit",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    store = LearningStore(settings.learning_db)
    sessions = store.sessions()
    assert len(sessions) == 2
    assert all(s.status == "done" and s.benchmark == "agentdojo:banking" for s in sessions)
    assert all(s.gate_score_before is not None for s in sessions)
    assert all(store.proposals(s.id) for s in sessions)  # each planned and gated something
    # every task run left a trace from the real engine
    from homespun.stores.traces import TraceStore

    traces = TraceStore(settings.traces_db).list(limit=500)
    assert traces and all(t.source == "eval:agentdojo:banking" for t in traces)
    assert any(t.model_calls > 0 and t.prompt_tokens > 0 for t in traces)


def _traces(settings, n: int, high: int) -> None:
    from homespun.stores.traces import TraceStore

    store = TraceStore(settings.traces_db)
    for i in range(n):
        t = store.start(
            query=f"question number {i}?",
            spec_hash="h",
            thread_id="t",
            loop="react",
            model="m",
            backend="embedded",
        )
        t.status, t.final_answer = "ok", "answer"
        store.finish(t)
        if i < high:
            store.set_feedback(t.id, 1.0)


def test_personal_cold_start_rules(home, settings):
    import json

    runner.invoke(app, ["init"])
    _traces(settings, 5, 5)
    res = runner.invoke(app, ["learning", "run", "--benchmark", "personal"])
    assert res.exit_code == 1 and "Not enough traces yet: 5 of 20" in res.output

    _traces(settings, 20, 3)  # 25 traces, 8 high-feedback: diagnosis only
    bench_dir = settings.benchmarks_dir
    bench_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        {
            "id": f"p-{i}",
            "query": f"question number {i}?",
            "category": "general",
            "gold": "42",
            "must_contain": ["42"],
            "source_trace": "x",
        }
        for i in range(4)
    ]
    (bench_dir / "personal_v1.json").write_text(
        json.dumps(
            {"version": 1, "created_at": 0, "teacher": "t", "min_feedback": 0.7, "tasks": tasks}
        )
    )
    import asyncio

    from homespun.engines.testing import ScriptedChatModel

    result = asyncio.run(
        search_loop.run_search(
            settings,
            benchmark="personal",
            proposer="random",
            student=lambda spec: ScriptedChatModel(script=["no idea"] * 20),
        )
    )
    assert result.stopped_because == "diagnosis only (cold start)"
    store = LearningStore(settings.learning_db)
    session = store.session(result.sessions[0])
    assert session.status == "done" and store.proposals(session.id) == []
    assert (settings.sessions_dir / session.id / "diagnosis.md").exists()
