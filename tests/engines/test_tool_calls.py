"""ToolCallingChatModel: native recovery, constrained JSON, streaming, and the real model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import respx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from pydantic import Field

from homespun.engines.tool_calls import (
    ToolCallingChatModel,
    build_reply_schema,
    recover_tool_calls,
    render_for_constrained_json,
    render_for_native,
    scan_tool_calls,
)
from homespun.spec import RenderingSpec
from tests.stubs import RecordedRequest, RecordingStub, Reply, chat_completion, sse

REPO = Path(__file__).resolve().parents[2]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 2 * (3 + 4)."""
    return str(eval(expression, {"__builtins__": {}}))  # test tool only


@tool
def remember(fact: str, importance: int = 1) -> str:
    """Store a fact about the user in long-term memory."""
    return "stored"


USAGE = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}


# --------------------------------------------------------------------------------------------
# Scripted inner models
# --------------------------------------------------------------------------------------------


class ScriptedChatModel(BaseChatModel):
    """Replays `outputs` in order and records what it was sent.

    An output is an AIMessage, a string, or a list of strings: the pieces a stream delivers.
    """

    outputs: list[Any]
    calls: list[dict[str, Any]] = Field(default_factory=list)
    bound: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"scripted_name": "fake-1"}

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        self.bound.append({"tools": list(tools), "tool_choice": tool_choice})
        return self.bind(tools=list(tools), tool_choice=tool_choice)

    def _next(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> tuple[AIMessage, list[str]]:
        self.calls.append({"messages": list(messages), "kwargs": dict(kwargs)})
        out = self.outputs[len(self.calls) - 1]
        if isinstance(out, AIMessage):
            return out, [out.content] if isinstance(out.content, str) and out.content else []
        pieces = [out] if isinstance(out, str) else list(out)
        message = AIMessage(
            content="".join(pieces),
            usage_metadata=USAGE,
            response_metadata={"finish_reason": "stop", "model_name": "fake-1"},
        )
        return message, pieces

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message, _ = self._next(messages, kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])


class StreamingScriptedChatModel(ScriptedChatModel):
    """The same, streamed piece by piece; usage and finish reason come on the last chunk."""

    def _stream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        message, pieces = self._next(messages, kwargs)
        for piece in pieces:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        tool_call_chunks = [
            {
                "name": c["name"],
                "args": json.dumps(c["args"]),
                "id": c["id"],
                "index": i,
                "type": "tool_call_chunk",
            }
            for i, c in enumerate(message.tool_calls)
        ]
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=tool_call_chunks,
                usage_metadata=message.usage_metadata,
                response_metadata=message.response_metadata,
            )
        )


def _wrap(
    inner: BaseChatModel, fmt: str = "native", tools=(calculator,), **kw
) -> ToolCallingChatModel:
    model = ToolCallingChatModel(inner=inner, tool_call_format=fmt, **kw)
    return model.bind_tools(list(tools)) if tools else model


def _single_call(message: AIMessage) -> dict[str, Any]:
    assert len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call["id"]
    return {"name": call["name"], "args": call["args"]}


CALC_CALL = {"name": "calculator", "args": {"expression": "37 * 41"}}


# --------------------------------------------------------------------------------------------
# recover_tool_calls
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "calculator", "arguments": {"expression": "37 * 41"}}',
        '  \n{"tool": "calculator", "args": {"expression": "37 * 41"}}\n',
        '```json\n{"name": "calculator", "arguments": {"expression": "37 * 41"}}\n```',
        '```\n{"tool": "calculator", "arguments": {"expression": "37 * 41"}}\n```',
        '{"type": "function", "function": {"name": "calculator", '
        '"arguments": "{\\"expression\\": \\"37 * 41\\"}"}}',
        '{"function": {"name": "calculator", "arguments": {"expression": "37 * 41"}}}',
        '[{"name": "calculator", "arguments": {"expression": "37 * 41"}}]',
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "37 * 41"}}\n</tool_call>',
        # prose before or after a fenced or bare call (Qwen2.5-Coder does both)
        'Sure! {"name": "calculator", "arguments": {"expression": "37 * 41"}}',
        'I will use the calculator.\n```json\n{"name": "calculator", "arguments": '
        '{"expression": "37 * 41"}}\n```\nThe result will be shown next.',
        '```json\n{"tool": "calculator", "arguments": {"expression": "37 * 41"}}\n```\n'
        "This multiplies the two numbers.",
        'Let me compute it: <tool_call>{"name": "calculator", "arguments": '
        '{"expression": "37 * 41"}}</tool_call> done',
    ],
)
def test_recover_accepts_known_forms_for_bound_names(text: str) -> None:
    calls = recover_tool_calls(text, {"calculator", "remember"})
    assert calls is not None and len(calls) == 1
    assert calls[0]["name"] == "calculator"
    assert calls[0]["args"] == {"expression": "37 * 41"}
    assert calls[0]["id"].startswith("call_")


def test_recover_list_gives_every_call_with_distinct_ids() -> None:
    text = json.dumps(
        [
            {"name": "calculator", "arguments": {"expression": "1+1"}},
            {"tool": "remember", "arguments": {"fact": "likes tea"}},
        ]
    )
    calls = recover_tool_calls(text, {"calculator", "remember"})
    assert [c["name"] for c in calls] == ["calculator", "remember"]
    assert calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "web_search", "arguments": {"q": "x"}}',  # unknown name
        '[{"name": "calculator", "arguments": {}}, {"name": "nope", "arguments": {}}]',
        '{"name": "calculator", "arguments": {"expression": "1"}, "note": "extra key"}',
        '{"name": "calculator", "arguments": "not json"}',
        '{"name": "calculator", "arguments": {"expression": "1"}',  # cut off
        '{"answer": "42"}',
        "The answer is 42.",
        "",
        "[]",
    ],
)
def test_recover_rejects_everything_else(text: str) -> None:
    assert recover_tool_calls(text, {"calculator"}) is None


