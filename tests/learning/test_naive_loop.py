"""The naive-loop baseline (learning.naive_loop), its evaluation and the paired comparison."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from homespun.engines.testing import ScriptedChatModel
from homespun.engines.tool_calls import build_reply_schema
from homespun.learning.benchmarks.starter import StarterBenchmark
from homespun.learning.evaluation import (
    EvalResult,
    compare,
    eval_key,
    evaluate,
    paired_interval,
    t95,
)
from homespun.learning.naive_loop import (
    PROTOCOL,
    Answer,
    BadReply,
    Call,
    naive_key,
    parse_reply,
    run_naive,
    system_prompt,
)
from homespun.learning.tasks import SimpleEnvironment
from homespun.spec import Spec
from homespun.stores.eval_cache import EvalCache, TaskOutcome
from homespun.stores.traces import StopReason, TraceStore
from tests.learning.toy import NaiveAwareStudent, ToyBenchmark
from tests.stubs import chat_completion

# --------------------------------------------------------------------------- tools


def _add(a: int, b: int) -> str:
    return str(a + b)


def _boom(reason: str) -> str:
    raise ValueError(f"boom: {reason}")


class Address(BaseModel):
    street: str = Field(description="Street and number")
    city: str


class Booking(BaseModel):
    guest: str = Field(description="Full name of the guest")
    nights: int = Field(ge=1, le=30)
    room: Literal["single", "double", "suite"] = "double"
    address: Address
    extras: list[str] = Field(default_factory=list)


def _book(guest: str, nights: int, address: dict, room: str = "double", extras=()) -> str:
    return f"booked {guest}"


ADD = StructuredTool.from_function(_add, name="add", description="Add two integers.")
BOOM = StructuredTool.from_function(_boom, name="boom", description="Always fails.")
BOOK = StructuredTool.from_function(
    _book, name="book_room", description="Book a hotel room.", args_schema=Booking
)


def _call(tool: str, **arguments) -> str:
    return json.dumps({"tool": tool, "arguments": arguments})


def _answer(text: str) -> str:
    return json.dumps({"answer": text})


async def _run(settings, script, tools=(ADD,), spec: Spec | None = None):
    model = ScriptedChatModel(script=list(script))
    store = TraceStore(settings.traces_db)
    result = await run_naive(
        spec or Spec(), settings, "What is 2 + 3?", model=model, tools=list(tools), store=store
    )
    # What the loop wrote is what a grader (and `homespun traces`) reads back.
    return store.get(result.trace.id), model


# --------------------------------------------------------------------------- the loop


async def test_the_loop_calls_a_real_mcp_tool_then_answers_and_the_grader_reads_its_trace(
    settings,
):
    """Starter's arith-01 through the naive loop: the built-in calculator over MCP, graded by
    the starter benchmark's own grader, from the trace the loop wrote."""
    bench = StarterBenchmark()
    task = next(t for t in bench.tasks() if t.id == "arith-01")
    spec = Spec()

    def answer_with_the_result(messages):
        result = messages[-1].content.removeprefix("Result of calculator: ")
        return _answer(f"It is {result}.")

    model = ScriptedChatModel(
        script=[_call("calculator", expression="37 * 41"), answer_with_the_result]
    )
    store = TraceStore(settings.traces_db)
    cache = EvalCache(settings.learning_db)
    result = await evaluate(
        spec,
        settings,
        bench,
        [task],
        student=lambda s: model,
        loop="naive",
        cache=cache,
        store=store,
    )
    [outcome] = result.outcomes
    assert outcome.success and outcome.status == "ok", outcome
    assert result.spec_hash == naive_key(spec) == eval_key(spec, "naive")
    trace = store.get(outcome.trace_id)
    assert trace.source == "baseline:naive:starter" and trace.loop == "naive"
    assert trace.spec_hash == naive_key(spec)
    assert trace.status == "ok" and trace.stop_reason == StopReason.ANSWERED
    assert trace.final_answer == "It is 1517." and trace.error is None
    [call] = trace.tool_calls
    assert call.name == "calculator" and call.arguments == {"expression": "37 * 41"}
    assert "1517" in call.result and call.error is None and call.server == "core"
    assert trace.model_calls == 2 and trace.prompt_tokens == 20 and trace.completion_tokens == 10
    assert trace.latency_s is not None and trace.latency_s >= 0
    # The result went back as a user message, after the model's own JSON.
    second = model.calls[1]["messages"]
    assert isinstance(second[-1], HumanMessage)
    assert second[-1].content.startswith("Result of calculator: ") and "1517" in second[-1].content
    assert second[-2].content == _call("calculator", expression="37 * 41")
    assert [m["role"] for m in trace.messages] == ["system", "human", "ai", "human", "ai"]
    # Cached under the baseline's key, never the spec's.
    assert cache.get(naive_key(spec), bench, task.id, 0) is not None
    assert cache.get(spec.content_hash(), bench, task.id, 0) is None


