"""Edits: every op changes what the running assistant does, not only the spec object.

Each op is applied with `apply_proposal` and the effect is observed where a user would see
it: the HTTP request the engine receives (a loopback OpenAI-style stub, or respx for
Ollama), the messages, tools and tool descriptions a scripted model is given in a real run
(with the real built-in core MCP server where tools matter), the graph's nodes and the trace.
"""

from __future__ import annotations

import json
import typing

import httpx
import pytest
import respx
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import ValidationError

from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.assistant import build_assistant_graph
from homespun.graphs.runner import run_assistant
from homespun.mcp_servers.core import CORE_TOOL_DESCRIPTIONS, CORE_TOOL_NAMES
from homespun.spec import (
    FewShotExample,
    Spec,
    SpecError,
    ToolServerSpec,
    VerifierSpec,
    load_spec,
    parse_spec,
    render_spec,
    save_spec,
)
from homespun.spec.edits import (
    AddTool,
    AddVerifier,
    EditError,
    EditFewShot,
    EditNotAvailable,
    EditOp,
    PatchSystemPrompt,
    Proposal,
    RemoveTool,
    ReplaceSystemPrompt,
    SetAgentLoop,
    SetAgentParam,
    SetEngineParam,
    SetGenerationParam,
    SetMemoryParam,
    SetModel,
    SetRenderingParam,
    SetRenderingText,
    SetToolDescription,
    TrainLora,
    apply_proposal,
    describe_proposal,
    risk_tier,
)
from homespun.spec.models import OP_NAMES
from tests.stubs import EmbeddedStub, chat_api, chat_completion


@tool
def calculator(expression: str) -> str:
    """Multiply two numbers written as 'a * b'."""
    a, b = (int(x) for x in expression.split("*"))
    return str(a * b)


def apply(spec: Spec, *ops, target: str = "cluster-a") -> Spec:
    return apply_proposal(spec, Proposal(target_cluster=target, ops=list(ops)))


def agent_spec(loop: str = "react", **agent) -> Spec:
    spec = Spec()
    spec.agent.loop = loop
    for key, value in agent.items():
        setattr(spec.agent, key, value)
    return spec


# --------------------------------------------------------------------------- loopback engine


@pytest.fixture
def engine(http_stub):
    """(base_url, recorded request bodies) of a loopback OpenAI-compatible server; a test
    reaches the server itself through `http_stub`."""
    http_stub.handler = chat_api("pong")
    return http_stub.url("/v1"), http_stub.bodies


def http_spec(base_url: str, **engine_fields) -> Spec:
    spec = Spec()
    spec.engine = spec.engine.model_validate(
        {
            **spec.engine.model_dump(),
            "backend": "openai_compatible",
            "base_url": base_url,
            **engine_fields,
        }
    )
    return spec


async def engine_request(spec: Spec, settings, bodies: list[dict]) -> dict:
    """Run the assistant of `spec` (engine built from the spec) and return the request body."""
    before = len(bodies)
    res = await run_assistant(spec, settings, "ping", tools=[calculator], persist=False)
    assert res.trace.status == "ok", res.trace.error
    assert len(bodies) == before + 1
    return bodies[-1]


def _max_tokens(body: dict) -> int:
    return body.get("max_completion_tokens", body.get("max_tokens"))


# --------------------------------------------------------------------------- intelligence


@pytest.mark.parametrize(
    ("param", "value", "read"),
    [
        ("temperature", 0.7, lambda b: b["temperature"]),
        ("top_p", 0.5, lambda b: b["top_p"]),
        ("top_k", 7, lambda b: b["top_k"]),
        ("max_tokens", 33, _max_tokens),
        ("repeat_penalty", 1.25, lambda b: b["repeat_penalty"]),
        ("seed", 1234, lambda b: b["seed"]),
    ],
)
async def test_set_generation_param_reaches_the_engine_request(
    settings, engine, param, value, read
):
    url, bodies = engine
    spec = http_spec(url)
    before = read(await engine_request(spec, settings, bodies))
    assert before == getattr(spec.intelligence, param) != value
    edited = apply(spec, SetGenerationParam(param=param, value=value))
    after = read(await engine_request(edited, settings, bodies))
    assert after == value
    if param in ("top_k", "max_tokens", "seed"):
        assert type(after) is int


async def test_seed_minus_one_stops_sending_a_seed(settings, engine):
    url, bodies = engine
    spec = http_spec(url)
    assert (await engine_request(spec, settings, bodies))["seed"] == 42
    edited = apply(spec, SetGenerationParam(param="seed", value=-1))
    assert "seed" not in await engine_request(edited, settings, bodies)


async def test_set_model_changes_the_model_the_engine_is_asked_for(settings, engine):
    url, bodies = engine
    spec = http_spec(url)
    assert (await engine_request(spec, settings, bodies))["model"] == "smollm2-135m"
    edited = apply(spec, SetModel(model="qwen2.5-7b-instruct"))
    assert (await engine_request(edited, settings, bodies))["model"] == "qwen2.5-7b-instruct"


def test_train_lora_is_not_available_and_is_manual():
    spec = Spec()
    proposal = Proposal(target_cluster="c", ops=[TrainLora(steps=10)])
    with pytest.raises(EditNotAvailable, match=r"train_lora.*homespun\[train\]") as err:
        apply_proposal(spec, proposal)
    assert isinstance(err.value, EditError)
    assert risk_tier(proposal, spec) == "manual"


# --------------------------------------------------------------------------- engine