def test_recover_finds_every_call_in_order_with_prose_between() -> None:
    text = (
        "First the product:\n"
        '```json\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n```\n'
        "then the fact:\n"
        '```json\n{"name": "remember", "arguments": {"fact": "likes tea"}}\n```\n'
        "Both results will follow."
    )
    scan = scan_tool_calls(text, {"calculator", "remember"})
    assert [c["name"] for c in scan.calls] == ["calculator", "remember"]
    assert scan.prefix == "First the product:\n" and scan.unparsed == ""


@pytest.mark.parametrize(
    ("text", "cut_off", "reason_part"),
    [
        # a fenced block naming a bound tool whose JSON is invalid
        (
            'Sure.\n```json\n{"name": "calculator", "arguments": {"expression": "1",}}\n```',
            False,
            "'calculator' is not valid JSON",
        ),
        ("```json\n{'name': 'calculator', 'arguments': {}}\n```", False, "not valid JSON"),
        # cut off mid-JSON, mid-name, and (finish_reason length) before the name
        ('{"name": "calculator", "arguments": {"expression": "37 *', False, "cut off"),
        ('I will compute it. {"name": "calc', False, "cut off"),
        ('```json\n{"na', True, "cut off inside a tool call"),
        # complete, shaped like a call, but not readable
        ('{"name": "calculator", "arguments": "not json"}', False, "arguments"),
        ('[{"name": "calculator", "arguments": {}}, {"name": "nope"}]', False, "'nope'"),
    ],
)
def test_scan_names_what_looks_like_a_call_but_cannot_be_read(
    text: str, cut_off: bool, reason_part: str
) -> None:
    scan = scan_tool_calls(text, {"calculator"}, cut_off=cut_off)
    assert scan.calls == [] and reason_part in scan.unparsed
    assert recover_tool_calls(text, {"calculator"}) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "web_search", "arguments": {"q": "x"}}',  # not a bound tool
        '{"name": "calculator", "description": "Adds.", "parameters": {}}',  # a description
        'The key is "name": "calculator", as the docs say.',  # prose, no JSON
        '{"answer": "It is',  # an answer cut off is not a call...
        '{"na',  # ...nor is this unless the reply hit its token cap
        "Use {braces} like [this].",
    ],
)
def test_scan_leaves_text_that_is_no_call_alone(text: str) -> None:
    assert scan_tool_calls(text, {"calculator"}) == scan_tool_calls("", {"calculator"})


# --------------------------------------------------------------------------------------------
# native
# --------------------------------------------------------------------------------------------


