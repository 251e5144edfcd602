"""The three loops, driven by a scripted chat model: what the user sees in the trace, and
why each run stopped (one test per StopReason)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.engines.tool_calls import ToolCallingChatModel
from homespun.graphs import runner as runner_mod
from homespun.graphs.assistant import parse_plan, prompt_messages
from homespun.graphs.runner import run_assistant
from homespun.spec import FewShotExample, RenderingSpec, Spec, VerifierSpec
from homespun.stores.traces import StopReason, Trace, TraceStore


@tool
def calculator(expression: str) -> str:
    """Multiply two numbers written as 'a * b'."""
    a, b = (int(x) for x in expression.split("*"))
    return str(a * b)


def spec_with(loop: str = "react", **agent) -> Spec:
    spec = Spec()
    spec.agent.loop = loop
    for k, v in agent.items():
        setattr(spec.agent, k, v)
    return spec


async def test_simple_loop_makes_one_call_without_tools(settings):
    model = ScriptedChatModel(script=["Hello!"])
    res = await run_assistant(spec_with("simple"), settings, "hi", model=model, tools=[calculator])
    assert res.trace.status == "ok" and res.answer == "Hello!"
    assert len(model.calls) == 1
    assert model.calls[0]["tools"] == []  # the simple loop offers no tools


async def test_react_loop_calls_tool_then_answers(settings):
    model = ScriptedChatModel(
        script=[tool_call("calculator", {"expression": "37 * 41"}), "37 * 41 = 1517"]
    )
    res = await run_assistant(
        spec_with("react"), settings, "37*41?", model=model, tools=[calculator]
    )
    t = res.trace
    assert t.status == "ok" and t.final_answer == "37 * 41 = 1517"
    assert [(c.name, c.arguments, c.result) for c in t.tool_calls] == [
        ("calculator", {"expression": "37 * 41"}, "1517")
    ]
    # the second call saw the tool's result
    assert "1517" in str(model.calls[1]["messages"][-1].content)
    assert t.model_calls == 2 and t.prompt_tokens == 20 and t.completion_tokens == 10
    assert t.stop_reason is StopReason.ANSWERED
    # and the trace is on disk, not only in memory
    stored = TraceStore(settings.traces_db).get(t.id)
    assert stored.tool_calls[0].result == "1517" and stored.stop_reason is StopReason.ANSWERED


async def test_react_loop_stops_at_max_turns_and_records_an_error(settings):
    model = ScriptedChatModel(script=[tool_call("calculator", {"expression": "1 * 1"})] * 3)
    res = await run_assistant(
        spec_with("react", max_turns=3), settings, "loop forever", model=model, tools=[calculator]
    )
    assert res.trace.status == "error"
    assert res.trace.error == "turn limit: 3 model calls used without a final answer"
    assert res.trace.stop_reason is StopReason.TURN_LIMIT
    assert TraceStore(settings.traces_db).get(res.trace.id).stop_reason is StopReason.TURN_LIMIT
    assert len(model.calls) == 3


async def test_plan_execute_stops_at_max_turns_with_the_turn_limit_reason(settings):
    model = ScriptedChatModel(
        script=[
            "1. Multiply\n2. Multiply again",
            tool_call("calculator", {"expression": "2 * 2"}),
            tool_call("calculator", {"expression": "3 * 3"}),
        ]
    )
    res = await run_assistant(
        spec_with("plan_execute", max_turns=3), settings, "q", model=model, tools=[calculator]
    )
    assert res.trace.status == "error" and res.trace.stop_reason is StopReason.TURN_LIMIT


async def test_unknown_tool_and_bad_arguments_reach_the_model_as_errors(settings):
    model = ScriptedChatModel(
        script=[
            tool_call("weather", {"city": "Oslo"}),
            tool_call("calculator", {"wrong": 1}),
            "sorry",
        ]
    )
    res = await run_assistant(spec_with("react"), settings, "q", model=model, tools=[calculator])
    first, second = res.trace.tool_calls
    assert "unknown tool 'weather'" in first.error and "calculator" in first.error
    assert second.error and second.result is None
    assert res.trace.status == "ok"


async def test_plan_execute_plans_runs_each_step_then_answers(settings):
    model = ScriptedChatModel(
        script=[
            "1. Multiply with the calculator\n2. Report the product",
            tool_call("calculator", {"expression": "6 * 7"}),
            "The product is 42.",
            "Reported.",
            "42",
        ]
    )
    res = await run_assistant(
        spec_with("plan_execute"), settings, "6*7?", model=model, tools=[calculator]
    )
    assert res.trace.status == "ok" and res.answer == "42"
    assert [c.result for c in res.trace.tool_calls] == ["42"]
    plan_call, step1, _, step2, answer = model.calls
    assert plan_call["tools"] == [] and answer["tools"] == []
    assert step1["tools"] == ["calculator"]
    assert "step 1 of 2" in step1["messages"][-1].content
    assert "step 2 of 2" in step2["messages"][-1].content


def test_parse_plan_handles_numbers_bullets_and_prose():
    assert parse_plan("1. a\n2) b\n- c\nnoise", 5) == ["a", "b", "c"]
    assert parse_plan("just do it", 5) == ["just do it"]
    assert parse_plan("1. a\n2. b\n3. c", 2) == ["a", "b"]


async def test_system_prompt_and_few_shot_come_from_the_spec(settings):
    spec = spec_with(
        "simple",
        system_prompt="You are a pirate.",
        few_shot=[FewShotExample(user="2+2?", assistant="4, arr")],
    )
    model = ScriptedChatModel(script=["Arr"])
    await run_assistant(spec, settings, "hi", model=model, tools=[])
    sent = model.calls[0]["messages"]
    assert isinstance(sent[0], SystemMessage) and sent[0].content == "You are a pirate."
    assert [m.content for m in sent[1:]] == ["2+2?", "4, arr", "hi"]


async def test_tool_policy_required_first_and_none(settings):
    model = ScriptedChatModel(script=[tool_call("calculator", {"expression": "2 * 2"}), "4"])
    await run_assistant(
        spec_with("react", tool_policy="required_first"),
        settings,
        "2*2",
        model=model,
        tools=[calculator],
    )
    assert [c["tool_choice"] for c in model.calls] == ["required", None]

    model = ScriptedChatModel(script=["no tools here"])
    await run_assistant(
        spec_with("react", tool_policy="none"), settings, "2*2", model=model, tools=[calculator]
    )
    assert model.calls[0]["tools"] == []


async def test_verifier_sends_the_agent_back_once(settings):
    spec = spec_with(
        "react",
        verifiers=[VerifierSpec(kind="regex", pattern=r"\d+", feedback="Answer with a number.")],
    )
    model = ScriptedChatModel(script=["about forty", "42"])
    res = await run_assistant(spec, settings, "6*7?", model=model, tools=[calculator])
    assert res.answer == "42"
    retry = model.calls[1]["messages"][-1]
    assert isinstance(retry, HumanMessage) and retry.content == "Answer with a number."
    assert res.trace.stop_reason is StopReason.ANSWERED  # the retry passed


async def test_an_answer_that_still_fails_the_verifier_stops_as_verifier_failed(settings):
    spec = spec_with(
        "react",
        verifiers=[
            VerifierSpec(kind="regex", pattern=r"\d+", retries=1, feedback="Answer with a number.")
        ],
    )
    model = ScriptedChatModel(script=["about forty", "roughly forty"])
    res = await run_assistant(spec, settings, "6*7?", model=model, tools=[calculator])
    # The answer stands (status ok), but the trace says the verifier rejected it.
    assert res.trace.status == "ok" and res.answer == "roughly forty"
    assert res.trace.stop_reason is StopReason.VERIFIER_FAILED
    assert len(model.calls) == 2


async def test_conversation_persists_on_a_thread(settings):
    def count_questions(msgs):
        return f"seen {sum(isinstance(m, HumanMessage) for m in msgs)}"

    model = ScriptedChatModel(script=["Nice to meet you, Ada.", count_questions])
    spec = spec_with("simple", few_shot=[])
    await run_assistant(spec, settings, "I am Ada", model=model, tools=[], thread_id="t1")
    res = await run_assistant(spec, settings, "Who am I?", model=model, tools=[], thread_id="t1")
    assert res.answer == "seen 2"  # the first question came back from threads.db
    assert settings.threads_db.exists()


async def test_a_model_that_raises_leaves_an_error_trace(settings):
    model = ScriptedChatModel(script=[])  # raises on the first call
    res = await run_assistant(spec_with("react"), settings, "q", model=model, tools=[])
    assert res.trace.status == "error"
    # the engine's own exception, named as before
    assert res.trace.error == "RuntimeError: scripted model ran out of replies after 0 calls"
    assert res.trace.stop_reason is StopReason.ENGINE_ERROR
    stored = TraceStore(settings.traces_db).get(res.trace.id)
    assert stored.status == "error" and stored.latency_s is not None
    assert stored.stop_reason is StopReason.ENGINE_ERROR


class _NoToolsModel(ScriptedChatModel):
    def bind_tools(self, tools, **kwargs):
        raise NotImplementedError("this engine cannot call tools")


async def test_a_model_that_cannot_take_tools_is_an_engine_error(settings):
    res = await run_assistant(
        spec_with("react"), settings, "q", model=_NoToolsModel(script=["a"]), tools=[calculator]
    )
    assert res.trace.stop_reason is StopReason.ENGINE_ERROR
    assert res.trace.error == "NotImplementedError: this engine cannot call tools"


async def test_tools_that_cannot_be_loaded_stop_as_a_tool_error(settings):
    spec = spec_with("react")
    spec.tools.servers[0].enabled = ["calculator", "teleport"]
    res = await run_assistant(spec, settings, "q", model=ScriptedChatModel(script=["x"]))
    assert res.trace.status == "error" and res.trace.stop_reason is StopReason.TOOL_ERROR
    assert "ToolLoadError" in res.trace.error and "'teleport'" in res.trace.error


async def test_a_failing_tool_call_does_not_stop_the_run(settings):
    @tool
    async def broken(x: str) -> str:
        """Always fails."""
        raise OSError("disk on fire")

    model = ScriptedChatModel(script=[tool_call("broken", {"x": "1"}), "it failed"])
    res = await run_assistant(spec_with("react"), settings, "q", model=model, tools=[broken])
    assert "OSError: disk on fire" in res.trace.tool_calls[0].error  # the model saw it
    assert res.trace.status == "ok" and res.trace.stop_reason is StopReason.ANSWERED


async def test_any_other_failure_is_an_internal_error(settings, monkeypatch):
    # Too few graph steps for one tool round trip: LangGraph's recursion limit stops the run.
    monkeypatch.setattr(runner_mod, "recursion_limit", lambda spec: 2)
    model = ScriptedChatModel(script=[tool_call("calculator", {"expression": "1 * 1"}), "1"])
    res = await run_assistant(spec_with("react"), settings, "q", model=model, tools=[calculator])
    assert res.trace.status == "error" and res.trace.stop_reason is StopReason.INTERNAL_ERROR
    assert res.trace.error.startswith("GraphRecursionError")


def test_a_graph_that_ends_without_an_answer_stops_as_no_answer():
    # No loop ends this way today (a tool call left hanging always goes to turn_limit);
    # the runner still names it if one ever does.
    t = Trace(
        id="x",
        created_at=0.0,
        query="q",
        spec_hash="h",
        thread_id="t",
        loop="react",
        model="m",
        backend="b",
    )
    runner_mod._fill_trace(t, [tool_call("calculator", {"expression": "1 * 1"})], {}, 3)
    assert t.status == "error" and t.stop_reason is StopReason.NO_ANSWER
    assert t.error == "the run ended without a final answer"


async def test_a_cancelled_run_says_so_in_its_trace(settings):
    started = asyncio.Event()

    @tool
    async def slow(x: str) -> str:
        """Takes a long time."""
        started.set()
        await asyncio.sleep(60)
        return "late"

    model = ScriptedChatModel(script=[tool_call("slow", {"x": "1"}), "never"])
    store = TraceStore(settings.traces_db)
    task = asyncio.create_task(
        run_assistant(spec_with("react"), settings, "q", model=model, tools=[slow], store=store)
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (row,) = store.list()
    assert row.stop_reason is StopReason.CANCELLED
    assert row.status == "running" and row.latency_s is not None  # finished, not answered


async def test_streaming_delivers_answer_tokens_only(settings):
    model = ScriptedChatModel(
        script=[tool_call("calculator", {"expression": "2 * 3"}), "the answer is 6"]
    )
    tokens: list[str] = []
    res = await run_assistant(
        spec_with("react"), settings, "2*3", model=model, tools=[calculator], on_token=tokens.append
    )
    assert "".join(tokens) == "the answer is 6" == res.answer
    assert len(tokens) > 1


@pytest.mark.parametrize("loop", ["simple", "react", "plan_execute"])
async def test_every_loop_records_a_trace_row(settings, loop):
    script = {"simple": ["a"], "react": ["a"], "plan_execute": ["1. x", "done", "a"]}[loop]
    res = await run_assistant(
        spec_with(loop), settings, "q", model=ScriptedChatModel(script=script), tools=[calculator]
    )
    row = TraceStore(settings.traces_db).get(res.trace.id)
    assert row.loop == loop and row.status == "ok" and row.final_answer == "a"


async def test_repeat_guard_asks_for_the_answer_instead_of_rerunning_a_tool(settings):
    again = tool_call("calculator", {"expression": "37 * 41"})
    model = ScriptedChatModel(
        script=[tool_call("calculator", {"expression": "37 * 41"}), again, "1517"]
    )
    res = await run_assistant(
        spec_with("react"), settings, "37*41?", model=model, tools=[calculator]
    )
    assert res.trace.status == "ok" and res.answer == "1517"
    assert len(res.trace.tool_calls) == 1  # the repeat was not run
    last = model.calls[2]
    assert last["tools"] == [] and "Do not call it again" in last["messages"][-1].content
    assert res.trace.completion_tokens == 15  # the discarded repeat's tokens still count
    assert res.trace.stop_reason is StopReason.REPEAT_GUARD

    model = ScriptedChatModel(script=[tool_call("calculator", {"expression": "37 * 41"})] * 3)
    res = await run_assistant(
        spec_with("react", repeat_guard=False, max_turns=3),
        settings,
        "37*41?",
        model=model,
        tools=[calculator],
    )
    assert res.trace.status == "error" and len(res.trace.tool_calls) == 3
    assert res.trace.stop_reason is StopReason.TURN_LIMIT


# --------------------------------------------------------------------------- tool calls as text


def engine(fmt: str, *script, rendering: RenderingSpec | None = None) -> ToolCallingChatModel:
    """The engine wrapper the runtime uses, around a scripted backend."""
    return ToolCallingChatModel(
        inner=ScriptedChatModel(script=list(script)),
        tool_call_format=fmt,
        rendering=rendering or RenderingSpec(),
    )


CUT_OFF_CALL = AIMessage(
    content="Let me compute that.\n"
    '```json\n{"name": "calculator", "arguments": {"expression": "12 *',
    response_metadata={"finish_reason": "length"},
)


@pytest.mark.parametrize(
    ("fmt", "reply"),
    [
        ("native", CUT_OFF_CALL),  # cut off by max_tokens mid-JSON
        ("native", '```json\n{"name": "calculator", "arguments": {"expression": "12 * 13",}}\n```'),
        ("constrained_json", '{"tool": "calculator", "arguments": {"expression": "12 *'),
        ("constrained_json", '{"tool": "weather", "arguments": {"city": "Oslo"}}'),
    ],
)
@pytest.mark.parametrize("loop", ["react", "plan_execute"])
async def test_an_unreadable_tool_call_is_never_the_answer(settings, fmt, reply, loop):
    script = ["1. Multiply", reply] if loop == "plan_execute" else [reply]
    tokens: list[str] = []
    res = await run_assistant(
        spec_with(loop),
        settings,
        "What is 12 * 13? Use the calculator.",
        model=engine(fmt, *script),
        tools=[calculator],
        on_token=tokens.append,
    )
    t = res.trace
    assert t.status == "error" and t.final_answer is None
    assert t.stop_reason is StopReason.UNPARSED_TOOL_CALL
    assert t.error.startswith("the model wrote a tool call that could not be parsed: ")
    assert t.tool_calls == []
    assert not any("{" in token for token in tokens)  # nothing of the call was shown
    stored = TraceStore(settings.traces_db).get(t.id)
    assert stored.stop_reason is StopReason.UNPARSED_TOOL_CALL and stored.status == "error"


async def test_a_call_written_between_prose_is_run(settings):
    reply = (
        "I'll use the calculator.\n"
        '```json\n{"name": "calculator", "arguments": {"expression": "12 * 13"}}\n```\n'
        "The calculator returned 999."
    )
    model = engine("native", reply, "12 * 13 = 156")
    res = await run_assistant(
        spec_with("react"), settings, "12*13?", model=model, tools=[calculator]
    )
    assert res.trace.status == "ok" and res.answer == "12 * 13 = 156"
    assert [(c.name, c.result) for c in res.trace.tool_calls] == [("calculator", "156")]
    assert res.trace.stop_reason is StopReason.ANSWERED


async def test_parallel_calls_run_in_order_and_every_result_is_fed_back(settings):
    calls = (
        '[{"tool": "calculator", "arguments": {"expression": "2 * 3"}}, '
        '{"tool": "calculator", "arguments": {"expression": "4 * 5"}}]'
    )
    model = engine(
        "constrained_json",
        calls,
        '{"answer": "6 and 20"}',
        rendering=RenderingSpec(parallel_calls=True, continuation="Now answer."),
    )
    res = await run_assistant(
        spec_with("react", few_shot=[]), settings, "2*3 and 4*5?", model=model, tools=[calculator]
    )
    assert res.trace.status == "ok" and res.answer == "6 and 20"
    assert [(c.arguments["expression"], c.result) for c in res.trace.tool_calls] == [
        ("2 * 3", "6"),
        ("4 * 5", "20"),
    ]
    assert res.trace.model_calls == 2  # both calls in one step
    second = model.inner.calls[1]["messages"]
    assert second[-1].content == (
        "Tool calculator returned:\n6\n\nTool calculator returned:\n20\n\nNow answer."
    )


# --------------------------------------------------------------------------- few-shot style

EXAMPLES = [
    FewShotExample(
        user="Where is my passport? Search memory.",
        tool="search_memory",
        arguments={"query": "passport"},
        tool_result="[3] My passport is in the desk drawer.",
        assistant="Your passport is in the desk drawer.",
    ),
    FewShotExample(user="Say hi.", assistant="Hi!"),
]


def test_few_shot_as_turns_is_a_made_up_earlier_exchange():
    spec = spec_with("react", few_shot=EXAMPLES)
    assert spec.agent.rendering.few_shot_style == "turns"  # the default
    sent = prompt_messages(spec.agent, [HumanMessage("What is 12 * 13?")])
    assert [type(m) for m in sent] == [
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
        HumanMessage,
        AIMessage,
        HumanMessage,
    ]
    assert sent[0].content == spec.agent.system_prompt
    assert sent[2].tool_calls[0]["args"] == {"query": "passport"}
    assert sent[4].content == "Your passport is in the desk drawer."


async def test_few_shot_as_a_system_block_is_not_part_of_the_conversation(settings):
    spec = spec_with("react", few_shot=EXAMPLES)
    spec.agent.rendering.few_shot_style = "system_block"
    sent = prompt_messages(spec.agent, [HumanMessage("What is 12 * 13?")], "Answer now.")
    assert [m.content for m in sent[1:]] == ["What is 12 * 13?", "Answer now."]
    system = sent[0].content
    assert system.startswith(spec.agent.system_prompt + "\n\n## Examples\n")
    assert "not part of this conversation" in system
    assert (
        "Example 1\nUser: Where is my passport? Search memory.\n"
        'Tool call: {"tool": "search_memory", "arguments": {"query": "passport"}}\n'
        "Tool result: [3] My passport is in the desk drawer.\n"
        "Answer: Your passport is in the desk drawer.\n\nExample 2\nUser: Say hi.\nAnswer: Hi!"
    ) in system
    assert system.rstrip().endswith("(End of the examples. The conversation follows.)")

    # and in a run, through the constrained_json engine: one system message, then the user
    model = engine("constrained_json", '{"answer": "156"}')
    res = await run_assistant(spec, settings, "12*13?", model=model, tools=[calculator])
    assert res.answer == "156"
    messages = model.inner.calls[0]["messages"]
    assert [m.type for m in messages] == ["system", "human"]
    assert "## Examples" in messages[0].content and "## Tools" in messages[0].content