async def test_set_engine_param_tool_call_format_switches_the_wire_protocol(settings, engine):
    url, bodies = engine
    spec = http_spec(url)  # constrained_json by default
    constrained = await engine_request(spec, settings, bodies)
    assert constrained["response_format"]["type"] == "json_schema"
    assert "calculator" in json.dumps(constrained["response_format"])
    assert "tools" not in constrained

    native_spec = apply(spec, SetEngineParam(param="tool_call_format", value="native"))
    native = await engine_request(native_spec, settings, bodies)
    assert [t["function"]["name"] for t in native["tools"]] == ["calculator"]
    assert "response_format" not in native

    back = apply(native_spec, SetEngineParam(param="tool_call_format", value="constrained_json"))
    again = await engine_request(back, settings, bodies)
    assert again["response_format"]["type"] == "json_schema" and "tools" not in again


async def test_set_engine_param_timeout_s_bounds_each_model_call(settings, engine, http_stub):
    url, bodies = engine
    http_stub.delay_s = 0.6
    spec = http_spec(url)
    await engine_request(spec, settings, bodies)  # 300 s is plenty for a 0.6 s reply
    edited = apply(spec, SetEngineParam(param="timeout_s", value=0.15))
    res = await run_assistant(edited, settings, "ping", tools=[calculator], persist=False)
    assert res.trace.status == "error"
    assert "timeout" in res.trace.error.lower() or "timed out" in res.trace.error.lower()


async def test_set_engine_param_context_length_and_threads_reach_ollama(settings):
    spec = Spec()
    spec.engine = spec.engine.model_validate(
        {**spec.engine.model_dump(), "backend": "ollama", "base_url": "http://127.0.0.1:11434"}
    )
    edited = apply(
        spec,
        SetEngineParam(param="context_length", value=8192),
        SetEngineParam(param="threads", value="3"),
    )
    reply = {
        "model": "m",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": '{"answer": "pong"}'},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 2,
    }
    with respx.mock:
        route = respx.post("http://127.0.0.1:11434/api/chat").mock(
            return_value=httpx.Response(200, json=reply)
        )
        for s in (spec, edited):
            res = await run_assistant(s, settings, "ping", tools=[calculator], persist=False)
            assert res.trace.status == "ok", res.trace.error
        before, after = (json.loads(c.request.content)["options"] for c in route.calls)
    assert before["num_ctx"] == 4096 and after["num_ctx"] == 8192
    assert before.get("num_thread") is None and after["num_thread"] == 3


async def test_set_engine_param_parallel_and_model_reach_the_embedded_engine(
    settings, monkeypatch, tmp_path
):
    # llama.cpp itself is not loaded here: the seam is the call that starts it.
    started: list[dict] = []
    bodies: list[dict] = []

    def fake_embedded_server(model_path, *, n_ctx, threads, parallel, log_file, adapters=()):
        started.append(
            {"model": model_path.name, "n_ctx": n_ctx, "threads": threads, "parallel": parallel}
        )
        return EmbeddedStub("pong", bodies)

    monkeypatch.setattr("homespun.engines.embedded.get_embedded_server", fake_embedded_server)
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    spec = Spec()
    spec.intelligence.model = str(tmp_path / "a.gguf")
    edited = apply(
        spec,
        SetEngineParam(param="parallel", value=4),
        SetEngineParam(param="context_length", value=2048.0),
        SetEngineParam(param="threads", value=2),
        SetModel(model=str(tmp_path / "b.gguf")),
    )
    for s in (spec, edited):
        res = await run_assistant(s, settings, "ping", tools=[calculator], persist=False)
        assert res.trace.status == "ok", res.trace.error
    assert started == [
        {"model": "a.gguf", "n_ctx": 4096, "threads": 0, "parallel": 1},
        {"model": "b.gguf", "n_ctx": 2048, "threads": 2, "parallel": 4},
    ]
    assert [b["model"] for b in bodies] == ["a", "b"]


# --------------------------------------------------------------------------- system prompt


async def system_message(spec: Spec, settings) -> str:
    model = ScriptedChatModel(script=["ok"])
    res = await run_assistant(spec, settings, "hi", model=model, tools=[calculator], persist=False)
    assert res.trace.status == "ok"
    first = model.calls[0]["messages"][0]
    assert isinstance(first, SystemMessage)
    return first.content


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (ReplaceSystemPrompt(text="You are a pirate."), "You are a pirate."),
        (
            PatchSystemPrompt(mode="append", text="Always use the calculator."),
            "Be brief.\nAlways use the calculator.",
        ),
        (
            PatchSystemPrompt(mode="prepend", text="You are homespun."),
            "You are homespun.\nBe brief.",
        ),
        (PatchSystemPrompt(mode="replace_text", old="brief", text="very brief"), "Be very brief."),
    ],
    ids=["replace", "append", "prepend", "replace_text"],
)
async def test_system_prompt_edits_change_the_system_message_of_a_run(settings, op, expected):
    spec = agent_spec(system_prompt="Be brief.")
    assert await system_message(spec, settings) == "Be brief."
    edited = apply(spec, op)
    assert edited.agent.system_prompt == expected
    assert await system_message(edited, settings) == expected


async def test_patched_system_prompt_reaches_the_engine_request(settings, engine):
    url, bodies = engine
    spec = apply(http_spec(url), PatchSystemPrompt(mode="append", text="Say 'arr' a lot."))
    body = await engine_request(spec, settings, bodies)
    system = body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith(spec.agent.system_prompt)
    assert "Say 'arr' a lot." in system["content"]


# --------------------------------------------------------------------------- agent loop & params


@pytest.mark.parametrize(
    ("loop", "nodes"),
    [
        ("simple", {"respond"}),
        ("react", {"agent", "tools"}),
        ("plan_execute", {"plan", "execute", "tools", "next_step", "answer"}),
    ],
)
def test_set_agent_loop_changes_the_graph(loop, nodes):
    base = agent_spec("react" if loop != "react" else "simple")
    edited = apply(base, SetAgentLoop(loop=loop))
    graph = build_assistant_graph(edited, ScriptedChatModel(), [calculator])
    assert set(graph.nodes) == {"__start__", "turn_limit", "verify"} | nodes