def test_native_binds_tools_on_inner_and_recovers_json_text() -> None:
    inner = ScriptedChatModel(
        outputs=['```json\n{"name": "calculator", "arguments": {"expression": "37 * 41"}}\n```']
    )
    reply = _wrap(inner).invoke("What is 37 * 41?")

    assert _single_call(reply) == CALC_CALL
    assert reply.content == ""
    assert reply.usage_metadata["total_tokens"] == 18
    assert reply.response_metadata["finish_reason"] == "stop"
    assert inner.bound[0]["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in inner.calls[0]["kwargs"]["tools"]] == ["calculator"]


PROSE_CALL = [
    "I will use the calculator.\n```",
    'json\n{"name": "calculator", "arg',
    'uments": {"expression": "37 * 41"}}\n```\n',
    "It returned 1517, so the answer is 1517.",
]


@pytest.mark.parametrize("inner_cls", [StreamingScriptedChatModel, ScriptedChatModel])
async def test_native_recovers_a_fenced_call_between_prose_the_same_in_every_mode(
    inner_cls,
) -> None:
    replies = await _all_four(lambda: _wrap(inner_cls(outputs=[PROSE_CALL])))
    for reply in replies:
        assert _single_call(reply) == CALC_CALL
        # the prose before the call stays; the made-up result after it is dropped
        assert reply.content == "I will use the calculator.\n"
        assert "tool_call_parse_error" not in reply.response_metadata
    chunks = list(_wrap(inner_cls(outputs=[PROSE_CALL])).stream("x"))
    assert "1517" not in "".join(c.content for c in chunks)


@pytest.mark.parametrize("inner_cls", [StreamingScriptedChatModel, ScriptedChatModel])
@pytest.mark.parametrize(
    ("pieces", "finish_reason"),
    [
        (['Let me check.\n```json\n{"name": "calcu', 'lator", "arguments": {"expr'], "length"),
        (
            ["```json\n", '{"name": "calculator", ', '"arguments": {"expression": "1",}}\n```'],
            "stop",
        ),
        (["```json\n", '{"na'], "length"),
    ],
)
async def test_native_unreadable_call_is_never_the_answer(inner_cls, pieces, finish_reason):
    def make() -> ToolCallingChatModel:
        inner = inner_cls(
            outputs=[
                AIMessage(
                    content="".join(pieces),
                    usage_metadata=USAGE,
                    response_metadata={"finish_reason": finish_reason},
                )
            ]
        )
        return _wrap(inner)

    for reply in await _all_four(make):
        assert reply.tool_calls == [] and reply.content in ("", "Let me check.\n")
        assert reply.response_metadata["tool_call_parse_error"]
        assert reply.response_metadata["unparsed_tool_call"] == "".join(pieces)
    assert not any("{" in c.content for c in make().stream("x"))


def test_native_stream_shows_prose_before_a_call_as_it_comes() -> None:
    chunks = list(_wrap(StreamingScriptedChatModel(outputs=[PROSE_CALL])).stream("x"))
    texts = [c.content for c in chunks if c.content]
    assert texts[0] == "I will use the calculator.\n"  # before the rest of the reply arrived


def test_native_required_is_passed_as_langchain_any() -> None:
    inner = ScriptedChatModel(outputs=["hi"])
    ToolCallingChatModel(inner=inner).bind_tools([calculator], tool_choice="required").invoke("x")
    assert inner.bound[0]["tool_choice"] == "any"


def test_native_leaves_json_for_unknown_tools_and_plain_text_alone() -> None:
    text = '{"name": "web_search", "arguments": {"q": "weather"}}'
    inner = ScriptedChatModel(outputs=[text, "Just text."])
    model = _wrap(inner)
    first = model.invoke("x")
    assert first.content == text and first.tool_calls == []
    assert model.invoke("y").content == "Just text."


def test_native_keeps_real_tool_calls_untouched() -> None:
    native = AIMessage(
        content="", tool_calls=[{"name": "calculator", "args": {"expression": "2+2"}, "id": "abc"}]
    )
    reply = _wrap(ScriptedChatModel(outputs=[native])).invoke("x")
    assert reply.tool_calls[0]["id"] == "abc"


def test_native_without_tools_or_with_choice_none_does_not_bind() -> None:
    inner = ScriptedChatModel(
        outputs=['{"name": "calculator", "arguments": {"expression": "1"}}'] * 2
    )
    assert ToolCallingChatModel(inner=inner).invoke("x").tool_calls == []
    none = ToolCallingChatModel(inner=inner).bind_tools([calculator], tool_choice="none")
    assert none.invoke("x").tool_calls == []  # no recovery either: tools are off
    assert inner.bound == []


def test_bind_tools_returns_a_copy_and_accepts_dicts_and_functions() -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    base = ToolCallingChatModel(inner=ScriptedChatModel(outputs=[]))
    openai_dict = {
        "type": "function",
        "function": {
            "name": "ping",
            "description": "Ping.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    bound = base.bind_tools([calculator, add, openai_dict])
    assert isinstance(bound, ToolCallingChatModel) and base.tools == []
    assert [t["function"]["name"] for t in bound.tools] == ["calculator", "add", "ping"]
    assert bound.bind_tools([calculator], tool_choice="any").tool_choice == "required"
    forced = bound.bind_tools([calculator, add], tool_choice="add")
    assert forced.tool_choice == "required" and [t["function"]["name"] for t in forced.tools] == [
        "add"
    ]


def test_identity() -> None:
    model = _wrap(ScriptedChatModel(outputs=[]), "constrained_json")
    assert model._llm_type == "homespun-tool-calling"
    params = model._identifying_params
    assert params["scripted_name"] == "fake-1"
    assert params["tool_call_format"] == "constrained_json"


# --------------------------------------------------------------------------------------------
# constrained_json: schema, rendering, parsing
# --------------------------------------------------------------------------------------------


def _schema_sent(inner: ScriptedChatModel) -> dict[str, Any]:
    response_format = inner.calls[-1]["kwargs"]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "reply"
    return response_format["json_schema"]["schema"]


def test_constrained_schema_has_one_branch_per_tool_plus_answer() -> None:
    inner = ScriptedChatModel(outputs=['{"answer": "hi"}'])
    _wrap(inner, "constrained_json", tools=[calculator, remember]).invoke("hello")

    assert "tools" not in inner.calls[0]["kwargs"] and inner.bound == []
    branches = _schema_sent(inner)["anyOf"]
    assert len(branches) == 3
    calc, mem, answer = branches
    assert calc["properties"]["tool"] == {"const": "calculator"}
    assert calc["properties"]["arguments"]["properties"]["expression"]["type"] == "string"
    assert calc["properties"]["arguments"]["required"] == ["expression"]
    assert mem["properties"]["tool"] == {"const": "remember"}
    for branch in (calc, mem):
        assert branch["required"] == ["tool", "arguments"]
        assert branch["additionalProperties"] is False
    assert answer["properties"] == {"answer": {"type": "string"}}
    assert answer["required"] == ["answer"] and answer["additionalProperties"] is False


def test_constrained_required_omits_answer_and_no_tools_is_answer_only() -> None:
    inner = ScriptedChatModel(
        outputs=['{"tool": "calculator", "arguments": {"expression": "1"}}', '{"answer": "hi"}']
    )
    ToolCallingChatModel(inner=inner, tool_call_format="constrained_json").bind_tools(
        [calculator], tool_choice="required"
    ).invoke("x")
    assert [b["properties"]["tool"]["const"] for b in _schema_sent(inner)["anyOf"]] == [
        "calculator"
    ]

    ToolCallingChatModel(inner=inner, tool_call_format="constrained_json").invoke("y")
    assert _schema_sent(inner)["anyOf"] == [
        {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        }
    ]


def test_constrained_schema_hoists_defs_so_refs_resolve_from_the_root() -> None:
    # MCP tools arrive with raw JSON schemas, $defs included; two tools may reuse a def name.
    def trip_tool(name: str, city_type: str) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": name,
                "description": "Plan.",
                "parameters": {
                    "type": "object",
                    "properties": {"start": {"$ref": "#/$defs/Place"}},
                    "required": ["start"],
                    "$defs": {
                        "Place": {"type": "object", "properties": {"city": {"type": city_type}}}
                    },
                },
            },
        }

    inner = ScriptedChatModel(outputs=['{"tool": "plan_b", "arguments": {"start": {"city": 3}}}'])
    model = ToolCallingChatModel(inner=inner, tool_call_format="constrained_json")
    reply = model.bind_tools(
        [trip_tool("plan_a", "string"), trip_tool("plan_b", "integer")]
    ).invoke("x")
    assert _single_call(reply) == {"name": "plan_b", "args": {"start": {"city": 3}}}

    schema = _schema_sent(inner)
    a_args, b_args = (branch["properties"]["arguments"] for branch in schema["anyOf"][:2])
    assert "$defs" not in a_args and "$defs" not in b_args

    def resolve(ref: str) -> dict[str, Any]:
        assert ref.startswith("#/$defs/")
        return schema["$defs"][ref.removeprefix("#/$defs/")]

    assert resolve(a_args["properties"]["start"]["$ref"])["properties"]["city"]["type"] == "string"
    assert resolve(b_args["properties"]["start"]["$ref"])["properties"]["city"]["type"] == "integer"


def test_constrained_transports() -> None:
    ollama_like = ScriptedChatModel(outputs=['{"answer": "a"}'])
    _wrap(ollama_like, "constrained_json", json_transport="ollama_format").invoke("x")
    kwargs = ollama_like.calls[0]["kwargs"]
    assert "response_format" not in kwargs
    assert kwargs["format"]["anyOf"][0]["properties"]["tool"] == {"const": "calculator"}

    prompt_only = ScriptedChatModel(
        outputs=['```json\n{"tool": "calculator", "arguments": {"expression": "5"}}\n```']
    )
    reply = _wrap(prompt_only, "constrained_json", json_transport="none").invoke("x")
    assert "response_format" not in prompt_only.calls[0]["kwargs"]
    assert "format" not in prompt_only.calls[0]["kwargs"]
    assert _single_call(reply) == {"name": "calculator", "args": {"expression": "5"}}


def test_constrained_renders_tool_history_for_plain_chat_templates() -> None:
    inner = ScriptedChatModel(outputs=['{"answer": "It is 1517."}'])
    history = [
        SystemMessage(content="You are a helpful assistant."),
        HumanMessage(content="What is 37 * 41?"),
        AIMessage(
            content="",
            tool_calls=[
                {"name": "calculator", "args": {"expression": "37 * 41"}, "id": "c1"},
                {"name": "remember", "args": {"fact": "likes math"}, "id": "c2"},
            ],
        ),
        ToolMessage(content="1517", tool_call_id="c1"),
        ToolMessage(content="disk full", tool_call_id="c2", status="error"),
        AIMessage(content="37 * 41 = 1517."),
        HumanMessage(content="Again?"),
    ]
    reply = _wrap(inner, "constrained_json", tools=[calculator, remember]).invoke(history)
    assert reply.content == "It is 1517." and reply.tool_calls == []

    sent = inner.calls[0]["messages"]
    assert [m.type for m in sent] == ["system", "human", "ai", "human", "ai", "human"]
    system = sent[0].content
    assert system.startswith("You are a helpful assistant.")
    assert "calculator: Evaluate an arithmetic expression" in system
    assert '"expression"' in system and "remember" in system
    assert '{"tool": "...", "arguments"' in system and '{"answer":' in system
    calls_text = sent[2].content.splitlines()
    assert [json.loads(line) for line in calls_text] == [
        {"tool": "calculator", "arguments": {"expression": "37 * 41"}},
        {"tool": "remember", "arguments": {"fact": "likes math"}},
    ]
    assert not sent[2].tool_calls
    assert (
        sent[3].content
        == "Tool calculator returned:\n1517\n\nTool remember returned an error:\ndisk full"
    )
    assert json.loads(sent[4].content) == {"answer": "37 * 41 = 1517."}
    assert not any(isinstance(m, ToolMessage) for m in sent)


def test_constrained_creates_system_message_when_missing() -> None:
    inner = ScriptedChatModel(outputs=['{"answer": "hi"}'])
    _wrap(inner, "constrained_json").invoke([HumanMessage(content="hello")])
    sent = inner.calls[0]["messages"]
    assert sent[0].type == "system" and "calculator" in sent[0].content
    assert sent[1].content == "hello"


def test_constrained_tool_call_keeps_inner_metadata() -> None:
    inner = ScriptedChatModel(
        outputs=['{"tool": "calculator", "arguments": {"expression": "37 * 41"}}']
    )
    reply = _wrap(inner, "constrained_json").invoke("x")
    assert _single_call(reply) == CALC_CALL and reply.content == ""
    assert reply.usage_metadata["total_tokens"] == 18
    assert reply.response_metadata["finish_reason"] == "stop"
    assert "tool_call_parse_error" not in reply.response_metadata


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ('{"answer": "The result is', "not complete JSON"),  # cut off by max_tokens
        ("", "empty"),
        ("I think the answer is 5", "not complete JSON"),  # prose (no grammar)
    ],
)
def test_constrained_unparseable_reply_is_text_with_error(raw: str, reason_part: str) -> None:
    reply = _wrap(ScriptedChatModel(outputs=[raw]), "constrained_json").invoke("x")
    assert reply.content == raw and reply.tool_calls == []
    assert reason_part in reply.response_metadata["tool_call_parse_error"]
    assert "unparsed_tool_call" not in reply.response_metadata
    assert reply.usage_metadata["total_tokens"] == 18


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ('{"tool": "web_search", "arguments": {}}', "unknown tool"),
        ('{"tool": "calculator", "arguments": {"expression": "37 *', "calculator"),  # cut off
        ('{"tool": "calcu', "cut off"),
        ('{"to', "not complete JSON"),
        ('[{"tool": "calc', "cut off"),
    ],
)
@pytest.mark.parametrize("inner_cls", [StreamingScriptedChatModel, ScriptedChatModel])
async def test_constrained_unreadable_tool_call_is_never_the_answer(
    raw: str, reason_part: str, inner_cls
) -> None:
    """A reply that is a tool call the parser cannot read has no content, in every mode: the
    raw text is kept in response_metadata for the trace, and nothing of it is streamed."""
    pieces = _split_everywhere(raw, 3)
    replies = await _all_four(lambda: _wrap(inner_cls(outputs=[pieces]), "constrained_json"))
    for reply in replies:
        assert reply.content == "" and reply.tool_calls == []
        assert reason_part in reply.response_metadata["tool_call_parse_error"]
        assert reply.response_metadata["unparsed_tool_call"] == raw
    chunks = list(_wrap(inner_cls(outputs=[pieces]), "constrained_json").stream("x"))
    assert not any(c.content for c in chunks)


