"""Open the spec's MCP servers and turn their tools into LangChain tools.

Every `[[tools.servers]]` entry becomes a `ServerSource` the same way (`server_source`):
a built-in (core, or a connector: notes, calendar, feeds, email) is its FastMCP server,
created in this process; a stdio or http entry is a connection. Sessions are then opened on
the source, and only their lifetime differs between the two ways to load:

- `open_tools` (CLI, runner, benchmarks) holds one session per server for the whole run, so
  stateful servers keep their state between calls of one conversation;
- `load_tools_stateless` (LangGraph Studio, which cannot close what a graph factory opened)
  lists the tools on a session it closes, and each tool call opens a fresh one.

The spec decides which tools the model may use (`enabled`) and what it is told about each
(`descriptions`); a name in either list that the server does not offer is an error, not a
silent no-op.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.tools import BaseTool

from homespun.spec import Settings, Spec, ToolServerSpec

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ToolLoadError(RuntimeError):
    """A server could not be started, or the spec names tools it does not offer."""


@dataclass
class LoadedTools:
    tools: list[BaseTool]
    server_of: dict[str, str] = field(default_factory=dict)  # tool name -> server name
    sensitive_servers: set[str] = field(default_factory=set)

    def by_name(self) -> dict[str, BaseTool]:
        return {t.name: t for t in self.tools}


def expand_env(value: str, where: str) -> str:
    """'${NAME}' -> the environment's NAME, so secrets never live in the spec."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ToolLoadError(f"{where} refers to ${{{name}}} but {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


def connection_for(server: ToolServerSpec, index: int) -> dict[str, Any]:
    """The langchain-mcp-adapters connection dict of an external server."""
    where = f"tools.servers[{index}]"
    if server.kind == "stdio":
        conn: dict[str, Any] = {
            "transport": "stdio",
            "command": server.command,
            "args": list(server.args),
        }
        if server.env:
            conn["env"] = {k: expand_env(v, f"{where}.env.{k}") for k, v in server.env.items()}
        if server.cwd:
            conn["cwd"] = server.cwd
        return conn
    if server.kind == "http":
        conn = {"transport": "streamable_http", "url": server.url}
        if server.headers:
            conn["headers"] = {
                k: expand_env(v, f"{where}.headers.{k}") for k, v in server.headers.items()
            }
        return conn
    raise ValueError(f"{where} is built in, it has no connection")


def apply_server_spec(
    server: ToolServerSpec, index: int, offered: list[BaseTool]
) -> list[BaseTool]:
    names = {t.name for t in offered}
    where = f"tools.servers[{index}]"
    listed = ", ".join(sorted(names)) or "no tools"
    for name in server.enabled:
        if name != "*" and name not in names:
            raise ToolLoadError(
                f"{where}.enabled names {name!r}, which server {server.name!r} does not offer "
                f"(it offers: {listed})"
            )
    for name in server.disabled:
        if name not in names:
            raise ToolLoadError(
                f"{where}.disabled names {name!r}, which server {server.name!r} does not offer "
                f"(it offers: {listed})"
            )
    for name in server.descriptions:
        if name not in names:
            raise ToolLoadError(
                f"{where}.descriptions.{name}: server {server.name!r} has no tool {name!r} "
                f"(it offers: {listed})"
            )
    chosen = []
    for tool in offered:
        if not server.allows(tool.name):
            continue
        description = server.descriptions.get(tool.name)
        metadata = {**(tool.metadata or {}), "mcp_server": server.name}
        update: dict[str, Any] = {"metadata": metadata}
        if description:
            update["description"] = description
        chosen.append(tool.model_copy(update=update))
    return chosen


@dataclass
class ServerSource:
    """One `[[tools.servers]]` entry, ready to open MCP sessions on: the in-process FastMCP
    server of a built-in, or the langchain-mcp-adapters connection of an external server."""

    server: ToolServerSpec
    index: int
    target: Any  # a fastmcp.FastMCP (kind 'builtin') or a connection dict (stdio, http)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        """An initialized MCP ClientSession, closed on exit."""
        if isinstance(self.target, dict):
            from langchain_mcp_adapters.client import MultiServerMCPClient

            client = MultiServerMCPClient({self.server.name: self.target})
            async with client.session(self.server.name) as session:
                yield session
        else:
            import fastmcp

            async with fastmcp.Client(self.target) as client:
                yield client.session


