"""Tools come from real MCP servers named in the spec: built-in and a stdio subprocess, held
for a run (`open_tools`) or opened per call (`load_tools_stateless`, LangGraph Studio)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.assistant import build_assistant_graph, new_question_state
from homespun.graphs.runner import run_assistant
from homespun.mcp_servers.loader import ToolLoadError, load_tools_stateless, open_tools
from homespun.spec import Spec, ToolServerSpec

SHOUT = str(Path(__file__).resolve().parents[1] / "fixtures" / "shout_server.py")


def shout_server(**kw) -> ToolServerSpec:
    return ToolServerSpec(name="shout", kind="stdio", command=sys.executable, args=[SHOUT], **kw)


async def test_builtin_core_tools_run_through_mcp(settings):
    spec = Spec()
    model = ScriptedChatModel(
        script=[
            tool_call("calculator", {"expression": "37 * 41"}),
            tool_call("remember", {"text": "Ada likes tea"}),
            tool_call("search_memory", {"query": "tea"}),
            "done",
        ]
    )
    res = await run_assistant(spec, settings, "q", model=model)
    calc, remember, search = res.trace.tool_calls
    assert calc.result == "1517" and calc.server == "core"
    assert "Remembered" in remember.result
    assert "Ada likes tea" in search.result
    assert settings.memory_db.exists()  # memory lives under HOMESPUN_HOME


async def test_spec_description_override_is_what_the_model_sees(settings):
    spec = Spec()
    spec.tools.servers[0].descriptions = {"calculator": "ONLY for sums of money."}
    model = ScriptedChatModel(script=["ok"])
    await run_assistant(spec, settings, "q", model=model)
    seen = model.calls[0]["tool_descriptions"]
    assert seen["calculator"] == "ONLY for sums of money."
    assert seen["think"]  # the others keep the server's shipped text


@pytest.mark.slow
async def test_stdio_server_from_spec_is_called_by_react_with_overridden_description(
    settings, monkeypatch
):
    monkeypatch.setenv("SHOUT_SUFFIX_SECRET", "!")
    spec = Spec()
    spec.agent.repeat_guard = False  # counter() is called twice on purpose
    spec.tools.servers.append(
        shout_server(
            descriptions={"shout": "Makes text loud. Use it for greetings."},
            env={"SHOUT_SUFFIX": "${SHOUT_SUFFIX_SECRET}"},
        )
    )
    model = ScriptedChatModel(
        script=[
            tool_call("shout", {"text": "hello"}),
            tool_call("counter"),
            tool_call("counter"),
            "HELLO!",
        ]
    )
    res = await run_assistant(spec, settings, "greet", model=model)
    shout, c1, c2 = res.trace.tool_calls
    assert (shout.server, shout.result) == ("shout", "HELLO!")
    assert (c1.result, c2.result) == ("1", "2")  # one session held for the whole run
    assert model.calls[0]["tool_descriptions"]["shout"] == "Makes text loud. Use it for greetings."
    assert "calculator" in model.calls[0]["tools"]  # the built-in server is still there


@pytest.mark.slow
async def test_enabled_list_limits_the_tools(settings):
    spec = Spec()
    spec.tools.servers[0].enabled = ["calculator"]
    spec.tools.servers.append(shout_server(enabled=["shout"]))
    async with open_tools(spec, settings) as loaded:
        assert sorted(t.name for t in loaded.tools) == ["calculator", "shout"]


async def test_naming_a_tool_the_server_lacks_is_an_error_trace(settings):
    spec = Spec()
    spec.tools.servers[0].enabled = ["calculator", "teleport"]
    res = await run_assistant(spec, settings, "q", model=ScriptedChatModel(script=["x"]))
    assert res.trace.status == "error"
    assert "tools.servers[0].enabled names 'teleport'" in res.trace.error


async def test_missing_env_reference_is_named(settings, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    spec = Spec()
    spec.tools.servers.append(shout_server(env={"X": "${NOT_SET_ANYWHERE}"}))
    with pytest.raises(ToolLoadError, match=r"tools.servers\[1\].env.X .*NOT_SET_ANYWHERE"):
        async with open_tools(spec, settings):
            pass


async def test_a_server_that_cannot_start_names_its_entry(settings):
    spec = Spec()
    spec.tools.servers.append(
        ToolServerSpec(name="ghost", kind="stdio", command="/nonexistent/mcp-server")
    )
    with pytest.raises(ToolLoadError, match=r"tools.servers\[1\] \('ghost', stdio\)"):
        async with open_tools(spec, settings):
            pass


# --------------------------------------------------------------------------- Studio's path


@pytest.fixture
def notes_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "vault"
    folder.mkdir()
    (folder / "todo.md").write_text("# Todo\nCall the plumber about the leaking tap\n")
    return folder


def notes_spec(folder: Path) -> Spec:
    return Spec(
        tools={
            "servers": [
                ToolServerSpec(name="core", kind="builtin", builtin="core", enabled=["calculator"]),
                ToolServerSpec(
                    name="notes",
                    kind="builtin",
                    builtin="notes",
                    options={"path": str(folder)},
                    descriptions={"read_note": "Open a note from the vault."},
                ),
            ]
        }
    )


async def test_the_studio_path_loads_a_builtin_connector_not_the_core_server(
    notes_folder, settings
):
    spec = notes_spec(notes_folder)
    loaded = await load_tools_stateless(spec, settings)  # no session is held after this
    assert loaded.server_of == {"calculator": "core", "search_notes": "notes", "read_note": "notes"}
    tools = loaded.by_name()
    assert tools["read_note"].description == "Open a note from the vault."
    hit = await tools["search_notes"].ainvoke({"query": "plumber"})
    assert "todo.md" in str(hit)
    note = await tools["read_note"].ainvoke({"path": "todo.md"})
    assert "leaking tap" in str(note)
    calc = await tools["calculator"].ainvoke({"expression": "6 * 7"})
    assert "42" in str(calc)

    # The same entries through the held-session path give the same tools.
    async with open_tools(spec, settings) as held:
        assert held.server_of == loaded.server_of
        assert {t.name: t.description for t in held.tools} == {
            t.name: t.description for t in loaded.tools
        }


async def test_the_studio_path_runs_the_assistant_graph_with_connector_tools(
    notes_folder, settings
):
    spec = notes_spec(notes_folder)
    loaded = await load_tools_stateless(spec, settings)
    model = ScriptedChatModel(
        script=[tool_call("search_notes", {"query": "plumber"}), "Call the plumber."]
    )
    graph = build_assistant_graph(spec, model, loaded.tools)  # no checkpointer, like Studio
    state = await graph.ainvoke(new_question_state(HumanMessage("what is on my todo?")))
    result = state["messages"][-2]
    assert result.additional_kwargs["mcp_server"] == "notes" and result.status == "success"
    assert "todo.md" in str(result.content)


async def test_the_studio_path_makes_no_blocking_call_on_the_event_loop(notes_folder, settings):
    """LangGraph's server rejects blocking calls on its loop; built-ins run in-process there."""
    blockbuster = pytest.importorskip("blockbuster")
    spec = notes_spec(notes_folder)
    with blockbuster.blockbuster_ctx():
        loaded = await load_tools_stateless(spec, settings)
        tools = loaded.by_name()
        assert "todo.md" in str(await tools["search_notes"].ainvoke({"query": "plumber"}))
        assert "42" in str(await tools["calculator"].ainvoke({"expression": "6 * 7"}))


async def test_the_studio_path_names_a_connector_entry_with_bad_options(tmp_path, settings):
    spec = Spec(
        tools={
            "servers": [
                ToolServerSpec(
                    name="notes",
                    kind="builtin",
                    builtin="notes",
                    options={"path": str(tmp_path / "missing")},
                ),
            ]
        }
    )
    with pytest.raises(ToolLoadError, match=r"tools\.servers\[0\]\.options\.path"):
        await load_tools_stateless(spec, settings)