# --------------------------------------------------------------------------------------------
# Rendering ([agent.rendering])
# --------------------------------------------------------------------------------------------


@tool
def lookup(
    query: Annotated[str, Field(description="Words to look for, e.g. 'passport'")],
    limit: int = 3,
) -> str:
    """Search the notes."""
    return "hits"


HISTORY = [
    SystemMessage(content="Be brief."),
    HumanMessage(content="What is 37 * 41 and remember it"),
    AIMessage(
        content="",
        tool_calls=[
            {"name": "calculator", "args": {"expression": "37 * 41"}, "id": "c1"},
            {"name": "remember", "args": {"fact": "1517"}, "id": "c2"},
        ],
    ),
    ToolMessage(content="1517", tool_call_id="c1", name="calculator"),
    ToolMessage(content="disk full", tool_call_id="c2", status="error"),
]


def _openai(*tools_) -> list[dict[str, Any]]:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(t) for t in tools_]


def test_catalog_arguments_names_types_descriptions_or_full_schema() -> None:
    def system(style: str) -> str:
        rendering = RenderingSpec(catalog_arguments=style)
        rendered = render_for_constrained_json(HISTORY[:2], _openai(lookup), "auto", rendering)
        return rendered[0].content

    assert 'Arguments: {"query": string, "limit": integer (optional)}' in system("names_types")
    assert "e.g. 'passport'" not in system("names_types")
    described = system("descriptions")
    assert "\"query\": string - Words to look for, e.g. 'passport'" in described
    assert '"limit": integer (optional)' in described
    full = system("full_schema")
    schema = json.loads(full.split("Arguments (JSON schema): ", 1)[1].splitlines()[0])
    assert schema["properties"]["query"]["description"].startswith("Words to look for")
    assert schema["required"] == ["query"]