async def test_set_agent_loop_changes_the_model_calls_of_a_run(settings):
    spec = agent_spec("react")
    model = ScriptedChatModel(script=["hi"])
    await run_assistant(spec, settings, "q", model=model, tools=[calculator], persist=False)
    assert [c["tools"] for c in model.calls] == [["calculator"]]

    model = ScriptedChatModel(script=["hi"])
    await run_assistant(
        apply(spec, SetAgentLoop(loop="simple")),
        settings,
        "q",
        model=model,
        tools=[calculator],
        persist=False,
    )
    assert [c["tools"] for c in model.calls] == [[]]  # one call, no tools

    model = ScriptedChatModel(script=["1. answer it", "done", "final"])
    res = await run_assistant(
        apply(spec, SetAgentLoop(loop="plan_execute")),
        settings,
        "q",
        model=model,
        tools=[calculator],
        persist=False,
    )
    assert res.answer == "final"
    plan, step, answer = model.calls
    assert plan["tools"] == [] and "numbered plan" in plan["messages"][-1].content
    assert step["tools"] == ["calculator"] and "step 1 of 1" in step["messages"][-1].content
    assert answer["tools"] == []


async def test_set_agent_param_max_turns_stops_the_run_sooner(settings):
    script = [
        tool_call("calculator", {"expression": "1 * 1"}),
        tool_call("calculator", {"expression": "2 * 2"}),
        "done",
    ]
    spec = agent_spec("react")
    model = ScriptedChatModel(script=script)
    res = await run_assistant(spec, settings, "q", model=model, tools=[calculator], persist=False)
    assert res.answer == "done" and len(model.calls) == 3

    edited = apply(spec, SetAgentParam(param="max_turns", value=2))
    model = ScriptedChatModel(script=script)
    res = await run_assistant(edited, settings, "q", model=model, tools=[calculator], persist=False)
    assert res.trace.status == "error" and "turn limit" in res.trace.error
    assert len(model.calls) == 2


async def test_set_agent_param_tool_policy(settings):
    spec = agent_spec("react")
    script = [tool_call("calculator", {"expression": "2 * 2"}), "4"]
    model = ScriptedChatModel(script=script)
    await run_assistant(spec, settings, "2*2", model=model, tools=[calculator], persist=False)
    assert [c["tool_choice"] for c in model.calls] == [None, None]

    model = ScriptedChatModel(script=script)
    await run_assistant(
        apply(spec, SetAgentParam(param="tool_policy", value="required_first")),
        settings,
        "2*2",
        model=model,
        tools=[calculator],
        persist=False,
    )
    assert [c["tool_choice"] for c in model.calls] == ["required", None]

    model = ScriptedChatModel(script=["no tools"])
    await run_assistant(
        apply(spec, SetAgentParam(param="tool_policy", value="none")),
        settings,
        "2*2",
        model=model,
        tools=[calculator],
        persist=False,
    )
    assert model.calls[0]["tools"] == []


async def test_set_agent_param_max_plan_steps_truncates_the_plan(settings):
    plan = "1. first\n2. second\n3. third\n4. fourth"
    spec = agent_spec("plan_execute")
    model = ScriptedChatModel(script=[plan, "a", "b", "c", "d", "final"])
    res = await run_assistant(spec, settings, "q", model=model, tools=[calculator], persist=False)
    assert res.answer == "final" and len(model.calls) == 6
    assert "(at most 4 steps)" in model.calls[0]["messages"][-1].content

    edited = apply(spec, SetAgentParam(param="max_plan_steps", value=2))
    model = ScriptedChatModel(script=[plan, "a", "b", "final"])
    res = await run_assistant(edited, settings, "q", model=model, tools=[calculator], persist=False)
    assert res.answer == "final" and len(model.calls) == 4
    assert "(at most 2 steps)" in model.calls[0]["messages"][-1].content
    assert "step 2 of 2 of your plan: second" in model.calls[2]["messages"][-1].content


async def test_set_agent_param_repeat_guard_on_and_off(settings):
    def script():
        return [
            tool_call("calculator", {"expression": "37 * 41"}),
            tool_call("calculator", {"expression": "37 * 41"}),
            "1517",
        ]

    spec = agent_spec("react")
    model = ScriptedChatModel(script=script())
    res = await run_assistant(spec, settings, "q", model=model, tools=[calculator], persist=False)
    assert len(res.trace.tool_calls) == 1  # the repeat was not run
    assert model.calls[2]["tools"] == []
    assert "Do not call it again" in model.calls[2]["messages"][-1].content

    edited = apply(spec, SetAgentParam(param="repeat_guard", value=False))
    model = ScriptedChatModel(script=script())
    res = await run_assistant(edited, settings, "q", model=model, tools=[calculator], persist=False)
    assert res.answer == "1517"
    assert [c.result for c in res.trace.tool_calls] == ["1517", "1517"]  # ran twice
    assert model.calls[2]["tools"] == ["calculator"]
    assert isinstance(model.calls[2]["messages"][-1], ToolMessage)

    back = apply(edited, SetAgentParam(param="repeat_guard", value=True))
    assert back.agent.repeat_guard is True


# --------------------------------------------------------------------------- few-shot, verifier


async def sent_messages(spec: Spec, settings) -> list[str]:
    model = ScriptedChatModel(script=["ok"])
    await run_assistant(spec, settings, "hi", model=model, tools=[], persist=False)
    return [m.content for m in model.calls[0]["messages"][1:]]