async def test_the_system_prompt_holds_each_tool_s_full_argument_schema(settings):
    tools = [ADD, BOOM, BOOK]
    prompt = system_prompt(tools)
    for tool in tools:
        fn = convert_to_openai_tool(tool)["function"]
        assert f"- {fn['name']}: {fn['description']}" in prompt
        assert json.dumps(fn["parameters"], ensure_ascii=False) in prompt
    # The nested parts of the schema are all there: enum, nested object, field descriptions.
    for part in ('"single"', '"suite"', "Street and number", "Full name of the guest", '"city"'):
        assert part in prompt
    assert prompt.rstrip().endswith(PROTOCOL)
    # ... and it is the system message the model is given, before the question.
    trace, model = await _run(settings, [_answer("5")], tools=tools)
    first = model.calls[0]["messages"]
    assert isinstance(first[0], SystemMessage) and first[0].content == prompt
    assert isinstance(first[1], HumanMessage) and first[1].content == "What is 2 + 3?"
    assert model.calls[0]["tools"] == []  # no native tools: the protocol is the prompt
    assert trace.status == "ok" and trace.final_answer == "5"


async def test_a_turn_cap_stop_is_a_recorded_failure_with_its_stop_reason(settings):
    spec = Spec()
    spec.agent.max_turns = 3
    trace, model = await _run(settings, [_call("add", a=2, b=3)] * 10, spec=spec)
    assert trace.status == "error" and trace.stop_reason == StopReason.TURN_LIMIT
    assert "turn limit" in trace.error and "3 model calls" in trace.error
    assert trace.final_answer is None
    assert trace.model_calls == 3 and len(model.calls) == 3  # the cap counts model calls
    assert [c.result for c in trace.tool_calls] == ["5", "5", "5"]


class ToyWithAdd(ToyBenchmark):
    """The toy tasks with the add tool offered."""

    @asynccontextmanager
    async def environment(self, task, spec, settings):
        async with super().environment(task, spec, settings) as env:
            yield SimpleEnvironment(tools=[ADD], grader=env.grader)


async def test_a_turn_cap_stop_is_a_failed_task_in_an_evaluation(settings):
    spec = Spec()
    spec.agent.max_turns = 2

    def keep_calling(spec):
        return ScriptedChatModel(script=[_call("add", a=1, b=1)] * 10)

    bench = ToyWithAdd(per_category=1)
    result = await evaluate(
        spec, settings, bench, bench.tasks(), student=keep_calling, loop="naive"
    )
    assert result.accuracy == 0.0 and len(result.outcomes) == 3
    for o in result.outcomes:
        assert o.status == "error" and o.tool_calls == 2
        assert o.reason.startswith("run failed: turn limit: 2 model calls")


async def test_an_unreadable_reply_gets_one_retry(settings):
    trace, model = await _run(settings, ["It is 5, I think.", _answer("5")])
    assert trace.status == "ok" and trace.stop_reason == StopReason.ANSWERED
    assert trace.final_answer == "5" and trace.model_calls == 2
    retry = model.calls[1]["messages"][-1]
    assert isinstance(retry, HumanMessage)
    assert retry.content.startswith("Your reply could not be read: no JSON object")
    assert PROTOCOL in retry.content


async def test_two_unreadable_replies_in_a_row_end_the_run_as_failed(settings):
    trace, _ = await _run(settings, ["five", _call("subtract", a=2, b=3), _answer("never")])
    assert trace.status == "error" and trace.stop_reason == StopReason.UNPARSED_TOOL_CALL
    assert "two replies in a row could not be read" in trace.error
    assert "unknown tool 'subtract'" in trace.error
    assert trace.final_answer is None and trace.model_calls == 2


async def test_a_readable_reply_resets_the_retry(settings):
    script = ["five", _call("add", a=2, b=3), "oops", _answer("5")]
    trace, _ = await _run(settings, script)
    assert trace.status == "ok" and trace.final_answer == "5" and trace.model_calls == 4