def test_reply_protocol_explicit_says_results_are_never_written_by_the_model() -> None:
    tools_ = _openai(calculator)
    brief = render_for_constrained_json(HISTORY[:2], tools_, "auto")[0].content
    explicit = render_for_constrained_json(
        HISTORY[:2], tools_, "auto", RenderingSpec(reply_protocol="explicit")
    )[0].content
    assert "When you have the final answer" in brief and "never write" not in brief
    assert "If the question needs a tool, call it first" in explicit
    assert "never write a tool result yourself" in explicit
    assert '{"answer": "..."}' in explicit
    required = render_for_constrained_json(
        HISTORY[:2], tools_, "required", RenderingSpec(reply_protocol="explicit")
    )[0].content
    assert "You must call one of the tools" in required and '{"answer"' not in required


def test_no_tool_rule_is_said_when_a_tool_is_optional() -> None:
    tools_ = _openai(calculator)
    rule = "If no tool can do what is asked, call none: answer and say so."
    for protocol in ("brief", "explicit"):
        rendering = RenderingSpec(reply_protocol=protocol, no_tool_rule=rule)
        auto = render_for_constrained_json(HISTORY[:2], tools_, "auto", rendering)[0].content
        assert rule in auto.split("## How to reply", 1)[1]
        required = render_for_constrained_json(HISTORY[:2], tools_, "required", rendering)
        assert rule not in required[0].content  # a call is required: no way out to offer
    assert rule not in render_for_constrained_json(HISTORY[:2], tools_, "auto")[0].content


def test_parallel_calls_schema_prompt_history_and_reply() -> None:
    tools_ = _openai(calculator, remember)
    single = build_reply_schema(tools_, "auto")
    assert not any(b.get("type") == "array" for b in single["anyOf"])
    schema = build_reply_schema(tools_, "auto", parallel_calls=True)
    (array,) = [b for b in schema["anyOf"] if b.get("type") == "array"]
    assert [b["properties"]["tool"]["const"] for b in array["items"]["anyOf"]] == [
        "calculator",
        "remember",
    ]
    assert schema["anyOf"][-1]["properties"] == {"answer": {"type": "string"}}

    inner = ScriptedChatModel(
        outputs=[
            '[{"tool": "calculator", "arguments": {"expression": "37 * 41"}}, '
            '{"tool": "remember", "arguments": {"fact": "1517"}}]'
        ]
    )
    model = _wrap(
        inner,
        "constrained_json",
        tools=[calculator, remember],
        rendering=RenderingSpec(parallel_calls=True),
    )
    reply = model.invoke(HISTORY)
    assert [c["name"] for c in reply.tool_calls] == ["calculator", "remember"]
    sent = inner.calls[0]
    body_schema = sent["kwargs"]["response_format"]["json_schema"]["schema"]
    assert any(b.get("type") == "array" for b in body_schema["anyOf"])
    messages = sent["messages"]
    assert "To call several tools in one step" in messages[0].content
    assert json.loads(messages[2].content) == [  # the earlier two calls, as one list
        {"tool": "calculator", "arguments": {"expression": "37 * 41"}},
        {"tool": "remember", "arguments": {"fact": "1517"}},
    ]


