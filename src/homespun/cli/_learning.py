"""`homespun learning ...` and `homespun bench run`: spec search from the command line."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ._common import console, current_spec, err_console, fail, run_async, settings

learning_app = typer.Typer(
    help="Spec search: diagnose, propose, gate, commit, roll back.", no_args_is_help=True
)
benchmark_app = typer.Typer(help="The benchmarks a search runs on.", no_args_is_help=True)
learning_app.add_typer(benchmark_app, name="benchmark")
bench_app = typer.Typer(help="Evaluate a spec on a benchmark.", no_args_is_help=True)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _change(before: float | None, after: float | None) -> str:
    return f"{_score(before)} → {_score(after)}"


def _test_change(before: float | None, after: float | None, tasks: int | None) -> str:
    """Test-split accuracy before → after; 'not measured' for a session without a test
    split, '—' for one recorded before sessions had one."""
    if tasks == 0:
        return "not measured"
    if tasks is None and before is None and after is None:
        return "—"
    return _change(before, after)


def _why_no_test(test_fraction: float) -> str:
    if test_fraction == 0:
        return "learning.gate.test_fraction = 0"
    return f"no category has enough tasks to set any aside at test_fraction {test_fraction:g}"


class EventPrinter:
    """Turns search events into progress bars and tables."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.phase = ""
        self.teacher_calls = 0
        self.waiting: Progress | None = None  # the teacher call in progress, on a terminal

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"on_{event}", None)
        if handler:
            handler(**data)

    def on_session_start(self, session_id: str, benchmark: str, proposer: str, teacher: str):
        who = teacher or "none: rule-based diagnoser"
        console.rule(f"session {session_id}")
        console.print(f"benchmark {benchmark} · proposer {proposer} · teacher {who}")
        if not teacher:
            console.print(
                "[dim]No teacher configured: diagnosis uses the rule-based "
                "diagnoser; proposals come from the "
                f"{'template-random' if proposer == 'random' else proposer} "
                "proposer.[/]"
            )

    def on_phase(self, name: str, **data: Any):
        self.phase = name
        if name == "diagnose":
            test = (
                f"test: {data['test_tasks']} untouched tasks"
                if data["test_tasks"]
                else f"test accuracy not measured: {_why_no_test(data['test_fraction'])}"
            )
            console.print(
                f"[bold]diagnose[/] on {data['search_tasks']} search tasks "
                f"(gate: {data['gate_tasks']} held-out tasks; {test})"
            )
        elif name == "plan":
            console.print(f"[bold]plan[/] with the {data['proposer']} proposer")
        elif name == "execute":
            from homespun.spec.edits import describe_proposal

            p = data["proposal"]
            console.print(
                f"[bold]execute[/] {p.id} → {p.target_cluster} [{data['tier']}]: "
                f"{escape(describe_proposal(p))}"
            )

    def on_teacher_call(self, state: str, seconds: float = 0.0, ok: bool = True):
        """A local teacher's call can take minutes: on a terminal a spinner counts its
        seconds; elsewhere (a log, a pipe) a plain line when it starts and when it ends."""
        if state == "start":
            self.teacher_calls += 1
            label = f"teacher call {self.teacher_calls} ({self.phase or 'session'})"
            if err_console.is_terminal and self.progress is None:
                self.waiting = Progress(
                    SpinnerColumn(),
                    TextColumn("  {task.description}"),
                    TimeElapsedColumn(),
                    console=err_console,
                    transient=True,
                )
                self.waiting.start()
                self.waiting.add_task(label, total=None)
            elif not err_console.is_terminal:
                console.print(f"  {label}…", highlight=False)
            return
        if self.waiting is not None:
            self.waiting.stop()
            self.waiting = None
        if not err_console.is_terminal:
            console.print(
                f"  teacher call {self.teacher_calls} {'done' if ok else 'failed'} "
                f"after {seconds:.1f} s",
                highlight=False,
            )

    def on_evaluate_start(self, label: str, tasks: int):
        self.progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.progress.start()
        self.task_id = self.progress.add_task(label, total=tasks)

    def on_task_done(self, label: str, outcome: Any):
        if self.progress is not None:
            self.progress.advance(self.task_id)

    def on_evaluate_done(self, label: str, accuracy: float, runs: int):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        cached = "" if runs else " (all cached)"
        console.print(f"  {label}: accuracy {accuracy:.3f}, {runs} new run(s){cached}")

    def on_diagnosis(self, diagnosis: Any):
        table = Table(title=f"failure clusters ({diagnosis.source})")
        for col in (
            "cluster",
            "categories",
            "signature",
            "student fail",
            "teacher ok",
            "skill gap",
        ):
            table.add_column(col, overflow="fold")
        for c in diagnosis.clusters:
            table.add_row(
                c.id,
                ", ".join(c.categories),
                c.signature,
                f"{c.student_failure_rate:.2f}",
                "—" if c.teacher_success_rate is None else f"{c.teacher_success_rate:.2f}",
                c.skill_gap,
            )
        console.print(table)

    def on_plan(self, proposals: list, tiers: list):
        console.print(
            f"  {len(proposals)} proposal(s): "
            + ", ".join(
                f"{p.id}→{p.target_cluster}[{t}]" for p, t in zip(proposals, tiers, strict=True)
            )
        )

    def on_gate(self, proposal: Any, decision: Any):
        table = Table(
            title=f"gate for {proposal.id} (target {proposal.target_cluster}, eps {decision.eps})"
        )
        for col in ("cluster", "G(S)", "G(S')", "Δ"):
            table.add_column(col, justify="right" if col != "cluster" else "left")
        for c in decision.before:
            b, a = decision.before[c], decision.after.get(c)
            delta = "" if b is None or a is None else f"{a - b:+.3f}"
            name = f"[bold]{c}[/]" if c == proposal.target_cluster else c
            table.add_row(
                name, "—" if b is None else f"{b:.3f}", "—" if a is None else f"{a:.3f}", delta
            )
        console.print(table)
        verdict = "[green]ACCEPT[/]" if decision.accepted else "[red]REJECT[/]"
        console.print(f"  {verdict}: {escape(decision.reason)}")

    def on_accepted(self, proposal: Any, sha: str):
        console.print(f"  committed {sha[:10]} (Edit-ID {proposal.id})")

    def on_rejected(self, proposal: Any, reason: str):
        console.print("  nothing changed on disk")

    def on_review(self, proposal: Any, tier: str):
        pass

    def on_note(self, text: str):
        console.print(f"[yellow]note:[/] {escape(text)}")

    def on_session_done(
        self,
        session_id: str,
        before: float | None,
        after: float | None,
        test_before: float | None = None,
        test_after: float | None = None,
        test_tasks: int = 0,
    ):
        console.print(
            f"[bold]session {session_id} done[/]: gate accuracy {_change(before, after)} · "
            f"test accuracy {_test_change(test_before, test_after, test_tasks)}"
            + (f" ({test_tasks} untouched tasks)" if test_tasks else "")
        )