async def test_edit_few_shot_add_remove_replace_change_the_messages(settings):
    spec = agent_spec("simple", few_shot=[FewShotExample(user="2+2?", assistant="4")])
    assert await sent_messages(spec, settings) == ["2+2?", "4", "hi"]

    added = apply(
        spec, EditFewShot(action="add", example=FewShotExample(user="3*3?", assistant="9"))
    )
    assert await sent_messages(added, settings) == ["2+2?", "4", "3*3?", "9", "hi"]

    removed = apply(added, EditFewShot(action="remove", index=0))
    assert await sent_messages(removed, settings) == ["3*3?", "9", "hi"]

    replaced = apply(
        added,
        EditFewShot(action="replace", index=-1, example=FewShotExample(user="5-1?", assistant="4")),
    )
    assert await sent_messages(replaced, settings) == ["2+2?", "4", "5-1?", "4", "hi"]

    emptied = apply(spec, EditFewShot(action="remove"))
    assert await sent_messages(emptied, settings) == ["hi"]


async def test_add_verifier_sends_a_failing_answer_back_with_feedback(settings):
    spec = agent_spec("react")
    model = ScriptedChatModel(script=["about forty", "42"])
    res = await run_assistant(
        spec, settings, "6*7?", model=model, tools=[calculator], persist=False
    )
    assert res.answer == "about forty" and len(model.calls) == 1

    edited = apply(
        spec,
        AddVerifier(
            verifier=VerifierSpec(
                kind="regex", pattern=r"^\d+$", feedback="Answer with the number only."
            )
        ),
    )
    model = ScriptedChatModel(script=["about forty", "42"])
    res = await run_assistant(
        edited, settings, "6*7?", model=model, tools=[calculator], persist=False
    )
    assert res.answer == "42" and len(model.calls) == 2
    feedback = model.calls[1]["messages"][-1]
    assert isinstance(feedback, HumanMessage)
    assert feedback.content == "Answer with the number only." and feedback.name == "verifier"


# ------------------------------------------------------------------------ tools (real core server)


async def offered(spec: Spec, settings, script=("ok",)):
    """(tool names, descriptions, trace) of a run with the spec's own MCP servers."""
    model = ScriptedChatModel(script=list(script))
    res = await run_assistant(spec, settings, "q", model=model, persist=False)
    assert model.calls, res.trace.error
    return set(model.calls[0]["tools"]), model.calls[0]["tool_descriptions"], res.trace


async def test_remove_tool_and_add_tool_change_what_the_model_is_offered(settings):
    spec = Spec()
    names, _, _ = await offered(spec, settings)
    assert names == set(CORE_TOOL_NAMES)

    removed = apply(spec, RemoveTool(server="core", tool="calculator"))
    assert removed.tools.server("core").disabled == ["calculator"]
    names, _, trace = await offered(
        removed, settings, [tool_call("calculator", {"expression": "2 * 3"}), "ok"]
    )
    assert names == set(CORE_TOOL_NAMES) - {"calculator"}
    assert "unknown tool 'calculator'" in trace.tool_calls[0].error  # and it cannot run

    restored = apply(removed, AddTool(server="core", tool="calculator"))
    names, _, trace = await offered(
        restored, settings, [tool_call("calculator", {"expression": "2 * 3"}), "ok"]
    )
    assert names == set(CORE_TOOL_NAMES)
    assert trace.tool_calls[0].result == "6"


async def test_add_tool_and_remove_tool_on_an_enabled_list(settings):
    spec = Spec()
    spec.tools.servers[0].enabled = ["calculator"]
    names, _, _ = await offered(spec, settings)
    assert names == {"calculator"}

    added = apply(spec, AddTool(server="core", tool="search_memory"))
    names, _, _ = await offered(added, settings)
    assert names == {"calculator", "search_memory"}

    removed = apply(added, RemoveTool(server="core", tool="calculator"))
    assert removed.tools.server("core").enabled == ["search_memory"]
    names, _, _ = await offered(removed, settings)
    assert names == {"search_memory"}


async def test_set_tool_description_is_what_the_model_sees(settings):
    spec = Spec()
    _, descriptions, _ = await offered(spec, settings)
    assert descriptions["search_memory"] == CORE_TOOL_DESCRIPTIONS["search_memory"]

    text = 'Look up what the user told you before. Use it for "my ..." questions.\nAlways.'
    edited = apply(spec, SetToolDescription(server="core", tool="search_memory", description=text))
    _, descriptions, _ = await offered(edited, settings)
    assert descriptions["search_memory"] == text
    assert descriptions["calculator"] == CORE_TOOL_DESCRIPTIONS["calculator"]


async def test_set_memory_param_top_k_limits_search_memory_hits(settings):
    facts = [f"tea fact number {i}" for i in range(4)]
    seed = AIMessage(
        content="",
        tool_calls=[
            {"name": "remember", "args": {"text": f}, "id": f"r{i}", "type": "tool_call"}
            for i, f in enumerate(facts)
        ],
    )
    spec = Spec()
    model = ScriptedChatModel(script=[seed, tool_call("search_memory", {"query": "tea"}), "done"])
    res = await run_assistant(spec, settings, "remember these", model=model, persist=False)
    assert res.trace.status == "ok", res.trace.error
    search = res.trace.tool_calls[-1]
    assert search.name == "search_memory"
    assert len(search.result.splitlines()) == 4  # default top_k = 5 shows all four

    edited = apply(spec, SetMemoryParam(param="top_k", value=2))
    model = ScriptedChatModel(script=[tool_call("search_memory", {"query": "tea"}), "done"])
    res = await run_assistant(edited, settings, "what about tea?", model=model, persist=False)
    hits = res.trace.tool_calls[0].result.splitlines()
    assert len(hits) == 2 and all("tea fact number" in h for h in hits)


# --------------------------------------------------------------------------- rendering


