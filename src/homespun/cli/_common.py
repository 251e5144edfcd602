"""What every verb shares: settings, the console, loading the spec with friendly errors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from homespun.spec import Settings, Spec, SpecError, load_spec

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def settings() -> Settings:
    return Settings()


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def current_spec(st: Settings | None = None) -> Spec:
    st = st or settings()
    if not st.spec_path.exists():
        fail(f"no spec at {st.spec_path}; run `homespun init` first (or `homespun quickstart`)")
    try:
        return load_spec(st.spec_path)
    except SpecError as exc:
        fail(str(exc))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def quiet_libraries() -> None:
    # LangGraph Studio analytics and tokenizers chatter are not for our users; tool errors
    # are recorded in traces (and shown there), not logged by the MCP server to the terminal.
    import logging

    os.environ.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("fastmcp", "mcp", "httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