def _run_scores(session_ids: list[str]) -> str:
    """Gate and test accuracy from the first session's start to the last one's end."""
    from homespun.stores.learning import LearningStore

    store = LearningStore(settings().learning_db)
    first, last = store.session(session_ids[0]), store.session(session_ids[-1])
    test = _test_change(first.test_score_before, last.test_score_after, first.test_tasks)
    if first.test_tasks:
        test += f" on {first.test_tasks} tasks that no diagnosis, proposer or gate saw"
    elif first.test_tasks == 0:
        test += " (no test split)"
    sessions = f" over {len(session_ids)} sessions" if len(session_ids) > 1 else ""
    return (
        f"gate accuracy {_change(first.gate_score_before, last.gate_score_after)} · "
        f"test accuracy {test}{sessions}"
    )


def _report(result: Any) -> None:
    if result.sessions:
        console.print(f"[bold]result[/]: {_run_scores(result.sessions)}")
    if result.paused_proposal:
        console.print(
            f"[yellow]paused:[/] proposal {result.paused_proposal} needs review. "
            f"Approve with `homespun learning approve {result.paused_proposal}` (it "
            f"still has to pass the gate) or `homespun learning reject "
            f"{result.paused_proposal} --reason ...`."
        )
    elif result.stopped_because:
        console.print(f"[dim]stopped: {result.stopped_because}[/]")


def _errors():
    from homespun.engines.cost import BudgetExceeded
    from homespun.engines.providers import TeacherConfigError
    from homespun.graphs.search import TeacherFailed
    from homespun.graphs.search_loop import SearchSetupError
    from homespun.learning.benchmarks.personal import NoPersonalBenchmark, PersonalBenchmarkError
    from homespun.stores.checkpoints import CheckpointError, DirtySpec

    return (
        DirtySpec,
        CheckpointError,
        SearchSetupError,
        BudgetExceeded,
        KeyError,
        PersonalBenchmarkError,
        NoPersonalBenchmark,
        TeacherConfigError,
        TeacherFailed,
    )