def test_calls_as_list_is_the_only_call_form_in_schema_prompt_and_history() -> None:
    tools_ = _openai(calculator, remember)
    schema = build_reply_schema(tools_, "auto", calls_as_list=True)
    kinds = [b.get("type") for b in schema["anyOf"]]
    assert kinds == ["array", "object"]  # a list of calls, or the answer: no single-call object
    assert schema["anyOf"][1]["properties"] == {"answer": {"type": "string"}}
    required = build_reply_schema(tools_, "required", calls_as_list=True)
    assert [b.get("type") for b in required["anyOf"]] == ["array"]

    inner = ScriptedChatModel(
        outputs=['[{"tool": "calculator", "arguments": {"expression": "2 + 2"}}]']
    )
    model = _wrap(
        inner,
        "constrained_json",
        tools=[calculator, remember],
        rendering=RenderingSpec(calls_as_list=True),
    )
    reply = model.invoke(HISTORY)
    assert [c["args"] for c in reply.tool_calls] == [{"expression": "2 + 2"}]
    messages = inner.calls[0]["messages"]
    prompt = messages[0].content
    assert "To call tools: [{" in prompt and '{"answer": "..."}' in prompt
    assert "To call a tool: {" not in prompt and "several tools in one step" not in prompt
    # an earlier single call is shown in the list form too, as the protocol asks
    assert json.loads(messages[2].content) == [
        {"tool": "calculator", "arguments": {"expression": "37 * 41"}},
        {"tool": "remember", "arguments": {"fact": "1517"}},
    ]
    one_call = [
        HISTORY[0],
        HISTORY[1],
        AIMessage(content="", tool_calls=[HISTORY[2].tool_calls[0]]),
    ]
    shown = render_for_constrained_json(one_call, tools_, "auto", RenderingSpec(calls_as_list=True))
    assert json.loads(shown[-1].content) == [
        {"tool": "calculator", "arguments": {"expression": "37 * 41"}}
    ]


def test_result_templates_and_continuation_in_constrained_json() -> None:
    rendering = RenderingSpec(
        result_template='<tool_result name="{name}">{result}</tool_result>',
        error_template="{name} failed: {result}",
        continuation="Call another tool or give the final answer.",
    )
    rendered = render_for_constrained_json(
        HISTORY, _openai(calculator, remember), "auto", rendering
    )
    assert rendered[-1].content == (
        '<tool_result name="calculator">1517</tool_result>\n\n'
        "remember failed: disk full\n\n"
        "Call another tool or give the final answer."
    )
    assert 'starts with "<tool_result name="<name>">"' in rendered[0].content
    assert "Tool <name> returned" not in rendered[0].content


def test_result_framing_tool_message_in_constrained_json_keeps_the_chat_templates_roles() -> None:
    rendering = RenderingSpec(result_framing="tool_message", continuation="Go on.")
    rendered = render_for_constrained_json(
        [*HISTORY, AIMessage(content="1517, saved.")],
        _openai(calculator, remember),
        "auto",
        rendering,
    )
    assert [m.type for m in rendered] == ["system", "human", "ai", "tool", "tool", "human", "ai"]
    assert [c["id"] for c in rendered[2].tool_calls] == ["c1", "c2"]
    assert rendered[3].content == "1517" and rendered[5].content == "Go on."
    assert json.loads(rendered[6].content) == {"answer": "1517, saved."}
    assert "comes back in a tool message" in rendered[0].content


def test_native_history_is_unchanged_by_default_and_reframed_on_request() -> None:
    assert render_for_native(HISTORY) == HISTORY
    with_continuation = render_for_native(HISTORY, RenderingSpec(continuation="Go on."))
    assert with_continuation[:-1] == HISTORY and with_continuation[-1].content == "Go on."

    as_user = render_for_native(HISTORY, RenderingSpec(result_framing="user_message"))
    assert [m.type for m in as_user] == ["system", "human", "ai", "human"]
    assert not as_user[2].tool_calls
    assert [json.loads(line) for line in as_user[2].content.splitlines()] == [
        {"name": "calculator", "arguments": {"expression": "37 * 41"}},
        {"name": "remember", "arguments": {"fact": "1517"}},
    ]
    assert as_user[3].content == (
        "Tool calculator returned:\n1517\n\nTool remember returned an error:\ndisk full"
    )

    inner = ScriptedChatModel(outputs=["It is 1517."])
    rendering = RenderingSpec(result_framing="user_message")
    model = _wrap(inner, tools=[calculator, remember], rendering=rendering)
    assert model.invoke(HISTORY).content == "It is 1517."
    assert [m.type for m in inner.calls[0]["messages"]] == ["system", "human", "ai", "human"]


def test_constrained_without_grammar_recovers_a_call_wrapped_in_prose() -> None:
    inner = ScriptedChatModel(
        outputs=[
            'I need the calculator: {"tool": "calculator", "arguments": {"expression": '
            '"37 * 41"}} and then I will answer.'
        ]
    )
    reply = _wrap(inner, "constrained_json", json_transport="none").invoke("x")
    assert _single_call(reply) == CALC_CALL


# --------------------------------------------------------------------------------------------
# sync / async / stream / astream agree
# --------------------------------------------------------------------------------------------

NATIVE_TEXT = ["  ", '{"name": "calc', 'ulator", "arguments": ', '{"expression": "37 * 41"}}']
CONSTRAINED_TEXT = ['{"tool": "calcu', 'lator", "argum', 'ents": {"expression": "37 * 41"}}']