async def test_a_tool_error_is_recorded_and_shown_to_the_model(settings):
    script = [_call("boom", reason="disk"), _call("add", a="two"), _answer("sorry")]
    trace, model = await _run(settings, script, tools=[ADD, BOOM])
    assert trace.status == "ok" and trace.final_answer == "sorry"
    failed, bad_args = trace.tool_calls
    assert failed.result is None and "boom: disk" in failed.error
    assert bad_args.result is None and "validation error" in bad_args.error.lower()
    shown = model.calls[1]["messages"][-1].content
    assert shown.startswith("Result of boom: ") and "boom: disk" in shown


async def test_a_model_exception_is_a_failed_run(settings):
    trace, _ = await _run(settings, [])  # the scripted model raises on its first call
    assert trace.status == "error" and trace.stop_reason == StopReason.ENGINE_ERROR
    assert "RuntimeError" in trace.error and "ran out of replies" in trace.error


async def test_an_engine_that_cannot_be_built_is_a_failed_run(settings):
    spec = Spec()
    spec.intelligence.model = "/nowhere/model.gguf"
    store = TraceStore(settings.traces_db)
    result = await run_naive(spec, settings, "hi", tools=[ADD], store=store)
    trace = store.get(result.trace.id)
    assert trace.status == "error" and trace.stop_reason == StopReason.ENGINE_ERROR


async def test_the_reply_is_constrained_by_the_protocol_schema_in_the_request_body(
    settings, http_stub
):
    """With the real OpenAI client against an openai_compatible server (the embedded engine's
    transport): the schema goes in the body's response_format, next to top_k."""
    http_stub.handler = lambda request: chat_completion(_answer("5"), usage=(7, 3))
    spec = Spec.model_validate(
        {"engine": {"backend": "openai_compatible", "base_url": http_stub.url("/v1")}}
    )
    store = TraceStore(settings.traces_db)
    result = await run_naive(spec, settings, "What is 2 + 3?", tools=[ADD, BOOK], store=store)
    trace = store.get(result.trace.id)
    assert trace.status == "ok" and trace.final_answer == "5"
    assert (trace.prompt_tokens, trace.completion_tokens) == (7, 3)
    [body] = http_stub.bodies
    schema = build_reply_schema([convert_to_openai_tool(t) for t in (ADD, BOOK)], "auto")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema},
    }
    assert body["top_k"] == spec.intelligence.top_k  # the model's own extra_body survives
    assert "tools" not in body
    assert body["messages"][0]["role"] == "system" and PROTOCOL in body["messages"][0]["content"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": "5"}', Answer("5")),
        ('{"tool": "add", "arguments": {"a": 2, "b": 3}}', Call("add", {"a": 2, "b": 3})),
        ('{"tool": "add"}', Call("add", {})),
        ('Sure:\n```json\n{"answer": "5"}\n```', Answer("5")),  # a backend told, not held
    ],
)
def test_parse_reply_reads_the_two_forms(text, expected):
    assert parse_reply(text, {"add"}) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("5", "no JSON object"),
        ('{"answer": "5', "invalid JSON"),
        ('{"tool": "add", "arguments": [2, 3]}', "not a JSON object"),
        ('{"tool": "mul", "arguments": {}}', "unknown tool 'mul'"),
        ('{"tool": ["add"], "arguments": {}}', "unknown tool"),
        ('{"answer": "5", "confidence": 1}', "neither"),
        ('{"answer": 5}', "neither"),
    ],
)
def test_parse_reply_says_why_a_reply_cannot_be_read(text, why):
    with pytest.raises(BadReply, match=why):
        parse_reply(text, {"add"})


def test_a_cut_off_reply_says_so():
    with pytest.raises(BadReply, match="cut off by the token cap"):
        parse_reply('{"answer": "a long', {"add"}, cut_off=True)


# --------------------------------------------------------------------------- cache keys


def test_the_naive_key_covers_what_the_loop_depends_on_and_only_that():
    spec = Spec()
    key = naive_key(spec)
    assert key.startswith("naive:smollm2-135m:") and key != spec.content_hash()
    prompt_edit = spec.model_copy(deep=True)
    prompt_edit.agent.system_prompt = "Something else entirely."
    prompt_edit.engine.tool_call_format = "native"
    assert naive_key(prompt_edit) == key  # the loop uses neither
    for edit in (
        lambda s: setattr(s.intelligence, "temperature", 0.7),
        lambda s: setattr(s.agent, "max_turns", 2),
        lambda s: setattr(s.engine, "context_length", 2048),
        lambda s: setattr(s.memory, "top_k", 9),
    ):
        changed = spec.model_copy(deep=True)
        edit(changed)
        assert naive_key(changed) != key