@learning_app.command("init")
def learning_init():
    """Create learning/ under HOMESPUN_HOME and the spec's checkpoint git repository."""
    from homespun.home import init_home

    st = settings()
    init_home(st)
    st.sessions_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"learning store: {st.home / 'learning'}; checkpoint repo: {st.home / '.git'}")


@learning_app.command("run")
def learning_run(
    benchmark: Annotated[
        str,
        typer.Option(
            help="starter | personal | agentdojo:SUITE | bfcl:CATEGORY (bfcl:simple, bfcl:all)"
        ),
    ] = "starter",
    proposer: Annotated[
        str | None, typer.Option(help="llm | random | evolutionary (default: learning.proposer)")
    ] = None,
    sessions: Annotated[int, typer.Option(min=1, help="Sessions to run at most.")] = 1,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted session first.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Task runs in parallel.")] = 1,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N tasks of each category (quick runs).")
    ] = None,
):
    """Run spec-search sessions (paper Algorithm 1)."""
    from homespun.graphs.search_loop import get_benchmark, run_search

    st = settings()
    current_spec(st)
    tasks = _limited(get_benchmark(benchmark, st).tasks(), limit) if limit else None
    try:
        result = run_async(
            run_search(
                st,
                benchmark=benchmark,
                proposer=proposer,
                sessions=sessions,
                resume=resume,
                on_event=EventPrinter(),
                concurrency=concurrency,
                tasks=tasks,
            )
        )
    except _errors() as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    _report(result)


def _limited(tasks: list, limit: int) -> list:
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        if seen.get(t.category, 0) < limit:
            out.append(t)
            seen[t.category] = seen.get(t.category, 0) + 1
    return out


@learning_app.command("history")
def learning_history(limit: Annotated[int, typer.Option()] = 20):
    """Past sessions, newest first."""
    from homespun.stores.learning import LearningStore

    store = LearningStore(settings().learning_db)
    table = Table(
        title="spec-search sessions",
        caption="accuracy before → after: gate on the held-out tasks the edits were chosen "
        "on, test on the untouched tasks that no diagnosis, proposer or gate saw",
    )
    table.add_column("session", no_wrap=True)
    table.add_column("started", no_wrap=True)
    for col in ("status", "benchmark", "proposer"):
        table.add_column(col, overflow="fold")
    for col in ("gate", "test", "accepted", "cost $"):
        table.add_column(col, justify="right")
    for s in store.sessions(limit):
        accepted = len(store.proposals(s.id, status="accepted"))
        total = len(store.proposals(s.id))
        table.add_row(
            s.id,
            dt.datetime.fromtimestamp(s.started_at).strftime("%m-%d %H:%M"),
            s.status,
            s.benchmark,
            s.proposer,
            _change(s.gate_score_before, s.gate_score_after),
            _test_change(s.test_score_before, s.test_score_after, s.test_tasks),
            f"{accepted}/{total}",
            f"{s.cost_usd:.4f}",
        )
    console.print(table)


@learning_app.command("show")
def learning_show(session_id: str):
    """One session: its proposals, gate decisions and per-cluster scores."""
    from homespun.stores.learning import LearningStore

    st = settings()
    store = LearningStore(st.learning_db)
    try:
        s = store.session(session_id)
    except KeyError as exc:
        fail(str(exc.args[0]))
    calls, seconds = store.teacher_usage(s.id)
    usage = f" ({calls} teacher call(s), {seconds:.0f} s)" if calls else ""
    console.print(
        f"[bold]session {s.id}[/] · {s.status} · {s.benchmark} · proposer "
        f"{s.proposer} · teacher {s.teacher or 'none'} · cost ${s.cost_usd:.4f}{usage}"
    )
    test = _test_change(s.test_score_before, s.test_score_after, s.test_tasks)
    console.print(
        f"gate accuracy {_change(s.gate_score_before, s.gate_score_after)} · test accuracy "
        f"{test}" + (f" ({s.test_tasks} untouched tasks)" if s.test_tasks else "")
    )
    if s.note:
        console.print(f"note: {s.note}")
    folder = st.sessions_dir / s.id
    for name in ("diagnosis.md", "plan.json"):
        if (folder / name).exists():
            console.print(f"{name}: {folder / name}")
    for p in store.proposals(s.id):
        console.print(
            f"\n[bold]{p['id']}[/] → {p['target']} [{p['tier']}] {p['status']}: "
            f"{escape(p['reason'] or '')}"
        )
        console.print(f"  ops: {escape(p['ops'])}")
        scores = store.cluster_scores(p["id"])
        if scores:
            console.print(
                "  "
                + ", ".join(
                    f"{r['cluster']} {r['before'] if r['before'] is not None else '—'}→"
                    f"{r['after'] if r['after'] is not None else '—'}"
                    for r in scores
                )
            )
        if p["commit_sha"]:
            console.print(f"  commit {p['commit_sha'][:10]}")


