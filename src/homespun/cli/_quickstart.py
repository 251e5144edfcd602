"""`homespun quickstart`: the first thing a newcomer runs, offline, on the embedded model."""

from __future__ import annotations

import time

from rich.rule import Rule

from homespun.home import init_home

from . import _render
from ._common import console, current_spec, fail, run_async, settings

QUESTIONS = (
    "What is 37 * 41? Use the calculator.",
    "Remember that my sister's birthday is on May 3.",
)


def run_quickstart(search: bool = True) -> None:
    from homespun.engines.catalog import ModelNotAvailable, pull_model, resolve_model_path
    from homespun.graphs.runner import run_assistant

    st = settings()
    started = time.perf_counter()
    console.print(Rule("homespun quickstart"))
    console.print(f"Home: [bold]{st.home}[/]  (set HOMESPUN_HOME to use another folder)")

    # 1. A spec. An existing one is used as it is: the quickstart never edits your spec.
    result = init_home(st)
    console.print(("Created" if result.created_spec else "Using") + f" spec {result.spec_path}")
    spec = current_spec(st)

    # 2. The model, if the spec runs one locally from the catalog.
    if spec.engine.backend == "embedded":
        try:
            path = resolve_model_path(spec.intelligence.model, st.models_path)
            console.print(f"Model: {path.name} (already pulled)")
        except ModelNotAvailable:
            console.print(f"Pulling model [bold]{spec.intelligence.model}[/] (once)…")
            try:
                path = pull_model(spec.intelligence.model, st.models_path)
            except Exception as exc:  # network, hash mismatch: say it and stop
                fail(f"could not pull {spec.intelligence.model}: {exc}")
        console.print(
            f"Engine: embedded llama.cpp on loopback, tool calls as {spec.engine.tool_call_format}"
        )

    # 3. Questions that need MCP tools, in one event loop: the engine's HTTP client is
    # bound to the loop it was first used on.
    async def ask_all() -> list:
        traces = []
        for question in QUESTIONS:
            console.print(Rule(f"ask: {question}"))
            with console.status("the assistant is working…"):
                res = await run_assistant(spec, st, question, source="quickstart")
            for part in _render.trace_view(res.trace):
                console.print(part)
            traces.append(res.trace)
        return traces

    traces = run_async(ask_all())

    # 4. What happened, honestly.
    console.print(Rule("summary"))
    mcp_calls = sum(len(t.tool_calls) for t in traces)
    ok = sum(t.status == "ok" for t in traces)
    console.print(
        f"{ok}/{len(traces)} runs finished, {mcp_calls} tool call(s) went through "
        f"MCP, in {time.perf_counter() - started:.1f} s."
    )
    if spec.intelligence.model == "smollm2-135m":
        console.print(
            "[dim]The default model is tiny (135M parameters): it calls tools "
            "reliably under constrained decoding but often gets facts wrong. That "
            "is the gap spec search is for.[/]"
        )
    if search:
        _search_demo(st, spec)
    console.print(
        "Next: [bold]homespun chat[/] · [bold]homespun traces list[/] · "
        "[bold]homespun learning run[/] · [bold]homespun spec show[/]"
    )


def _search_demo(st, spec) -> None:
    """A short spec-search session on the starter benchmark, on a scratch copy of the spec
    (the quickstart never edits your own spec)."""
    from homespun.graphs.search_loop import run_search
    from homespun.learning.benchmarks.starter import SINGLE_TOOL_CATEGORIES, StarterBenchmark
    from homespun.spec import Settings, save_spec
    from homespun.spec.models import OP_NAMES
    from homespun.stores.checkpoints import CheckpointRepo

    from ._learning import EventPrinter, _errors, _limited, _test_change

    console.print(Rule("spec search (demo)"))
    demo = Settings(home=st.home / "quickstart-search", models_dir=st.models_path)
    init_home(demo)
    demo_spec = spec.model_copy(deep=True)
    demo_spec.tools.servers = [s for s in demo_spec.tools.servers if s.kind == "builtin"]
    demo_spec.learning.tier_overrides = {op: "auto" for op in OP_NAMES}
    demo_spec.learning.budgets.max_proposals_per_session = 2
    save_spec(demo_spec, demo.spec_path)
    repo = CheckpointRepo(demo.home, demo.spec_path)
    if not repo.file_matches_head():
        repo.repo.index.add([demo.spec_path.name])
        repo.repo.index.commit("quickstart demo settings")
    teacher = spec.learning.teacher
    console.print(
        f"On a scratch copy of your spec in {demo.home}: every edit tier set to auto, "
        "2 proposals, 4 tasks in each of the starter benchmark's single-tool categories, "
        "split into search, held-out gate and untouched test sets. "
        + (
            "Teacher: " + teacher
            if teacher
            else "No teacher is configured, so this uses the rule-based diagnoser and the "
            "template-random proposer."
        )
    )
    # The single-tool categories only, 20 tasks: the whole benchmark would take far longer
    # than the few minutes a first run should.
    quick = [t for t in StarterBenchmark().tasks() if t.category in SINGLE_TOOL_CATEGORIES]
    tasks = _limited(quick, 4)
    try:
        result = run_async(
            run_search(
                demo,
                benchmark="starter",
                proposer=spec.learning.proposer if teacher else "random",
                sessions=1,
                tasks=tasks,
                on_event=EventPrinter(),
            )
        )
    except _errors() as exc:  # a teacher not pulled, or one that timed out: one line
        fail(str(exc.args[0]) if exc.args else str(exc))
    from homespun.stores.learning import LearningStore

    store = LearningStore(demo.learning_db)
    session = store.session(result.sessions[-1])
    accepted = store.proposals(session.id, status="accepted")
    before, after = session.gate_score_before, session.gate_score_after
    test = _test_change(session.test_score_before, session.test_score_after, session.test_tasks)
    if accepted:
        console.print(
            f"[green]{len(accepted)} edit(s) accepted[/]: held-out accuracy "
            f"{before:.3f} → {after:.3f}, test accuracy {test} (tasks no decision saw: the "
            f"number that says whether it helped); see `HOMESPUN_HOME={demo.home} homespun "
            f"learning show {session.id}`."
        )
    else:
        console.print(
            f"This session found no edit that passed the gate (held-out accuracy "
            f"stays {before if before is not None else 0:.3f}, test accuracy {test}); "
            "rejected edits left nothing on disk." + _why_nothing_can_pass(demo_spec, tasks)
        )


def _why_nothing_can_pass(spec, tasks) -> str:
    """Why the demo accepted nothing, when its gate could not have; else that later sessions
    try other edits.

    The paired gate needs `min_gate_tasks(alpha)` gate tasks in a cluster; the demo's few tasks
    per category give fewer, and a user should not be told that a later session of the same
    demo may do better."""
    from homespun.learning.gate import min_gate_tasks, split_three

    gate = spec.learning.gate
    if gate.rule != "paired":
        return " Later sessions try other edits."
    split = split_three(
        tasks, seed=gate.seed, benchmark="starter", test_fraction=gate.test_fraction
    )
    per_category: dict[str, int] = {}
    for task in split.gate:
        per_category[task.category] = per_category.get(task.category, 0) + 1
    needed = min_gate_tasks(gate.alpha)
    most = max(per_category.values(), default=0)
    if most >= needed:
        return " Later sessions try other edits."
    return (
        f" With at most {most} gate task(s) per cluster here, the paired gate cannot accept any "
        f"edit (it needs {needed} at alpha {gate.alpha}); `homespun learning run` searches the "
        "whole starter benchmark."
    )
