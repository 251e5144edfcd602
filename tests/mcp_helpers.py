"""Calling MCP tools from tests: in-memory FastMCP clients, text of a result, a refusal's
message, and one built-in server loaded the way the spec loads it (`open_tools`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import fastmcp
import pytest
from fastmcp.exceptions import ToolError

from homespun.mcp_servers.loader import LoadedTools, open_tools
from homespun.spec import Settings, Spec, ToolServerSpec


def text(result: Any) -> str:
    """The text of a tool result's first content block."""
    return result.content[0].text


async def call(server: Any, tool: str, **args: Any) -> str:
    """Call one tool of `server` (a FastMCP server, in memory) in a fresh session; its text."""
    async with fastmcp.Client(server) as client:
        result = await client.call_tool(tool, args)
    return text(result)


async def refused(server: Any, tool: str, **args: Any) -> str:
    """Call one tool that must fail with a ToolError; the error's message."""
    async with fastmcp.Client(server) as client:
        with pytest.raises(ToolError) as info:
            await client.call_tool(tool, args)
    return str(info.value)


async def list_tools(server: Any) -> dict[str, Any]:
    """The tools `server` lists, by name (mcp.types.Tool: description, inputSchema, ...)."""
    async with fastmcp.Client(server) as client:
        return {t.name: t for t in await client.list_tools()}


@asynccontextmanager
async def open_builtin(
    settings: Settings, name: str, builtin: str, **fields: Any
) -> AsyncIterator[LoadedTools]:
    """Load one built-in server through `open_tools`, as a spec naming it would
    (`fields`: options, descriptions, sensitive, ...)."""
    spec = Spec(
        tools={"servers": [ToolServerSpec(name=name, kind="builtin", builtin=builtin, **fields)]}
    )
    async with open_tools(spec, settings) as loaded:
        yield loaded


def assert_descriptions(
    tools: Mapping[str, Any], shipped: Mapping[str, str], overrides: Mapping[str, str]
) -> None:
    """Every tool the model sees has the spec's override where there is one, else the
    server's shipped description."""
    assert set(overrides) <= set(tools)
    for name, tool in tools.items():
        assert tool.description == overrides.get(name, shipped[name]), name