@learning_app.command("review")
def learning_review():
    """Proposals waiting for your decision."""
    from homespun.stores.learning import LearningStore

    store = LearningStore(settings().learning_db)
    pending = store.proposals(status="pending_review")
    if not pending:
        console.print("Nothing waits for review.")
        return
    for p in pending:
        console.print(
            f"[bold]{p['id']}[/] (session {p['session_id']}) → {p['target']} "
            f"[{p['tier']}]\n  ops: {escape(p['ops'])}\n  why: "
            f"{escape(p['rationale'] or '')}"
        )
    console.print(
        "Approve with `homespun learning approve ID` (still gated) or reject with "
        "`homespun learning reject ID --reason ...`."
    )


def _decide(proposal_id: str, approve: bool, reason: str) -> None:
    from homespun.graphs.search_loop import decide_review

    st = settings()
    try:
        result = run_async(
            decide_review(st, proposal_id, approve=approve, reason=reason, on_event=EventPrinter())
        )
    except _errors() as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    _report(result)


@learning_app.command("approve")
def learning_approve(proposal_id: str):
    """Approve a paused proposal; it still has to pass the gate."""
    _decide(proposal_id, True, "")


@learning_app.command("reject")
def learning_reject(
    proposal_id: str, reason: Annotated[str, typer.Option(help="Why (kept in history).")]
):
    """Reject a paused proposal; nothing changes on disk."""
    _decide(proposal_id, False, reason)


@learning_app.command("rollback")
def learning_rollback(
    target: Annotated[str | None, typer.Argument(help="Edit id, session id or commit.")] = None,
    last: Annotated[bool, typer.Option("--last", help="The newest accepted edit.")] = False,
):
    """Undo accepted edits with revert commits (history is never rewritten)."""
    from homespun.graphs.search_loop import rollback

    if not target and not last:
        fail("give an edit id, a session id or a commit, or --last")
    try:
        sha = rollback(settings(), None if last else target)
    except _errors() as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    except Exception as exc:  # git refused: say what it said
        fail(f"rollback failed: {exc}")
    console.print(f"reverted: commit {sha[:10]}; spec restored")


@benchmark_app.command("refresh")
def benchmark_refresh(
    max_tasks: Annotated[int, typer.Option(help="Newest distinct queries to keep.")] = 200,
):
    """Mine high-feedback traces into a new personal_vN.json, gold answers from the teacher."""
    from homespun.engines.cost import CostMeter
    from homespun.engines.providers import build_teacher
    from homespun.learning.benchmarks.personal import readiness, refresh_personal_benchmark
    from homespun.stores.learning import LearningStore

    st = settings()
    spec = current_spec(st)
    ready = readiness(st, spec.learning.privacy.min_feedback)
    console.print(ready.message)
    if not spec.learning.teacher:
        fail(
            "the personal benchmark's gold answers come from the teacher: set "
            "learning.teacher (e.g. 'anthropic:claude-opus-4-6' or a local "
            "'ollama:MODEL')"
        )
    store = LearningStore(st.learning_db)
    try:
        teacher = build_teacher(spec.learning.teacher, settings=st)
        meter = CostMeter.from_spec(spec.learning, spent_before_usd=store.total_cost())
        path = run_async(
            refresh_personal_benchmark(
                st,
                teacher=teacher,
                meter=meter,
                min_feedback=spec.learning.privacy.min_feedback,
                max_tasks=max_tasks,
                scrub=spec.learning.privacy.scrub_pii,
            )
        )
    except _errors() as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    console.print(f"wrote {path} (teacher cost ${meter.spent_usd:.4f})")