def round_trip(expression: str):
    """A loopback engine that calls the calculator on every odd request and answers on every
    even one (constrained JSON; a native request gets the call as JSON text)."""
    count = {"n": 0}

    def handle(request) -> dict:
        body = request.json or {}
        count["n"] += 1
        call = {"tool": "calculator", "arguments": {"expression": expression}}
        reply = call if count["n"] % 2 else {"answer": "42"}
        return chat_completion(json.dumps(reply), model=body.get("model", "x"))

    return handle


async def round_trip_bodies(spec: Spec, settings, http_stub, expression="6 * 7") -> list[dict]:
    """The two request bodies of a run that calls the calculator once, then answers."""
    http_stub.handler = round_trip(expression)
    before = len(http_stub.bodies)
    res = await run_assistant(spec, settings, "6*7?", tools=[calculator], persist=False)
    assert res.trace.status == "ok", res.trace.error
    assert res.trace.tool_calls[0].name == "calculator"
    bodies = http_stub.bodies[before:]
    assert len(bodies) == 2
    return bodies


def _system(body: dict) -> str:
    return body["messages"][0]["content"]


def _branches(body: dict) -> list[dict]:
    return body["response_format"]["json_schema"]["schema"]["anyOf"]


@pytest.mark.parametrize(
    ("param", "value", "seen"),
    [
        ("catalog_arguments", "full_schema", lambda b: "Arguments (JSON schema)" in _system(b[0])),
        ("catalog_arguments", "descriptions", lambda b: "  Arguments:\n" in _system(b[0])),
        ("reply_protocol", "explicit", lambda b: "never write a tool result" in _system(b[0])),
        ("parallel_calls", True, lambda b: any(x.get("type") == "array" for x in _branches(b[0]))),
        (
            "calls_as_list",
            True,
            lambda b: (
                [x.get("type") for x in _branches(b[0])] == ["array", "object"]
                and isinstance(json.loads(b[1]["messages"][-2]["content"]), list)
            ),
        ),
        ("result_framing", "tool_message", lambda b: b[1]["messages"][-1]["role"] == "tool"),
        (
            "few_shot_style",
            "system_block",
            lambda b: "## Examples" in _system(b[0]) and len(b[0]["messages"]) == 2,
        ),
    ],
)
async def test_set_rendering_param_changes_what_the_engine_is_sent(
    settings, http_stub, param, value, seen
):
    spec = http_spec(http_stub.url("/v1"))  # constrained_json, the default few-shot examples
    assert not seen(await round_trip_bodies(spec, settings, http_stub))
    edited = apply(spec, SetRenderingParam(param=param, value=value))
    assert getattr(edited.agent.rendering, param) == value
    assert seen(await round_trip_bodies(edited, settings, http_stub))


async def test_set_rendering_param_result_framing_in_native_mode(settings, http_stub):
    spec = http_spec(http_stub.url("/v1"), tool_call_format="native")
    bodies = await round_trip_bodies(spec, settings, http_stub)  # the call comes as JSON text
    assert bodies[1]["messages"][-1]["role"] == "tool"
    assert "tools" in bodies[1]
    edited = apply(spec, SetRenderingParam(param="result_framing", value="user_message"))
    bodies = await round_trip_bodies(edited, settings, http_stub)
    last, call = bodies[1]["messages"][-1], bodies[1]["messages"][-2]
    assert last == {"role": "user", "content": "Tool calculator returned:\n42"}
    assert json.loads(call["content"]) == {
        "name": "calculator",
        "arguments": {"expression": "6 * 7"},
    }
    assert "tool_calls" not in call


@pytest.mark.parametrize(
    ("param", "text", "expression", "expected"),
    [
        (
            "result_template",
            '<tool_result name="{name}">{result}</tool_result>',
            "6 * 7",
            '<tool_result name="calculator">42</tool_result>',
        ),
        ("error_template", "{name} failed: {result}", "oops", "calculator failed: Error: "),
        (
            "continuation",
            "Call another tool or give the final answer.",
            "6 * 7",
            "Tool calculator returned:\n42\n\nCall another tool or give the final answer.",
        ),
    ],
)
async def test_set_rendering_text_changes_how_tool_results_come_back(
    settings, http_stub, param, text, expression, expected
):
    spec = http_spec(http_stub.url("/v1"))
    bodies = await round_trip_bodies(spec, settings, http_stub, expression)
    assert not bodies[1]["messages"][-1]["content"].startswith(expected)
    edited = apply(spec, SetRenderingText(param=param, text=text))
    bodies = await round_trip_bodies(edited, settings, http_stub, expression)
    assert bodies[1]["messages"][-1]["content"].startswith(expected)
    # an emptied continuation is no continuation
    if param == "continuation":
        back = apply(edited, SetRenderingText(param="continuation", text=""))
        bodies = await round_trip_bodies(back, settings, http_stub, expression)
        assert bodies[1]["messages"][-1]["content"] == "Tool calculator returned:\n42"


async def test_set_rendering_text_no_tool_rule_reaches_the_system_message(settings, engine):
    url, bodies = engine
    rule = "If no tool can do what is asked, call none: answer and say so."
    spec = http_spec(url)
    assert rule not in (await engine_request(spec, settings, bodies))["messages"][0]["content"]
    edited = apply(spec, SetRenderingText(param="no_tool_rule", text=rule))
    system = (await engine_request(edited, settings, bodies))["messages"][0]["content"]
    assert rule in system.split("## How to reply", 1)[1]


