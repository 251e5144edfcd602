"""Verbs of the `homespun` command. Each parses, calls the library, renders."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.syntax import Syntax

from homespun.spec import SpecError, diff_specs, load_spec, render_diff, render_spec

from . import _render
from ._common import console, current_spec, err_console, fail, quiet_libraries, run_async, settings

app = typer.Typer(
    help="homespun: a personal AI assistant whose whole configuration is one typed spec.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
spec_app = typer.Typer(help="Show, validate and compare specs.", no_args_is_help=True)
models_app = typer.Typer(
    help="The model catalog: list and pull local models.", no_args_is_help=True
)
traces_app = typer.Typer(help="Browse the traces every run leaves.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(models_app, name="models")
app.add_typer(traces_app, name="traces")


def _register_learning() -> None:
    from ._learning import bench_app, learning_app

    app.add_typer(learning_app, name="learning")
    app.add_typer(bench_app, name="bench")
    from ._channels import channel_app
    from ._mcp import mcp_app

    app.add_typer(mcp_app, name="mcp")
    app.add_typer(channel_app, name="channel")
    from ._doctor import doctor

    app.command()(doctor)


_register_learning()


@app.callback()
def _main() -> None:
    quiet_libraries()


# --------------------------------------------------------------------------- init


@app.command()
def init(
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec.")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="Catalog name (`homespun models list`) or a .gguf path; a catalog model gets "
            "the settings measured best for it. Default: the catalog's default model."
        ),
    ] = None,
):
    """Create HOMESPUN_HOME with a commented default spec (git-tracked)."""
    from homespun.engines.catalog import CATALOG, DEFAULT_MODEL
    from homespun.home import init_home

    st = settings()
    model = model or DEFAULT_MODEL
    if model not in CATALOG and not model.endswith(".gguf"):
        fail(
            f"--model {model!r} is neither a catalog model ({', '.join(CATALOG)}) nor a .gguf "
            "path; for a server's model id, run `homespun init` and set intelligence.model"
        )
    result = init_home(st, force=force, model=model)
    if result.created_spec:
        console.print(f"Wrote the default spec to [bold]{result.spec_path}[/]")
    else:
        console.print(
            f"Kept the existing spec at [bold]{result.spec_path}[/] (use --force to replace it)"
        )
    if result.created_repo:
        console.print(f"Checkpoint repository: {st.home / '.git'}")
    third_party = model in CATALOG and CATALOG[model].third_party
    pull = (
        f"[bold]homespun models pull {model}{' --allow-third-party' if third_party else ''}[/], "
        "then "
        if model in CATALOG
        else ""
    )
    console.print(f'Next: {pull}[bold]homespun ask "What is 37 * 41?"[/]')


# --------------------------------------------------------------------------- spec


@spec_app.command("show")
def spec_show(
    path: Annotated[
        Path | None, typer.Argument(help="Spec file (default: the current one).")
    ] = None,
):
    """Print the effective spec (every field, defaults included) and its hash."""
    st = settings()
    spec = _load_or_fail(path) if path else current_spec(st)
    console.print(Syntax(render_spec(spec), "toml", theme="ansi_dark", word_wrap=True))
    console.print(f"[dim]spec hash {spec.content_hash()}[/]")


@spec_app.command("validate")
def spec_validate(
    path: Annotated[
        Path | None, typer.Argument(help="Spec file (default: the current one).")
    ] = None,
):
    """Check a spec file; exit 1 naming each bad field. The file is never modified."""
    target = path or settings().spec_path
    spec = _load_or_fail(target)
    console.print(f"[green]valid[/] {target} (hash {spec.content_hash()})")


@spec_app.command("diff")
def spec_diff(a: Path, b: Path):
    """Field-by-field differences between two spec files."""
    console.print(render_diff(diff_specs(_load_or_fail(a), _load_or_fail(b))), highlight=False)


def _load_or_fail(path: Path):
    try:
        return load_spec(path)
    except SpecError as exc:
        fail(str(exc))


# --------------------------------------------------------------------------- models


@models_app.command("list")
def models_list():
    """The catalog, and which models are pulled."""
    from rich.table import Table

    from homespun.engines.catalog import DEFAULT_MODEL, list_models

    st = settings()
    table = Table(title=f"Models ({st.models_path})")
    for col in ("name", "size", "license", "pulled", "notes"):
        table.add_column(col)
    for model, path in list_models(st.models_path):
        notes = []
        if model.name == DEFAULT_MODEL:
            notes.append("default")
        if model.third_party:
            notes.append("third-party repackaging: opt-in")
        table.add_row(
            model.name,
            f"{model.size_bytes / 1e6:.0f} MB",
            model.license,
            "[green]yes[/]" if path else "no",
            ", ".join(notes),
        )
    console.print(table)
    console.print("[dim]Any local .gguf path also works as intelligence.model.[/]")


@models_app.command("pull")
def models_pull(
    name: str,
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
    allow_third_party: Annotated[
        bool, typer.Option("--allow-third-party", help="Allow models repackaged by third parties.")
    ] = False,
):
    """Download a catalog model (sha256-checked) into HOMESPUN_HOME/models."""
    from homespun.engines.catalog import ModelNotAvailable, pull_model

    st = settings()
    try:
        path = pull_model(name, st.models_path, force=force, allow_third_party=allow_third_party)
    except (ModelNotAvailable, RuntimeError, ValueError) as exc:
        fail(str(exc))
    console.print(f"[green]ready[/] {name}: {path}")


# --------------------------------------------------------------------------- ask / chat


def _print_result(result, show_trace: bool) -> None:
    t = result.trace
    if show_trace:
        for part in _render.trace_view(t):
            console.print(part)
    elif t.status == "ok":
        console.print(t.final_answer or "", highlight=False, markup=False)
    if t.status != "ok" and not show_trace:
        err_console.print(f"[red]run failed:[/] {escape(t.error or 'unknown error')}")
    err_console.print(
        f"[dim]trace {t.id} · {t.latency_s:.2f}s · "
        f"{len(t.tool_calls)} tool call(s) · `homespun traces show {t.id}`[/]"
    )


@app.command()
def ask(
    question: str,
    thread: Annotated[str | None, typer.Option(help="Continue this conversation thread.")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Show the full trace.")] = False,
):
    """Ask the assistant one question."""
    from homespun.graphs.runner import run_assistant

    st = settings()
    spec = current_spec(st)
    _note_unsupported(spec)
    with err_console.status("thinking…"):
        result = run_async(run_assistant(spec, st, question, thread_id=thread))
    _print_result(result, trace)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def chat(thread: Annotated[str | None, typer.Option(help="Resume this thread.")] = None):
    """Talk with the assistant; answers stream token by token. Ctrl-D or /exit ends."""
    st = settings()
    spec = current_spec(st)
    _note_unsupported(spec)
    thread_id = thread or uuid.uuid4().hex[:12]
    console.print(
        f"[dim]thread {thread_id} · {spec.agent.loop} loop · "
        f"{spec.engine.backend}: {spec.intelligence.model} · /exit to leave[/]"
    )
    run_async(_chat_loop(spec, st, thread_id))


async def _chat_loop(spec, st, thread_id: str) -> None:
    # One event loop for the whole conversation: the engine's HTTP client is bound to it.
    import asyncio

    from homespun.graphs.runner import run_assistant

    while True:
        try:
            question = (await asyncio.to_thread(console.input, "[bold cyan]you>[/] ")).strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if not question:
            continue
        if question in ("/exit", "/quit"):
            break
        console.print("[bold magenta]homespun>[/] ", end="")
        streamed: list[str] = []

        def on_token(tok: str, streamed: list[str] = streamed) -> None:
            streamed.append(tok)
            console.print(tok, end="", markup=False, highlight=False)

        result = await run_assistant(
            spec, st, question, thread_id=thread_id, on_token=on_token, source="chat"
        )
        t = result.trace
        if t.status == "ok" and not streamed:
            console.print(t.final_answer or "", end="", markup=False, highlight=False)
        console.print()
        if t.status != "ok":
            err_console.print(f"[red]run failed:[/] {escape(t.error or '')}")
        tools = ", ".join(c.name for c in t.tool_calls)
        err_console.print(f"[dim]trace {t.id}{' · tools: ' + tools if tools else ''}[/]")


def _note_unsupported(spec) -> None:
    from homespun.engines.factory import unsupported_fields

    fields = unsupported_fields(spec)
    if fields:
        err_console.print(
            f"[yellow]note:[/] backend {spec.engine.backend!r} has no "
            f"equivalent for intelligence.{', intelligence.'.join(fields)}; "
            "those fields are not sent."
        )


# --------------------------------------------------------------------------- traces


@traces_app.command("list")
def traces_list(
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    status: Annotated[str | None, typer.Option(help="ok | error | running")] = None,
):
    """Recent traces, newest first."""
    from homespun.stores.traces import TraceStore

    store = TraceStore(settings().traces_db)
    console.print(_render.traces_table(store.list(limit=limit, status=status)))


@traces_app.command("show")
def traces_show(trace_id: str):
    """One trace: query, tool calls with arguments and results, answer, tokens, latency."""
    from homespun.stores.traces import TraceStore

    store = TraceStore(settings().traces_db)
    try:
        t = store.get(trace_id)
    except KeyError as exc:
        fail(str(exc.args[0]))
    for part in _render.trace_view(t):
        console.print(part)


@app.command()
def feedback(trace_id: str, value: Annotated[str, typer.Argument(help="up | down | 0..1")]):
    """Rate an answer; high-rated traces feed the personal benchmark."""
    from homespun.stores.traces import TraceStore, parse_feedback

    try:
        score = parse_feedback(value)
        store = TraceStore(settings().traces_db)
        store.set_feedback(trace_id, score)
    except (ValueError, KeyError) as exc:
        fail(str(exc.args[0]))
    console.print(f"feedback {score:g} recorded for trace {trace_id}")


# --------------------------------------------------------------------------- quickstart


@app.command()
def quickstart(
    search: Annotated[
        bool, typer.Option(help="Finish with a short spec-search session on a scratch copy.")
    ] = True,
):
    """First run, offline: set up, pull the default model, answer with MCP tools, show the
    traces, then a short spec-search session (evaluate, diagnose, propose, gate, commit)."""
    from ._quickstart import run_quickstart

    run_quickstart(search=search)