@benchmark_app.command("show")
def benchmark_show(
    name: Annotated[
        str,
        typer.Argument(help="starter | personal | personal_vN | agentdojo:SUITE | bfcl:CATEGORY"),
    ] = "starter",
):
    """The tasks of a benchmark and how a session splits them into search, held-out gate and
    untouched test sets."""
    from homespun.graphs.search_loop import SearchSetupError, get_benchmark
    from homespun.learning.gate import split_three
    from homespun.spec.models import GateSpec

    st = settings()
    gate = current_spec(st).learning.gate if st.spec_path.exists() else GateSpec()
    try:
        bench = get_benchmark(name, st)
        tasks = bench.tasks()
    except (SearchSetupError, RuntimeError, FileNotFoundError) as exc:
        fail(str(exc))
    split = split_three(
        tasks, seed=gate.seed, benchmark=bench.name, test_fraction=gate.test_fraction
    )
    set_of = {t.id: which for which, part in zip(split._fields, split, strict=True) for t in part}
    table = Table(
        title=f"{bench.name} ({bench.version}): {len(tasks)} tasks, "
        f"{len(split.search)} search / {len(split.gate)} held-out / {len(split.test)} test"
    )
    for col in ("task", "category", "set", "query"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        table.add_row(t.id, t.category, set_of[t.id], t.query)
    console.print(table)


class Baseline(StrEnum):
    """The baselines `bench run --baseline` can compare a spec with."""

    naive = "naive"


@bench_app.command("run")
def bench_run(
    spec_file: Annotated[
        Path | None, typer.Argument(help="Spec (default: the current one).")
    ] = None,
    benchmark: Annotated[
        str,
        typer.Option(help="starter | agentdojo:SUITE | bfcl:CATEGORY (e.g. bfcl:simple, bfcl:all)"),
    ] = "starter",
    limit: Annotated[int | None, typer.Option(help="First N tasks per category.")] = None,
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    repeats: Annotated[int, typer.Option(min=1)] = 1,
    baseline: Annotated[
        Baseline | None,
        typer.Option(
            help="Also run the tasks through a baseline loop with the same model, tools and "
            "turn cap, and print both side by side with the difference and its 95% interval. "
            "naive: full argument schemas in the system prompt, one JSON object per step, "
            "results fed back as user messages."
        ),
    ] = None,
):
    """Evaluate a spec on a benchmark: accuracy, s/query, J/query and $/query per category
    (with --baseline: the spec against the baseline, per category)."""
    from homespun.engines.telemetry import (
        electricity_usd_per_kwh,
        measures_local_energy,
        new_energy_meter,
        per_query,
    )
    from homespun.graphs.search_loop import SearchSetupError, get_benchmark
    from homespun.learning.evaluation import evaluate
    from homespun.spec import SpecError, load_spec
    from homespun.stores.eval_cache import EvalCache

    from ._render import fmt_cost, fmt_energy

    st = settings()
    try:
        spec = load_spec(spec_file) if spec_file else current_spec(st)
        bench = get_benchmark(benchmark, st)
        usd_per_kwh = electricity_usd_per_kwh()
    except (SpecError, SearchSetupError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    tasks = bench.tasks()
    if limit:
        tasks = _limited(tasks, limit)
    if baseline is not None:
        _bench_against_baseline(
            spec, st, bench, tasks, repeats=repeats, concurrency=concurrency, loop=baseline.value
        )
        return
    local = measures_local_energy(spec.engine.backend, spec.engine.base_url)
    # Overlapping runs cannot split a device counter between them: the batch is measured too.
    batch = new_energy_meter() if local else None
    printer = EventPrinter()
    printer.on_evaluate_start(f"{bench.name} · spec {spec.content_hash()}", len(tasks) * repeats)
    if batch:
        batch.start()
    result = run_async(
        evaluate(
            spec,
            st,
            bench,
            tasks,
            repeats=repeats,
            concurrency=concurrency,
            cache=EvalCache(st.learning_db),
            on_outcome=lambda o: printer.on_task_done("", o),
        )
    )
    batch_j = batch.stop() if batch else None
    printer.progress.stop() if printer.progress else None

    def row(outcomes, batch_energy_j=None) -> list[str]:
        joules, dollars = per_query(
            energy_j=[o.energy_j for o in outcomes],
            cost_usd=[o.cost_usd for o in outcomes],
            fresh=[not o.cached for o in outcomes],
            batch_energy_j=batch_energy_j,
            local=local,
            usd_per_kwh=usd_per_kwh,
        )
        n = max(len(outcomes), 1)
        acc = sum(o.score for o in outcomes) / n
        return [
            f"{acc:.3f}",
            str(len(outcomes)),
            f"{sum(o.latency_s for o in outcomes) / n:.2f}",
            fmt_energy(joules),
            fmt_cost(dollars),
        ]

    table = Table(title=f"{bench.name}: spec {result.spec_hash}")
    for col in ("category", "accuracy", "tasks", "s/query", "J/query", "$/query"):
        table.add_column(col, justify="left" if col == "category" else "right")
    by_category: dict[str, list] = {}
    for o in result.outcomes:
        by_category.setdefault(o.category, []).append(o)
    for cat in sorted(by_category):
        table.add_row(cat, *row(by_category[cat]))
    table.add_row("[bold]all[/]", *[f"[bold]{v}[/]" for v in row(result.outcomes, batch_j)])
    console.print(table)
    tokens = sum(o.prompt_tokens + o.completion_tokens for o in result.outcomes)
    n = max(len(result.outcomes), 1)
    source = batch.source if batch else None
    if not local:
        energy_note = "energy: not measured (the model runs off this machine)"
    elif source is None:
        energy_note = "energy: not measured (no NVIDIA, AMD or RAPL energy counter readable)"
    else:
        energy_note = f"energy: {source} counter, ${usd_per_kwh:g}/kWh"
    console.print(
        f"tokens/query {tokens / n:.0f} · new runs {result.runs} (the rest cached) · {energy_note}"
    )
    if source is not None and concurrency > 1:
        console.print(
            f"[dim]With --concurrency {concurrency} runs overlap on the counter: "
            "energy is measured for the whole batch (the 'all' row) only.[/]"
        )


def _bench_against_baseline(
    spec: Any, st: Any, bench: Any, tasks: list, *, repeats: int, concurrency: int, loop: str
) -> None:
    """Evaluate the spec and the baseline `loop` on the same tasks; print them side by side."""
    from homespun.learning.evaluation import compare, evaluate
    from homespun.stores.eval_cache import EvalCache

    cache = EvalCache(st.learning_db)
    results = {}

    async def both() -> None:
        # One event loop for both evaluations: the OpenAI client keeps pooled connections per
        # process, and a second asyncio.run would find them bound to the closed first loop.
        for which, label in (("assistant", f"spec {spec.content_hash()}"), (loop, f"{loop} loop")):
            printer = EventPrinter()
            printer.on_evaluate_start(f"{bench.name} · {label}", len(tasks) * repeats)
            try:
                results[which] = await evaluate(
                    spec,
                    st,
                    bench,
                    tasks,
                    repeats=repeats,
                    concurrency=concurrency,
                    cache=cache,
                    on_outcome=lambda o, p=printer: p.on_task_done("", o),
                    loop=which,
                )
            finally:
                if printer.progress is not None:
                    printer.progress.stop()

    run_async(both())
    ours, theirs = results["assistant"], results[loop]
    try:
        rows = compare(ours, theirs)
    except ValueError as exc:
        fail(str(exc))
    table = Table(
        title=f"{bench.name}: spec {ours.spec_hash} vs the {loop} loop "
        f"({spec.intelligence.model}, max_turns {spec.agent.max_turns})",
        caption=f"Δ = spec − {loop}, paired by task (the same tasks under both). 95% interval: "
        "paired t on the per-task differences; approximate for few tasks, none for n < 2.",
    )
    for col in ("category", "n", "spec", loop, "Δ", "95% interval"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for r in rows:
        interval = "n/a" if r.low is None else f"[{r.low:+.3f}, {r.high:+.3f}]"
        cells = [r.category, str(r.n), f"{r.a:.3f}", f"{r.b:.3f}", f"{r.diff:+.3f}", interval]
        if r.category == "all":
            cells = [f"[bold]{c}[/]" for c in cells]
        table.add_row(*cells)
    console.print(table)
    for name, result in (("spec", ours), (loop, theirs)):
        n = max(len(result.outcomes), 1)
        tokens = sum(o.prompt_tokens + o.completion_tokens for o in result.outcomes)
        console.print(
            f"{name}: s/query {result.mean_latency():.2f} · tokens/query {tokens / n:.0f} · "
            f"new runs {result.runs} (the rest cached)"
        )