async def _all_four(make) -> list[AIMessage]:
    out = [make().invoke("What is 37 * 41?"), await make().ainvoke("What is 37 * 41?")]
    chunks = list(make().stream("What is 37 * 41?"))
    out.append(sum(chunks[1:], chunks[0]))
    achunks = [c async for c in make().astream("What is 37 * 41?")]
    out.append(sum(achunks[1:], achunks[0]))
    return out


@pytest.mark.parametrize(
    ("fmt", "pieces"), [("native", NATIVE_TEXT), ("constrained_json", CONSTRAINED_TEXT)]
)
@pytest.mark.parametrize("inner_cls", [StreamingScriptedChatModel, ScriptedChatModel])
async def test_sync_async_stream_astream_give_the_same_tool_call(fmt, pieces, inner_cls) -> None:
    replies = await _all_four(lambda: _wrap(inner_cls(outputs=[pieces]), fmt))
    for reply in replies:
        assert _single_call(reply) == CALC_CALL
        assert reply.text.strip() == ""
        assert reply.usage_metadata["total_tokens"] == 18


async def test_native_stream_passes_plain_text_through_incrementally() -> None:
    pieces = [" Hello", " there,", " friend."]
    chunks = list(_wrap(StreamingScriptedChatModel(outputs=[pieces])).stream("hi"))
    texts = [c.content for c in chunks if c.content]
    assert texts == pieces  # nothing held back: it did not start like JSON
    achunks = [c async for c in _wrap(StreamingScriptedChatModel(outputs=[pieces])).astream("hi")]
    assert [c.content for c in achunks if c.content] == pieces


def test_native_stream_releases_held_json_that_is_not_a_tool_call() -> None:
    pieces = ['{"weather":', ' "sunny"}']
    chunks = list(_wrap(StreamingScriptedChatModel(outputs=[pieces])).stream("hi"))
    merged = sum(chunks[1:], chunks[0])
    assert merged.content == '{"weather": "sunny"}' and merged.tool_calls == []
    assert [c.content for c in chunks if c.content] == ['{"weather": "sunny"}']


def test_native_stream_keeps_native_tool_call_chunks() -> None:
    native = AIMessage(
        content="", tool_calls=[{"name": "calculator", "args": {"expression": "2+2"}, "id": "n1"}]
    )
    chunks = list(_wrap(StreamingScriptedChatModel(outputs=[native])).stream("x"))
    merged = sum(chunks[1:], chunks[0])
    assert merged.tool_calls == [
        {"name": "calculator", "args": {"expression": "2+2"}, "id": "n1", "type": "tool_call"}
    ]


ANSWER = 'He said "hi"\nthen left: café ☕ 😀 \\ done'


def _split_everywhere(raw: str, size: int) -> list[str]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
async def test_constrained_stream_decodes_answer_incrementally(size: int) -> None:
    raw = '{ "answer" : ' + json.dumps(ANSWER) + "}"  # ASCII escapes: \" \n \u00e9 \ud83d\ude00
    assert "\\u00e9" in raw and "\\ud83d\\ude00" in raw
    pieces = _split_everywhere(raw, size)

    chunks = list(
        _wrap(StreamingScriptedChatModel(outputs=[pieces]), "constrained_json").stream("x")
    )
    texts = [c.content for c in chunks if c.content]
    assert "".join(texts) == ANSWER
    assert len(texts) > 3  # it arrived in pieces, not all at the end
    assert not any("answer" in t or t.startswith("{") for t in texts)
    merged = sum(chunks[1:], chunks[0])
    assert merged.content == ANSWER and merged.tool_calls == []
    assert merged.usage_metadata["total_tokens"] == 18

    achunks = [
        c
        async for c in _wrap(
            StreamingScriptedChatModel(outputs=[pieces]), "constrained_json"
        ).astream("x")
    ]
    assert "".join(c.content for c in achunks) == ANSWER


def test_constrained_stream_escape_split_inside_unicode_escape() -> None:
    pieces = ['{"answer": "caf\\u0', "0e9 \\ud83d", "\\ude00 \\", 'n\\"ok\\""}']
    chunks = list(
        _wrap(StreamingScriptedChatModel(outputs=[pieces]), "constrained_json").stream("x")
    )
    assert "".join(c.content for c in chunks) == 'café 😀 \n"ok"'


def test_constrained_stream_cut_off_reports_parse_error() -> None:
    pieces = ['{"answer": "The res', "ult is"]
    chunks = list(
        _wrap(StreamingScriptedChatModel(outputs=[pieces]), "constrained_json").stream("x")
    )
    merged = sum(chunks[1:], chunks[0])
    assert merged.content == "The result is"  # what was already shown stays shown
    assert "not complete JSON" in merged.response_metadata["tool_call_parse_error"]

    garbage = ["I think ", "the answer is 5"]
    chunks = list(
        _wrap(StreamingScriptedChatModel(outputs=[garbage]), "constrained_json").stream("x")
    )
    merged = sum(chunks[1:], chunks[0])
    assert merged.content == "I think the answer is 5"
    assert "tool_call_parse_error" in merged.response_metadata


# --------------------------------------------------------------------------------------------
# Real client libraries against loopback stubs
# --------------------------------------------------------------------------------------------


_CUT_OFF = '{"answer": "It is'


def _cut_off_reply(request: RecordedRequest) -> Reply | dict[str, Any]:
    """Answers /v1/chat/completions with a reply cut off by max_tokens, streamed or not."""
    usage = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    if (request.json or {}).get("stream"):
        events: list[dict[str, Any]] = [
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "local",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": piece},
                        "finish_reason": None,
                    }
                ],
            }
            for piece in _split_everywhere(_CUT_OFF, 4)
        ]
        events.append(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "local",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "usage": usage,
            }
        )
        return sse(events)
    return chat_completion(
        _CUT_OFF, model="local", finish_reason="length", usage=(20, 4), id="chatcmpl-1", created=1
    )