async def test_baseline_outcomes_never_collide_with_the_spec_s_in_the_cache(settings):
    spec, bench = Spec(), ToyBenchmark(per_category=2)
    tasks, cache = bench.tasks(), EvalCache(settings.learning_db)
    student = NaiveAwareStudent()
    ours = await evaluate(spec, settings, bench, tasks, cache=cache, student=student)
    theirs = await evaluate(
        spec, settings, bench, tasks, cache=cache, student=student, loop="naive"
    )
    assert theirs.runs == len(tasks)  # none of the spec's outcomes was taken for the baseline's
    assert ours.spec_hash == spec.content_hash() and theirs.spec_hash == naive_key(spec)
    assert ours.by_category() == {"math": (0.0, 2), "recall": (0.0, 2), "tone": (1.0, 2)}
    assert theirs.by_category() == {"math": (1.0, 2), "recall": (0.0, 2), "tone": (0.0, 2)}
    again = await evaluate(spec, settings, bench, tasks, cache=cache, student=student, loop="naive")
    assert again.runs == 0 and again.accuracy == theirs.accuracy
    with pytest.raises(ValueError, match="unknown loop"):
        await evaluate(spec, settings, bench, tasks, loop="fancy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the interval


def test_t95_matches_the_t_table():
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(30) == 2.042
    assert t95(40) == pytest.approx(2.021, abs=1e-3)
    assert t95(120) == pytest.approx(1.980, abs=1e-3)
    assert t95(10**6) == pytest.approx(1.960, abs=1e-3)


@pytest.mark.parametrize("value", [1.0, 0.0, -1.0, 0.5])
def test_equal_differences_give_a_zero_width_interval(value):
    assert paired_interval([value] * 6) == (value, value, value)


def test_the_paired_t_interval_on_a_known_case():
    # mean 0, sd sqrt(1/2), n 5: half-width t(0.975, 4) * sqrt(0.5) / sqrt(5) = 0.87785
    mean, low, high = paired_interval([1, 0, 0, 0, -1])
    assert mean == 0 and low == pytest.approx(-0.87785, abs=1e-5)
    assert high == pytest.approx(0.87785, abs=1e-5)


def test_the_interval_is_clipped_to_the_range_of_a_difference_and_absent_for_one_task():
    mean, low, high = paired_interval([1, 1, 0])
    assert mean == pytest.approx(2 / 3) and high == 1.0
    assert low == pytest.approx(2 / 3 - 4.303 * (1 / 3) ** 0.5 / 3**0.5)
    assert paired_interval([1]) == (1, None, None)
    with pytest.raises(ValueError):
        paired_interval([])


def _outcome(task_id: str, category: str, score: float, repeat: int = 0) -> TaskOutcome:
    return TaskOutcome(
        task_id=task_id,
        category=category,
        repeat=repeat,
        success=score == 1,
        score=score,
        reason="",
        trace_id="",
        status="ok",
        error=None,
        answer=None,
        latency_s=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        tool_calls=0,
    )


def test_compare_pairs_by_task_averaging_repeats():
    a = EvalResult(
        "a",
        "b",
        [
            _outcome("x1", "x", 1, 0),
            _outcome("x1", "x", 0, 1),  # x1 scores 0.5 over its repeats
            _outcome("x2", "x", 1, 0),
            _outcome("x2", "x", 1, 1),
            _outcome("y1", "y", 0, 0),
            _outcome("y1", "y", 0, 1),
        ],
    )
    b = EvalResult(
        "b",
        "b",
        [
            _outcome(t, c, 0.0, r)
            for t, c in [("x1", "x"), ("x2", "x"), ("y1", "y")]
            for r in (0, 1)
        ],
    )
    rows = {r.category: r for r in compare(a, b)}
    assert list(rows) == ["x", "y", "all"]
    assert rows["x"].n == 2 and rows["x"].a == 0.75 and rows["x"].b == 0 and rows["x"].diff == 0.75
    assert rows["y"].n == 1 and rows["y"].low is None and rows["y"].diff == 0
    assert rows["all"].n == 3 and rows["all"].diff == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unpaired"):
        compare(a, EvalResult("b", "b", [_outcome("x1", "x", 1)]))
