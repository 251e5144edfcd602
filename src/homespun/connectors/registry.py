"""Built-in connectors by name: each builds a FastMCP server from its spec entry."""

from __future__ import annotations

from typing import Any

from homespun.spec import Settings, ToolServerSpec


class ConnectorConfigError(ValueError):
    """A connector's options are wrong; the message names tools.servers[i].options.KEY."""


def create_connector_server(server: ToolServerSpec, index: int, settings: Settings) -> Any:
    where = f"tools.servers[{index}].options"
    name = server.builtin
    if name == "notes":
        from .notes import create_notes_server

        return create_notes_server(server.options, where=where, settings=settings)
    if name == "calendar":
        from .calendar import create_calendar_server

        return create_calendar_server(server.options, where=where, settings=settings)
    if name == "feeds":
        from .feeds import create_feeds_server

        return create_feeds_server(server.options, where=where, settings=settings)
    if name == "email":
        from .email import create_email_server

        return create_email_server(server.options, where=where, settings=settings)
    raise ConnectorConfigError(f"tools.servers[{index}].builtin: unknown connector {name!r}")