@pytest.fixture
def openai_stub(http_stub: RecordingStub) -> str:
    """Base URL of a loopback OpenAI API giving cut-off replies; bodies in http_stub.bodies."""
    http_stub.handler = _cut_off_reply
    return http_stub.url("/v1")


def test_chatopenai_gets_schema_in_body_and_cut_off_reply_does_not_raise(
    openai_stub: str, http_stub: RecordingStub
) -> None:
    from langchain_openai import ChatOpenAI

    inner = ChatOpenAI(
        base_url=openai_stub,
        api_key="k",
        model="local",
        max_retries=0,
        max_tokens=4,
        extra_body={"top_k": 40},
    )
    model = _wrap(inner, "constrained_json")

    reply = model.invoke("What is 37 * 41?")
    assert reply.content == '{"answer": "It is'
    assert "tool_call_parse_error" in reply.response_metadata
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["total_tokens"] == 24

    body = http_stub.bodies[0]
    assert "tools" not in body
    assert body["top_k"] == 40  # the model's own extra_body survives
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert schema["anyOf"][0]["properties"]["tool"] == {"const": "calculator"}

    chunks = list(model.stream("What is 37 * 41?"))
    merged = sum(chunks[1:], chunks[0])
    assert merged.content == "It is"
    assert "tool_call_parse_error" in merged.response_metadata
    assert http_stub.bodies[1]["response_format"] == body["response_format"]


@respx.mock
def test_chatollama_gets_schema_as_format() -> None:
    from langchain_ollama import ChatOllama

    content = '{"tool": "calculator", "arguments": {"expression": "37 * 41"}}'
    lines = [
        {
            "model": "m",
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        for piece in _split_everywhere(content, 9)
    ]
    lines.append(
        {
            "model": "m",
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 20,
            "eval_count": 9,
        }
    )
    route = respx.post("http://127.0.0.1:11434/api/chat").mock(
        return_value=httpx.Response(200, text="\n".join(json.dumps(x) for x in lines) + "\n")
    )
    inner = ChatOllama(model="m", base_url="http://127.0.0.1:11434")
    reply = _wrap(inner, "constrained_json", json_transport="ollama_format").invoke("x")

    assert _single_call(reply) == CALC_CALL
    sent = json.loads(route.calls[0].request.content)
    assert sent["format"]["anyOf"][0]["properties"]["tool"] == {"const": "calculator"}
    assert "tools" not in sent or not sent["tools"]


# --------------------------------------------------------------------------------------------
# The real embedded model
# --------------------------------------------------------------------------------------------


def _real_model_path() -> Path:
    if os.environ.get("HOMESPUN_TEST_MODEL_PATH"):
        return Path(os.environ["HOMESPUN_TEST_MODEL_PATH"])
    from homespun.engines.catalog import pull_model

    models_dir = Path(os.environ.get("HOMESPUN_TEST_MODELS_DIR", REPO / ".cache" / "models"))
    return pull_model("smollm2-135m", models_dir, progress=False)


@pytest.mark.slow
def test_real_model_calls_calculator_through_constrained_json() -> None:
    from langchain_openai import ChatOpenAI

    from homespun.engines.embedded import get_embedded_server

    server = get_embedded_server(_real_model_path(), n_ctx=2048)
    inner = ChatOpenAI(
        base_url=server.base_url,
        api_key=server.api_key,
        model="local",
        temperature=0,
        max_tokens=96,
        max_retries=0,
    )
    model = ToolCallingChatModel(inner=inner, tool_call_format="constrained_json").bind_tools(
        [calculator]
    )
    reply = model.invoke("What is 37 * 41? Use the calculator.")
    assert "tool_call_parse_error" not in reply.response_metadata, reply
    assert len(reply.tool_calls) == 1, reply
    call = reply.tool_calls[0]
    assert call["name"] == "calculator"
    assert isinstance(call["args"]["expression"], str) and call["args"]["expression"].strip()
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0


# --------------------------------------------------------------------------------------------
# Callbacks and LangGraph streaming
# --------------------------------------------------------------------------------------------


def test_inner_run_nests_under_the_wrapper_and_is_marked_nostream() -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    starts: list[dict[str, Any]] = []

    class Recorder(BaseCallbackHandler):
        def on_chat_model_start(
            self, serialized, messages, *, run_id, parent_run_id=None, tags=None, **kwargs
        ):
            starts.append(
                {
                    "run_id": run_id,
                    "parent": parent_run_id,
                    "tags": tags or [],
                    "name": kwargs.get("name") or serialized.get("name"),
                }
            )

    inner = ScriptedChatModel(outputs=['{"answer": "hi"}'])
    reply = _wrap(inner, "constrained_json").invoke("x", config={"callbacks": [Recorder()]})
    assert reply.content == "hi"
    outer, inner_run = starts
    assert inner_run["parent"] == outer["run_id"]
    assert "nostream" in inner_run["tags"] and "nostream" not in outer["tags"]


async def test_langgraph_messages_stream_shows_decoded_answer_not_raw_json() -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    raw = _split_everywhere('{"answer": "Hello \\"Ana\\"!"}', 4)
    model = _wrap(StreamingScriptedChatModel(outputs=[raw, raw]), "constrained_json")

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", END)
    graph = builder.compile()

    streamed = [
        chunk.content
        async for chunk, _meta in graph.astream(
            {"messages": [("user", "hi")]}, stream_mode="messages"
        )
        if chunk.content
    ]
    assert "".join(streamed) == 'Hello "Ana"!'
    final = await graph.ainvoke({"messages": [("user", "hi")]})
    assert final["messages"][-1].content == 'Hello "Ana"!'