def server_source(
    server: ToolServerSpec, index: int, spec: Spec, settings: Settings
) -> ServerSource:
    """The source of `spec.tools.servers[index]`. Blocking (a built-in server opens its files
    and databases here): async callers run it in a thread."""
    if server.kind != "builtin":
        return ServerSource(server, index, connection_for(server, index))
    settings.workspace.mkdir(parents=True, exist_ok=True)
    if server.builtin == "core":
        from .core import create_core_server

        target = create_core_server(
            workspace=settings.workspace,
            memory_db=settings.memory_db,
            memory_top_k=spec.memory.top_k,
        )
    else:
        from homespun.connectors.registry import create_connector_server

        target = create_connector_server(server, index, settings)
    return ServerSource(server, index, target)


class _SessionPerCall:
    """A tool-call interceptor that runs each call on a fresh session of `source` (the
    session the tools were listed on is closed by then, so `handler` is never used)."""

    def __init__(self, source: ServerSource):
        self.source = source

    async def __call__(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        result, failure = None, None
        async with self.source.session() as session:
            try:
                result = await session.call_tool(request.name, request.args)
            except Exception as exc:  # raised outside: closing a session may swallow it
                failure = exc
        if failure is not None:
            raise failure
        return result


@asynccontextmanager
async def _starting(server: ToolServerSpec, index: int) -> AsyncIterator[None]:
    """Name the entry in whatever goes wrong while a server starts and lists its tools."""
    try:
        yield
    except ToolLoadError:
        raise
    except Exception as exc:
        raise ToolLoadError(
            f"tools.servers[{index}] ({server.name!r}, {server.kind}) could not be "
            f"started: {type(exc).__name__}: {exc}"
        ) from exc


def _add_tools(
    loaded: LoadedTools, server: ToolServerSpec, index: int, offered: list[BaseTool]
) -> None:
    for tool in apply_server_spec(server, index, offered):
        if tool.name in loaded.server_of:
            raise ToolLoadError(
                f"tool {tool.name!r} is offered by both {loaded.server_of[tool.name]!r} "
                f"and {server.name!r}: disable it in one of them (tools.servers[{index}]"
                ".enabled)"
            )
        loaded.tools.append(tool)
        loaded.server_of[tool.name] = server.name
    if server.sensitive:
        loaded.sensitive_servers.add(server.name)


async def _load_tools(spec: Spec, settings: Settings, hold: AsyncExitStack | None) -> LoadedTools:
    """Start every server of the spec and collect the model's tools. With `hold`, each
    server's one session stays open on it and the tools call through it; without, the
    session closes once the tools are listed and every call opens its own."""
    from langchain_mcp_adapters.tools import load_mcp_tools

    loaded = LoadedTools(tools=[])
    for index, server in enumerate(spec.tools.servers):
        async with _starting(server, index):
            # In a thread: hosts like LangGraph's server reject blocking calls on their loop.
            source = await asyncio.to_thread(server_source, server, index, spec, settings)
            if hold is not None:
                session = await hold.enter_async_context(source.session())
                offered = await load_mcp_tools(session, server_name=server.name)
            else:
                async with source.session() as session:
                    offered = await load_mcp_tools(
                        session,
                        server_name=server.name,
                        tool_interceptors=[_SessionPerCall(source)],
                    )
        _add_tools(loaded, server, index, offered)
    return loaded


@asynccontextmanager
async def open_tools(spec: Spec, settings: Settings) -> AsyncIterator[LoadedTools]:
    """Start every server of the spec, hold one session each, yield the model's tools."""
    async with AsyncExitStack() as stack:
        yield await _load_tools(spec, settings, hold=stack)


async def load_tools_stateless(spec: Spec, settings: Settings) -> LoadedTools:
    """Tools that open a fresh MCP session per call, so they outlive any context manager.

    Used where the host owns the lifetime (LangGraph Studio builds the graph once and runs
    it many times); the CLI uses `open_tools`, which holds one session per run. The servers
    are the same: built-ins (core and connectors) run in this process, others as the spec
    says.
    """
    return await _load_tools(spec, settings, hold=None)
