"""Open the spec's MCP servers and turn their tools into LangChain tools.

One MCP session per server is held for the whole run (`open_tools` is an async context
manager), so stateful servers keep their state between calls of one conversation. The
spec decides which tools the model may use (`enabled`) and what it is told about each
(`descriptions`); a name in either list that the server does not offer is an error, not a
silent no-op.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
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


def apply_server_spec(server: ToolServerSpec, index: int, offered: list[BaseTool]) -> list[BaseTool]:
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


async def _open_builtin(
    stack: AsyncExitStack, server: ToolServerSpec, spec: Spec, settings: Settings
) -> Any:
    import fastmcp

    settings.workspace.mkdir(parents=True, exist_ok=True)
    if server.builtin == "core":
        from .core import create_core_server

        mcp_server = create_core_server(
            workspace=settings.workspace,
            memory_db=settings.memory_db,
            memory_top_k=spec.memory.top_k,
        )
    else:
        from homespun.connectors.registry import create_connector_server

        index = spec.tools.servers.index(server)
        mcp_server = create_connector_server(server, index, settings)
    client = await stack.enter_async_context(fastmcp.Client(mcp_server))
    return client.session


async def _open_external(stack: AsyncExitStack, server: ToolServerSpec, index: int) -> Any:
    from langchain_mcp_adapters.client import MultiServerMCPClient

    client = MultiServerMCPClient({server.name: connection_for(server, index)})
    return await stack.enter_async_context(client.session(server.name))


@asynccontextmanager
async def open_tools(spec: Spec, settings: Settings) -> AsyncIterator[LoadedTools]:
    """Start every server of the spec, hold one session each, yield the model's tools."""
    from langchain_mcp_adapters.tools import load_mcp_tools

    loaded = LoadedTools(tools=[])
    async with AsyncExitStack() as stack:
        for index, server in enumerate(spec.tools.servers):
            try:
                if server.kind == "builtin":
                    session = await _open_builtin(stack, server, spec, settings)
                else:
                    session = await _open_external(stack, server, index)
                offered = await load_mcp_tools(session, server_name=server.name)
            except ToolLoadError:
                raise
            except Exception as exc:
                raise ToolLoadError(
                    f"tools.servers[{index}] ({server.name!r}, {server.kind}) could not be "
                    f"started: {type(exc).__name__}: {exc}"
                ) from exc
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
        yield loaded


def builtin_stdio_connection(spec: Spec, settings: Settings) -> dict[str, Any]:
    """The built-in core server as a stdio subprocess (for hosts that call tools without a
    held session, like LangGraph Studio)."""
    import sys

    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "homespun.mcp_servers.core", "--workspace", str(settings.workspace),
                 "--memory-db", str(settings.memory_db),
                 "--memory-top-k", str(spec.memory.top_k)],
    }


async def load_tools_stateless(spec: Spec, settings: Settings) -> LoadedTools:
    """Tools that open a fresh MCP session per call, so they outlive any context manager.

    Used where the host owns the lifetime (LangGraph Studio builds the graph once and runs
    it many times); the CLI uses `open_tools`, which holds one session per run.
    """
    import asyncio

    from langchain_mcp_adapters.tools import load_mcp_tools

    # LangGraph's server rejects blocking calls on its event loop.
    await asyncio.to_thread(settings.workspace.mkdir, parents=True, exist_ok=True)
    loaded = LoadedTools(tools=[])
    for index, server in enumerate(spec.tools.servers):
        conn = (builtin_stdio_connection(spec, settings) if server.kind == "builtin"
                else connection_for(server, index))
        try:
            offered = await load_mcp_tools(None, connection=conn, server_name=server.name)
        except Exception as exc:
            raise ToolLoadError(
                f"tools.servers[{index}] ({server.name!r}, {server.kind}) could not be "
                f"started: {type(exc).__name__}: {exc}"
            ) from exc
        for tool in apply_server_spec(server, index, offered):
            if tool.name in loaded.server_of:
                raise ToolLoadError(f"tool {tool.name!r} is offered by two servers")
            loaded.tools.append(tool)
            loaded.server_of[tool.name] = server.name
        if server.sensitive:
            loaded.sensitive_servers.add(server.name)
    return loaded
