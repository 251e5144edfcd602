"""The Studio factory: no own checkpointer, tools that work without a held session."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from homespun.graphs import studio
from homespun.home import init_home
from homespun.mcp_servers.loader import load_tools_stateless
from homespun.spec import load_spec


@pytest.mark.slow
async def test_stateless_tools_call_the_in_process_core_server(settings):
    init_home(settings)
    spec = load_spec(settings.spec_path)
    loaded = await load_tools_stateless(spec, settings)
    calc = loaded.by_name()["calculator"]
    out = await calc.ainvoke(
        {"type": "tool_call", "name": "calculator", "args": {"expression": "6 * 7"}, "id": "1"}
    )
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


async def test_search_graph_runs_on_the_json_context_studio_sends(settings, monkeypatch):
    """Studio sends the run context as JSON: the graph coerces it to StudioSearchContext,
    which builds the collaborators once per run, from HOMESPUN_HOME and the spec."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from homespun.graphs.search import SearchContext
    from homespun.stores.learning import LearningStore
    from tests.learning.toy import StudentFactory, ToyBenchmark

    init_home(settings)
    bench = ToyBenchmark()
    monkeypatch.setattr(studio, "get_benchmark", lambda name, *a: bench)
    built: list[SearchContext] = []
    real = studio.search_context

    def build(*args, **kwargs):  # the spec's engine would load a model: a scripted one here
        built.append(real(*args, student=StudentFactory(), **kwargs))
        return built[-1]

    monkeypatch.setattr(studio, "search_context", build)
    # As the server does: the factory's graph, with the server's checkpointer put in.
    graph = studio.search().copy(update={"checkpointer": InMemorySaver()})
    assert graph.get_context_jsonschema()["properties"].keys() == {
        "benchmark",
        "proposer",
        "concurrency",
    }
    config = {"configurable": {"thread_id": "studio-1"}}
    context = {"benchmark": "toy", "proposer": "random"}
    result = await graph.ainvoke({"status": "running", "approvals": {}}, config, context=context)
    assert len(built) == 1  # one context for every node of the run
    assert built[0].proposer.name == "random" and built[0].meter is not None
    runs = 1
    while "__interrupt__" in result:  # a review-tier proposal: rejected, in a new run
        result = await graph.ainvoke(
            Command(resume={"approve": False, "reason": "no"}), config, context=context
        )
        runs += 1
    assert len(built) == runs and result["status"] == "done"
    assert LearningStore(settings.learning_db).session(result["session_id"]).benchmark == "toy"