def test_every_op_of_the_union_has_an_effect_test():
    ops = {cls.model_fields["op"].default for cls in typing.get_args(typing.get_args(EditOp)[0])}
    assert ops == set(OP_NAMES)
    effect_tests = {
        "set_generation_param": test_set_generation_param_reaches_the_engine_request,
        "set_model": test_set_model_changes_the_model_the_engine_is_asked_for,
        "train_lora": test_train_lora_is_not_available_and_is_manual,
        "set_engine_param": test_set_engine_param_tool_call_format_switches_the_wire_protocol,
        "replace_system_prompt": test_system_prompt_edits_change_the_system_message_of_a_run,
        "patch_system_prompt": test_system_prompt_edits_change_the_system_message_of_a_run,
        "set_agent_loop": test_set_agent_loop_changes_the_model_calls_of_a_run,
        "set_agent_param": test_set_agent_param_max_turns_stops_the_run_sooner,
        "edit_few_shot": test_edit_few_shot_add_remove_replace_change_the_messages,
        "add_verifier": test_add_verifier_sends_a_failing_answer_back_with_feedback,
        "add_tool": test_remove_tool_and_add_tool_change_what_the_model_is_offered,
        "remove_tool": test_remove_tool_and_add_tool_change_what_the_model_is_offered,
        "set_tool_description": test_set_tool_description_is_what_the_model_sees,
        "set_memory_param": test_set_memory_param_top_k_limits_search_memory_hits,
        "set_rendering_param": test_set_rendering_param_changes_what_the_engine_is_sent,
        "set_rendering_text": test_set_rendering_text_changes_how_tool_results_come_back,
    }
    assert set(effect_tests) == ops


# ------------------------------------------------------------------------ apply: purity, compound


def test_apply_proposal_is_pure():
    spec = Spec()
    spec.agent.few_shot = [FewShotExample(user="u", assistant="a")]
    data, digest = spec.to_data(), spec.content_hash()
    new = apply(
        spec,
        SetGenerationParam(param="temperature", value=0.5),
        EditFewShot(action="add", example=FewShotExample(user="u2", assistant="a2")),
        RemoveTool(server="core", tool="think"),
        SetToolDescription(server="core", tool="calculator", description="Math."),
        AddVerifier(verifier=VerifierSpec(kind="non_empty")),
    )
    assert spec.to_data() == data and spec.content_hash() == digest
    assert spec.tools.servers[0].disabled == [] and len(spec.agent.few_shot) == 1
    assert new.content_hash() != digest
    assert new is not spec and new.tools.servers[0] is not spec.tools.servers[0]


def test_a_failing_proposal_leaves_the_spec_unchanged():
    spec = Spec()
    digest = spec.content_hash()
    with pytest.raises(EditError):
        apply(
            spec,
            SetGenerationParam(param="temperature", value=0.5),
            SetAgentParam(param="max_turns", value=0),
        )
    assert spec.content_hash() == digest and spec.intelligence.temperature == 0.0


async def test_compound_proposal_applies_every_op_across_primitives(settings):
    spec = Spec()
    proposal = Proposal(
        target_cluster="memory-recall",
        rationale="the model forgets to look things up",
        ops=[
            SetGenerationParam(param="temperature", value=0.2),
            SetEngineParam(param="timeout_s", value=60),
            PatchSystemPrompt(mode="append", text="Search memory before saying you don't know."),
            SetAgentParam(param="tool_policy", value="required_first"),
            RemoveTool(server="core", tool="read_file"),
            SetMemoryParam(param="top_k", value=3),
        ],
    )
    assert proposal.primitives() == ["agent", "engine", "intelligence", "memory", "tools"]
    new = apply_proposal(spec, proposal)
    assert new.intelligence.temperature == 0.2
    assert new.engine.timeout_s == 60.0
    assert new.agent.system_prompt.endswith("\nSearch memory before saying you don't know.")
    assert new.agent.tool_policy == "required_first"
    assert new.tools.server("core").disabled == ["read_file"]
    assert new.memory.top_k == 3
    assert risk_tier(proposal, spec) == "review"
    # and together they take effect in one run
    model = ScriptedChatModel(script=[tool_call("think", {"thought": "x"}), "ok"])
    await run_assistant(new, settings, "q", model=model, persist=False)
    first = model.calls[0]
    assert first["tool_choice"] == "required"
    assert "read_file" not in first["tools"] and "calculator" in first["tools"]
    assert first["messages"][0].content == new.agent.system_prompt


# --------------------------------------------------------------------------- invalid edits


@pytest.mark.parametrize(
    ("op", "op_name", "field"),
    [
        (
            SetGenerationParam(param="temperature", value=3),
            "set_generation_param",
            "intelligence.temperature",
        ),
        (
            SetGenerationParam(param="top_k", value=2.5),
            "set_generation_param",
            "intelligence.top_k",
        ),
        (
            SetEngineParam(param="context_length", value="big"),
            "set_engine_param",
            "engine.context_length",
        ),
        (SetEngineParam(param="threads", value=-2), "set_engine_param", "engine.threads"),
        (
            SetEngineParam(param="tool_call_format", value="xml"),
            "set_engine_param",
            "engine.tool_call_format",
        ),
        (SetAgentParam(param="max_turns", value=0), "set_agent_param", "agent.max_turns"),
        (SetAgentParam(param="max_turns", value=True), "set_agent_param", "agent.max_turns"),
        (SetAgentParam(param="repeat_guard", value=0), "set_agent_param", "agent.repeat_guard"),
        (SetAgentParam(param="tool_policy", value=3), "set_agent_param", "agent.tool_policy"),
        (SetMemoryParam(param="top_k", value=0), "set_memory_param", "memory.top_k"),
        (
            PatchSystemPrompt(mode="replace_text", old="no such words", text="x"),
            "patch_system_prompt",
            "agent.system_prompt",
        ),
        (EditFewShot(action="remove", index=7), "edit_few_shot", "agent.few_shot"),
        (
            SetRenderingParam(param="parallel_calls", value="full_schema"),
            "set_rendering_param",
            "agent.rendering.parallel_calls",
        ),
        (
            SetRenderingParam(param="few_shot_style", value=True),
            "set_rendering_param",
            "agent.rendering.few_shot_style",
        ),
        (
            SetRenderingParam(param="catalog_arguments", value="system_block"),
            "set_rendering_param",
            "agent.rendering.catalog_arguments",
        ),
        (
            SetRenderingText(param="result_template", text="no placeholder"),
            "set_rendering_text",
            "agent.rendering.result_template",
        ),
        (
            SetRenderingText(param="error_template", text="{tool}: {result}"),
            "set_rendering_text",
            "agent.rendering.error_template",
        ),
        (EditFewShot(action="add"), "edit_few_shot", "edit_few_shot add needs an example"),
        (
            SetToolDescription(server="core", tool="calculator", description="   "),
            "set_tool_description",
            "tools.servers[0].descriptions",
        ),
        (
            SetToolDescription(server="nope", tool="calculator", description="d"),
            "set_tool_description",
            "no tool server named 'nope'",
        ),
    ],
)
def test_an_op_that_makes_an_invalid_spec_names_op_and_field(op, op_name, field):
    with pytest.raises(EditError) as err:
        apply(Spec(), op)
    message = str(err.value)
    assert op_name in message and field in message


