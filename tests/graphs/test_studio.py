"""The Studio factory: no own checkpointer, tools that work without a held session."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from homespun.graphs import studio
from homespun.home import init_home
from homespun.mcp_servers.loader import load_tools_stateless
from homespun.spec import load_spec


@pytest.mark.slow
async def test_stateless_tools_call_the_core_server_subprocess(settings):
    init_home(settings)
    spec = load_spec(settings.spec_path)
    loaded = await load_tools_stateless(spec, settings)
    calc = loaded.by_name()["calculator"]
    out = await calc.ainvoke({"type": "tool_call", "name": "calculator",
                              "args": {"expression": "6 * 7"}, "id": "1"})
    assert out.content[0]["text"] == "42" if isinstance(out.content, list) else out.content == "42"
    assert calc.description == spec.tools.servers[0].descriptions["calculator"]


@pytest.mark.slow
async def test_factory_builds_the_spec_graph_without_a_checkpointer(settings, model_path):
    init_home(settings)
    graph = await studio.assistant({})
    assert graph.checkpointer is None
    assert {"agent", "tools"} <= set(graph.get_graph().nodes)
    state = await graph.ainvoke({"messages": [HumanMessage("Say hi.")], "turns": 0})
    assert state["turns"] >= 1
