"""Graph factories for LangGraph Studio (`langgraph dev`, see langgraph.json).

Studio brings its own checkpointer, so these compile without one, and it calls a factory
for each run (and each time it draws the graph) with no way to close what the factory
opened, so the tools open an MCP session per call instead of holding one. The spec is read
from HOMESPUN_HOME / HOMESPUN_SPEC like every other surface.

`langgraph dev` loads this file by path, not as part of the package, so imports here must be
absolute (a relative one fails with "no known parent package"), and at module level: the
server imports this file in a worker thread but calls the factories on its event loop, where
it rejects blocking calls (importing GitPython runs `git version`). Blocking setup inside a
factory goes through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from homespun.engines.factory import build_chat_model
from homespun.graphs.assistant import build_assistant_graph
from homespun.graphs.search import SearchContext, build_search_graph
from homespun.graphs.search_loop import get_benchmark, search_context
from homespun.mcp_servers.loader import load_tools_stateless
from homespun.spec import Settings, load_spec


async def assistant(config: Any = None):
    """The assistant graph of the current spec."""
    # Reading the spec and loading the model block; langgraph dev refuses blocking calls on
    # its event loop, so they run in a worker thread.
    spec, settings, model = await asyncio.to_thread(_spec_and_model)
    loaded = await load_tools_stateless(spec, settings)
    return build_assistant_graph(spec, model, loaded.tools)


def _spec_and_model():
    settings = Settings()
    spec = load_spec(settings.spec_path)
    settings.workspace.mkdir(parents=True, exist_ok=True)
    return spec, settings, build_chat_model(spec, settings)


@dataclass
class StudioSearchContext:
    """The run context of the search graph in Studio, which can only send JSON: the names of
    the benchmark ('starter', 'personal', 'agentdojo:SUITE') and of the proposer (default: the
    spec's), and the evaluation concurrency. The rest (settings, the spec's teacher, a cost
    meter on its budgets) comes from HOMESPUN_HOME and the spec, built once per run by the
    first node that asks for it."""

    benchmark: str = "starter"
    proposer: str | None = None
    concurrency: int = 1

    def search_context(self) -> SearchContext:
        return self._built

    @cached_property
    def _built(self) -> SearchContext:
        settings = Settings()
        spec = load_spec(settings.spec_path)
        return search_context(
            settings,
            spec,
            get_benchmark(self.benchmark, settings),
            self.proposer or spec.learning.proposer,
            concurrency=self.concurrency,
        )


def search():
    """The spec-search session graph. A run's context (or its configurable, which the server
    copies into the context) may name `benchmark` and `proposer` (see StudioSearchContext);
    review-tier proposals pause with an interrupt that Studio shows, resumed with
    {"approve": true} or {"approve": false, "reason": "..."}."""
    return build_search_graph(context_schema=StudioSearchContext)