def test_invalid_op_in_a_compound_proposal_is_named_by_position():
    spec = Spec()
    spec.engine = spec.engine.model_validate(
        {**spec.engine.model_dump(), "backend": "anthropic", "tool_call_format": "native"}
    )
    with pytest.raises(EditError, match=r"op 1 \(set_engine_param\): engine: .*constrained"):
        apply(
            spec,
            SetModel(model="claude"),
            SetEngineParam(param="tool_call_format", value="constrained_json"),
        )


def test_add_tool_and_remove_tool_errors_when_not_applicable():
    spec = Spec()
    with pytest.raises(EditError, match=r"add_tool.*'calculator' of 'core' is already offered"):
        apply(spec, AddTool(server="core", tool="calculator"))
    without = apply(spec, RemoveTool(server="core", tool="calculator"))
    with pytest.raises(EditError, match=r"remove_tool.*'calculator' of 'core' is not offered"):
        apply(without, RemoveTool(server="core", tool="calculator"))
    with pytest.raises(EditError, match=r"no tool server named 'files' \(servers: core\)"):
        apply(spec, AddTool(server="files", tool="read"))
    with pytest.raises(EditError, match="no tool server named 'files'"):
        apply(spec, RemoveTool(server="files", tool="read"))

    listed = Spec()
    listed.tools.servers[0].enabled = ["calculator"]
    with pytest.raises(EditError, match="'think' of 'core' is not offered"):
        apply(listed, RemoveTool(server="core", tool="think"))


# --------------------------------------------------------------------------- TOML round trip

