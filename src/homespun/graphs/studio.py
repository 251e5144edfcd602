"""Graph factories for LangGraph Studio (`langgraph dev`, see langgraph.json).

Studio brings its own checkpointer, so these compile without one, and it builds a graph
once and runs it many times, so the tools open an MCP session per call instead of holding
one. The spec is read from HOMESPUN_HOME / HOMESPUN_SPEC like every other surface.
"""

from __future__ import annotations

from typing import Any

from homespun.engines.factory import build_chat_model
from homespun.mcp_servers.loader import load_tools_stateless
from homespun.spec import Settings, load_spec

from .assistant import build_assistant_graph


async def assistant(config: Any = None):
    """The assistant graph of the current spec."""
    settings = Settings()
    spec = load_spec(settings.spec_path)
    loaded = await load_tools_stateless(spec, settings)
    return build_assistant_graph(spec, build_chat_model(spec, settings), loaded.tools)


def search():
    """The spec-search session graph. A run's configurable may name `benchmark`
    ('starter', 'personal', 'agentdojo:SUITE') and `proposer`; review-tier proposals pause
    with an interrupt that Studio shows, resumed with {"approve": true} or
    {"approve": false, "reason": "..."}."""
    from .search import build_search_graph

    return build_search_graph()