TRICKY = [
    "Say \"hello\" and 'bye'.",
    'Line one\nLine "two"\n"""\nafter a triple quote',
    'ends with a triple quote """',
    "back\\slash at line end \\\n  next",
    "windows\r\nline and a tab\tand ''' single triples",
    "unicode: ü — ☕ and a control \x01",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_values_survive_a_toml_round_trip_after_apply(text):
    spec = apply(
        Spec(),
        ReplaceSystemPrompt(text=text),
        PatchSystemPrompt(mode="append", text=text),
        EditFewShot(action="add", example=FewShotExample(user=text, assistant=text)),
        SetToolDescription(server="core", tool="think", description=text),
        AddVerifier(verifier=VerifierSpec(kind="non_empty", feedback=text)),
    )
    back = parse_spec(render_spec(spec))
    assert back.content_hash() == spec.content_hash()
    assert back.agent.system_prompt == f"{text.rstrip()}\n{text}"
    assert back.agent.few_shot[-1].user == text
    assert back.tools.server("core").descriptions["think"] == text
    # and through an existing file's text (the path `save_spec` takes)
    previous = render_spec(Spec())
    assert parse_spec(render_spec(spec, previous)).content_hash() == spec.content_hash()


async def test_an_applied_tricky_prompt_saved_and_loaded_is_what_the_model_gets(settings, tmp_path):
    path = tmp_path / "spec.toml"
    save_spec(agent_spec("simple"), path)
    text = 'You said """hi""".\nQuote: "x" \\ done'
    save_spec(apply(load_spec(path), ReplaceSystemPrompt(text=text)), path)
    assert await system_message(load_spec(path), settings) == text


# --------------------------------------------------------------------------- risk tiers


@pytest.mark.parametrize(
    ("ops", "tier"),
    [
        ([SetGenerationParam(param="temperature", value=0.3)], "auto"),
        (
            [
                SetModel(model="m"),
                RemoveTool(server="core", tool="think"),
                SetMemoryParam(param="top_k", value=2),
            ],
            "auto",
        ),
        ([PatchSystemPrompt(mode="append", text="x")], "review"),
        ([SetRenderingParam(param="few_shot_style", value="system_block")], "auto"),
        ([SetRenderingText(param="continuation", text="Go on.")], "review"),
        ([SetAgentLoop(loop="simple")], "review"),
        (
            [
                SetGenerationParam(param="top_p", value=0.5),
                AddVerifier(verifier=VerifierSpec(kind="non_empty")),
            ],
            "review",
        ),
        (
            [
                SetModel(model="m"),
                EditFewShot(action="add", example=FewShotExample(user="u", assistant="a")),
                TrainLora(),
            ],
            "manual",
        ),
    ],
)
def test_risk_tier_is_the_strictest_op(ops, tier):
    assert risk_tier(Proposal(target_cluster="c", ops=ops), Spec()) == tier


def test_tier_overrides_from_the_spec_apply():
    text = '[learning.tier_overrides]\npatch_system_prompt = "auto"\nset_model = "manual"\n'
    spec = parse_spec(text)
    patch = Proposal(target_cluster="c", ops=[PatchSystemPrompt(mode="append", text="x")])
    assert risk_tier(patch, Spec()) == "review"
    assert risk_tier(patch, spec) == "auto"
    model = Proposal(
        target_cluster="c", ops=[SetModel(model="m"), SetGenerationParam(param="seed", value=1)]
    )
    assert risk_tier(model, Spec()) == "auto"
    assert risk_tier(model, spec) == "manual"


def test_unknown_op_in_tier_overrides_is_a_spec_error():
    with pytest.raises(SpecError) as err:
        parse_spec('[learning.tier_overrides]\nrewrite_everything = "auto"\n')
    assert "learning.tier_overrides" in str(err.value)
    assert "rewrite_everything" in str(err.value)
    with pytest.raises(SpecError, match="learning.tier_overrides"):
        parse_spec('[learning.tier_overrides]\nset_model = "whenever"\n')


def test_a_proposal_cannot_carry_its_own_tier():
    with pytest.raises(ValidationError):
        Proposal.model_validate(
            {"target_cluster": "c", "tier": "auto", "ops": [{"op": "set_model", "model": "m"}]}
        )


# --------------------------------------------------------------------------- Proposal JSON


def every_op() -> list:
    return [
        SetGenerationParam(param="seed", value=7),
        SetModel(model="qwen"),
        TrainLora(steps=5, rank=4),
        SetEngineParam(param="tool_call_format", value="native"),
        SetEngineParam(param="timeout_s", value=12.5),
        ReplaceSystemPrompt(text='Be "exact".\n"""'),
        PatchSystemPrompt(mode="replace_text", old="exact", text="precise"),
        SetAgentLoop(loop="plan_execute"),
        SetAgentParam(param="max_turns", value=3),
        SetAgentParam(param="repeat_guard", value=False),
        SetAgentParam(param="tool_policy", value="none"),
        EditFewShot(action="add", example=FewShotExample(user="u", assistant="a")),
        AddVerifier(verifier=VerifierSpec(kind="regex", pattern=r"\d+", retries=2)),
        RemoveTool(server="core", tool="think"),
        AddTool(server="core", tool="think"),
        SetToolDescription(server="core", tool="calculator", description="Math only."),
        SetMemoryParam(param="top_k", value=9),
        SetRenderingParam(param="parallel_calls", value=True),
        SetRenderingParam(param="catalog_arguments", value="full_schema"),
        SetRenderingText(param="continuation", text="Call another tool or answer."),
    ]


def test_proposal_json_round_trips_through_the_discriminated_union():
    proposal = Proposal(target_cluster="arith", ops=every_op(), rationale="r", proposer="llm")
    back = Proposal.model_validate_json(proposal.model_dump_json())
    assert back == proposal
    assert [type(o) for o in back.ops] == [type(o) for o in proposal.ops]
    assert back.ops[9].value is False  # not 0
    assert type(back.ops[8].value) is int and back.ops[10].value == "none"
    assert {o.op for o in back.ops} == set(OP_NAMES)

    applicable = Proposal(
        target_cluster="arith", ops=[o for o in back.ops if not isinstance(o, TrainLora)]
    )
    original = Proposal(
        target_cluster="arith", ops=[o for o in proposal.ops if not isinstance(o, TrainLora)]
    )
    assert (
        apply_proposal(Spec(), applicable).content_hash()
        == apply_proposal(Spec(), original).content_hash()
    )


def test_proposal_from_teacher_json_picks_the_op_by_its_name():
    raw = json.dumps(
        {
            "target_cluster": "loops",
            "ops": [
                {"op": "set_agent_param", "param": "repeat_guard", "value": True},
                {"op": "set_agent_param", "param": "max_plan_steps", "value": 2},
                {"op": "patch_system_prompt", "mode": "append", "text": "Stop when done."},
            ],
        }
    )
    proposal = Proposal.model_validate_json(raw)
    assert [type(o) for o in proposal.ops] == [SetAgentParam, SetAgentParam, PatchSystemPrompt]
    new = apply_proposal(agent_spec(repeat_guard=False), proposal)
    assert new.agent.repeat_guard is True and new.agent.max_plan_steps == 2
    assert "set_agent_param(param='repeat_guard', value=True)" in describe_proposal(proposal)

    with pytest.raises(ValidationError):
        Proposal.model_validate_json(
            json.dumps({"target_cluster": "c", "ops": [{"op": "rewrite_toml", "text": "x"}]})
        )
    with pytest.raises(ValidationError):
        Proposal.model_validate_json(json.dumps({"target_cluster": "c", "ops": []}))
    with pytest.raises(ValidationError):  # a typo'd field is not silently dropped
        Proposal.model_validate_json(
            json.dumps({"target_cluster": "c", "ops": [{"op": "set_model", "modle": "x"}]})
        )


def test_tool_servers_other_than_core_are_edited_by_name():
    spec = Spec()
    spec.tools.servers.append(
        ToolServerSpec(name="shout", kind="stdio", command="python", enabled=["shout"])
    )
    new = apply(
        spec,
        AddTool(server="shout", tool="counter"),
        SetToolDescription(server="shout", tool="shout", description="Loud."),
    )
    assert new.tools.server("shout").enabled == ["shout", "counter"]
    assert new.tools.server("shout").descriptions == {"shout": "Loud."}
    assert new.tools.server("core") == spec.tools.server("core")
    with pytest.raises(EditError, match=r"tools.servers\[1\].descriptions"):
        apply(spec, SetToolDescription(server="shout", tool="shout", description=" \n"))
