"""Reliable tool calling for any chat model.

`ToolCallingChatModel` wraps a LangChain chat model and gives it tool calls in one of two
formats (the spec's `engine.tool_call_format`):

* ``native``: tools are bound the provider's way (`inner.bind_tools`). Small and Qwen-family
  models often print the call as JSON text instead; when that text is a call to a *bound* tool
  it is turned into a proper `tool_calls` entry.
* ``constrained_json``: no native tools are sent. The tool catalog and a reply protocol go
  into the system message, the tool history is rendered as plain chat turns, and the reply is
  constrained by a JSON schema (llama.cpp / OpenAI-compatible ``response_format`` or Ollama
  ``format``) to either ``{"tool": NAME, "arguments": {...}}`` or ``{"answer": "..."}``.
  This is what makes a 135M model produce well-formed calls.

Output that cannot be parsed (for example cut off by ``max_tokens``) never raises: the raw text
comes back as content with ``response_metadata["tool_call_parse_error"]`` set.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call as make_tool_call
from langchain_core.messages.tool import tool_call_chunk as make_tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = [
    "JsonTransport",
    "ToolCallFormat",
    "ToolCallingChatModel",
    "ToolChoice",
    "build_reply_schema",
    "recover_tool_calls",
    "render_for_constrained_json",
]

JsonTransport = Literal["openai_response_format", "ollama_format", "none"]
ToolCallFormat = Literal["native", "constrained_json"]
ToolChoice = Literal["auto", "required", "none"]

PARSE_ERROR_KEY = "tool_call_parse_error"

# The inner model's own run is tagged so that LangGraph's "messages" stream mode does not show
# its raw tokens (JSON in constrained mode) next to the decoded chunks this wrapper emits.
_INNER_TAGS = ["nostream"]


# --------------------------------------------------------------------------------------------
# Recovering tool calls written as JSON text
# --------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)
_TOOL_CALL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_ARGUMENT_KEYS = ("arguments", "args", "parameters")


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _json_values(text: str) -> list[Any] | None:
    """All JSON values in `text` when it holds nothing else (whitespace between is fine)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return values or None
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _candidate_json(text: str) -> list[Any] | None:
    """JSON values of a reply that is bare JSON, one fenced block, or `<tool_call>` blocks."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.startswith("```"):
        fence = _FENCE_RE.match(stripped)
        return _json_values(fence.group(1)) if fence else None
    if stripped.startswith("<tool_call>"):
        values: list[Any] = []
        rest = _TOOL_CALL_TAG_RE.sub("", stripped).strip()
        if rest:
            return None
        for body in _TOOL_CALL_TAG_RE.findall(stripped):
            found = _json_values(body)
            if found is None:
                return None
            values.extend(found)
        return values or None
    return _json_values(stripped)


def _arguments(value: Any) -> dict[str, Any] | None:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def _call_from_object(obj: Any, tool_names: set[str]) -> ToolCall | None:
    """One tool call from one JSON object of a known form, or None."""
    if not isinstance(obj, dict):
        return None
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else None
    if "function" in obj:
        # OpenAI wire form: {"type": "function", "id": ..., "function": {"name", "arguments"}}
        if set(obj) - {"function", "id", "type"} or obj.get("type", "function") != "function":
            return None
        inner = obj["function"]
        if not isinstance(inner, dict) or set(inner) - {"name", "arguments"}:
            return None
        name, raw_args = inner.get("name"), inner.get("arguments")
    else:
        name_keys = [k for k in ("name", "tool") if k in obj]
        arg_keys = [k for k in _ARGUMENT_KEYS if k in obj]
        if len(name_keys) != 1 or len(arg_keys) > 1:
            return None
        if set(obj) - {name_keys[0], *arg_keys, "id", "type"}:
            return None
        if obj.get("type", "function") not in ("function", "tool_call"):
            return None
        name = obj[name_keys[0]]
        raw_args = obj[arg_keys[0]] if arg_keys else None
    if not isinstance(name, str) or name not in tool_names:
        return None
    args = _arguments(raw_args)
    if args is None:
        return None
    return make_tool_call(name=name, args=args, id=call_id or _new_call_id())


def _calls_from_value(value: Any, tool_names: set[str]) -> list[ToolCall] | None:
    if isinstance(value, dict) and set(value) == {"tool_calls"}:
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = [_call_from_object(item, tool_names) for item in items]
    if any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


def recover_tool_calls(text: str, tool_names: set[str]) -> list[ToolCall] | None:
    """Tool calls that a model wrote as JSON text, or None.

    Accepts bare JSON, one fenced block (```json ... ```), or Qwen-style `<tool_call>` blocks,
    holding objects of the forms ``{"name": N, "arguments": {...}}``,
    ``{"tool": N, "arguments"|"args": {...}}`` and
    ``{"function": {"name": N, "arguments": "<json>"|{...}}}``, or a list of them. Every call must
    name a tool in `tool_names` and the text must hold nothing else; otherwise nothing is
    recovered, so prose or JSON that merely looks like a call stays text.
    """
    if not tool_names or not isinstance(text, str):
        return None
    values = _candidate_json(text)
    if values is None:
        return None
    calls: list[ToolCall] = []
    for value in values:
        found = _calls_from_value(value, tool_names)
        if found is None:
            return None
        calls.extend(found)
    return calls or None


# --------------------------------------------------------------------------------------------
# Constrained JSON: schema, prompt rendering, reply parsing
# --------------------------------------------------------------------------------------------


def _tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _tool_name(tool: dict[str, Any]) -> str:
    return _tool_function(tool)["name"]


def _tool_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    params = _tool_function(tool).get("parameters")
    return copy.deepcopy(params) if params else {"type": "object", "properties": {}}


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, val in node.items():
            if key == "$ref" and isinstance(val, str) and val.startswith("#/$defs/"):
                name = val[len("#/$defs/") :]
                out[key] = "#/$defs/" + renames.get(name, name)
            else:
                out[key] = _rewrite_refs(val, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def build_reply_schema(tools: Sequence[dict[str, Any]], tool_choice: ToolChoice) -> dict[str, Any]:
    """The JSON schema that constrains a reply to one tool call or a final answer.

    One branch per tool, ``{"tool": {"const": NAME}, "arguments": <its parameters>}``, plus the
    answer branch ``{"answer": "..."}``; `required` drops the answer branch and `none` (or no
    tools) leaves only it. `$defs` of the tools' schemas move to the root, where `$ref`s resolve.
    """
    branches: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    active = list(tools) if tool_choice != "none" else []
    for tool in active:
        name = _tool_name(tool)
        params = _tool_parameters(tool)
        tool_defs = params.pop("$defs", None) or {}
        renames: dict[str, str] = {}
        for def_name, definition in tool_defs.items():
            if def_name in defs and defs[def_name] != definition:
                renames[def_name] = f"{name}__{def_name}"
        for def_name, definition in tool_defs.items():
            defs[renames.get(def_name, def_name)] = _rewrite_refs(definition, renames)
        params = _rewrite_refs(params, renames)
        branches.append(
            {
                "type": "object",
                "properties": {"tool": {"const": name}, "arguments": params},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    if tool_choice != "required" or not branches:
        branches.append(
            {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"anyOf": branches}
    if defs:
        schema["$defs"] = defs
    return schema


def _catalog_text(tools: Sequence[dict[str, Any]], tool_choice: ToolChoice) -> str:
    active = list(tools) if tool_choice != "none" else []
    answer_form = '{"answer": "..."}'
    if not active:
        return f"## How to reply\nReply with one JSON object and nothing else: {answer_form}"
    lines = ["## Tools", "You can call these tools:"]
    for tool in active:
        fn = _tool_function(tool)
        description = " ".join((fn.get("description") or "").split())
        lines.append(f"- {fn['name']}: {description}" if description else f"- {fn['name']}")
        lines.append(f"  Arguments: {_compact_arguments(_tool_parameters(tool))}")
    lines += ["", "## How to reply", "Reply with one JSON object and nothing else."]
    call_form = '{"tool": "...", "arguments": {...}}'
    if tool_choice == "required":
        lines.append(f"You must call one of the tools: {call_form}")
    else:
        lines.append(f"To call a tool: {call_form}")
        lines.append(f"When you have the final answer: {answer_form}")
    lines.append(
        'A tool\'s result comes back in a message that starts with "Tool <name> returned:".'
    )
    return "\n".join(lines)


def _compact_arguments(params: dict[str, Any]) -> str:
    """`{"expression": string}`: names and types only. Small models copy example text from
    argument descriptions verbatim into their calls, so the catalog leaves those out (the
    decoding grammar still enforces the full schema)."""
    props = params.get("properties") or {}
    if not props:
        return "{} (none)"
    required = set(params.get("required") or [])
    parts = []
    for name, prop in props.items():
        kind = prop.get("type") or (
            "one of " + "/".join(map(str, prop["enum"])) if "enum" in prop else "value"
        )
        if isinstance(kind, list):
            kind = "/".join(map(str, kind))
        parts.append(f'"{name}": {kind}' + ("" if name in required else " (optional)"))
    return "{" + ", ".join(parts) + "}"


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and "text" in block and "type" not in block:
            parts.append(str(block["text"]))
        else:
            parts.append(json.dumps(block, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _append_to_system(message: SystemMessage, extra: str) -> SystemMessage:
    content = message.content
    if isinstance(content, str):
        new_content: Any = f"{content.rstrip()}\n\n{extra}" if content.strip() else extra
    else:
        new_content = [*content, {"type": "text", "text": extra}]
    return message.model_copy(update={"content": new_content})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_for_constrained_json(
    messages: Sequence[BaseMessage],
    tools: Sequence[dict[str, Any]],
    tool_choice: ToolChoice = "auto",
) -> list[BaseMessage]:
    """The conversation as a model without tool support sees it in constrained_json mode.

    The first system message gets the tool catalog and reply protocol (one is created if there
    is none); assistant turns become the JSON the protocol asks for; tool results become user
    turns (consecutive ones merged, since many chat templates want roles to alternate).
    """
    call_names: dict[str, str] = {}
    rendered: list[BaseMessage] = []
    pending_results: list[str] = []

    def flush_results() -> None:
        if pending_results:
            rendered.append(HumanMessage(content="\n\n".join(pending_results)))
            pending_results.clear()

    for message in messages:
        if isinstance(message, ToolMessage):
            name = message.name or call_names.get(message.tool_call_id) or "tool"
            body = text_of(message.content)
            if getattr(message, "status", "success") == "error":
                pending_results.append(f"Tool {name} returned an error:\n{body}")
            else:
                pending_results.append(f"Tool {name} returned:\n{body}")
            continue
        flush_results()
        if isinstance(message, AIMessage):
            if message.tool_calls:
                for call in message.tool_calls:
                    if call.get("id"):
                        call_names[call["id"]] = call["name"]
                text = "\n".join(
                    _dumps({"tool": call["name"], "arguments": call["args"]})
                    for call in message.tool_calls
                )
            else:
                text = _dumps({"answer": text_of(message.content)})
            rendered.append(AIMessage(content=text, id=message.id, name=message.name))
        else:
            rendered.append(message)
    flush_results()

    catalog = _catalog_text(tools, tool_choice)
    for index, message in enumerate(rendered):
        if isinstance(message, SystemMessage):
            rendered[index] = _append_to_system(message, catalog)
            break
    else:
        rendered.insert(0, SystemMessage(content=catalog))
    return rendered


@dataclass(frozen=True)
class _Answer:
    text: str


@dataclass(frozen=True)
class _Calls:
    calls: list[ToolCall]


@dataclass(frozen=True)
class _ParseError:
    reason: str


_ConstrainedReply = _Answer | _Calls | _ParseError


def _parse_constrained_reply(text: str, tool_names: set[str]) -> _ConstrainedReply:
    values = _candidate_json(text)
    if values is None:
        reason = "reply is empty" if not text.strip() else "reply is not complete JSON"
        return _ParseError(f"{reason}: {text[:200]!r}")
    if len(values) == 1 and isinstance(values[0], dict) and set(values[0]) == {"answer"}:
        answer = values[0]["answer"]
        return _Answer(answer if isinstance(answer, str) else _dumps(answer))
    calls = recover_tool_calls(text, tool_names)
    if calls:
        return _Calls(calls)
    first = values[0]
    if isinstance(first, dict) and isinstance(first.get("tool"), str):
        if first["tool"] not in tool_names:
            return _ParseError(f"reply calls unknown tool {first['tool']!r}")
        return _ParseError(f"reply has bad arguments for tool {first['tool']!r}")
    return _ParseError("reply JSON is neither a tool call nor an answer")


# --------------------------------------------------------------------------------------------
# Streaming helpers
# --------------------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_ANSWER_PREFIX = ("{", '"answer"', ":", '"')


class _AnswerStreamDecoder:
    """Decodes the string of ``{"answer": "..."}`` as its raw JSON text arrives in pieces.

    The grammar emits the key first, so the answer can be shown token by token; escapes
    (including ``\\uXXXX`` surrogate pairs) split across pieces are held until complete.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.state: Literal["prefix", "string", "done", "other"] = "prefix"
        self.pos = 0
        self.emitted = ""

    def feed(self, text: str) -> str:
        self.raw += text
        if self.state == "prefix":
            self._match_prefix()
        if self.state != "string":
            return ""
        out = self._decode()
        self.emitted += out
        return out

    def _match_prefix(self) -> None:
        raw, pos = self.raw, 0
        for token in _ANSWER_PREFIX:
            while pos < len(raw) and raw[pos] in " \t\r\n":
                pos += 1
            available = raw[pos : pos + len(token)]
            if available != token:
                if len(available) < len(token) and token.startswith(available):
                    return  # wait for more text
                self.state = "other"
                return
            pos += len(token)
        self.state, self.pos = "string", pos

    def _decode(self) -> str:
        raw, pos, out = self.raw, self.pos, []
        while pos < len(raw):
            char = raw[pos]
            if char == '"':
                self.state = "done"
                pos += 1
                break
            if char != "\\":
                out.append(char)
                pos += 1
                continue
            if pos + 1 >= len(raw):
                break
            kind = raw[pos + 1]
            if kind in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[kind])
                pos += 2
                continue
            if kind != "u":
                self.state = "other"  # invalid JSON; the final parse reports it
                break
            code = _hex4(raw, pos + 2)
            if code is None:
                if len(raw) < pos + 6:
                    break
                self.state = "other"
                break
            if 0xD800 <= code < 0xDC00:
                follow = raw[pos + 6 : pos + 12]
                if len(follow) < 6 and _may_become_low_surrogate(follow):
                    break  # wait: the pair's second half may be on its way
                low = _hex4(follow, 2) if follow.startswith("\\u") else None
                if low is not None and 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    pos += 12
                    continue
            out.append(chr(code))
            pos += 6
        self.pos = pos
        return "".join(out)


def _may_become_low_surrogate(partial: str) -> bool:
    hex_digits = "0123456789abcdefABCDEF"
    return "\\u".startswith(partial[:2]) and all(c in hex_digits for c in partial[2:])


def _hex4(raw: str, start: int) -> int | None:
    digits = raw[start : start + 4]
    if len(digits) < 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)


def _as_chunk(message: BaseMessage) -> AIMessageChunk:
    """A stream item as a chunk: a model that cannot stream yields its whole AIMessage once."""
    if isinstance(message, AIMessageChunk):
        return message
    tool_calls = getattr(message, "tool_calls", None) or []
    return AIMessageChunk(
        content=message.content,
        id=message.id,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=getattr(message, "usage_metadata", None),
        tool_call_chunks=[
            make_tool_call_chunk(
                name=call["name"], args=_dumps(call["args"]), id=call.get("id"), index=index
            )
            for index, call in enumerate(tool_calls)
        ],
    )


def _has_payload(chunk: AIMessageChunk) -> bool:
    return bool(
        chunk.usage_metadata
        or chunk.response_metadata
        or chunk.additional_kwargs
        or chunk.tool_call_chunks
    )


def _without_text(chunk: AIMessageChunk, *, keep_tool_calls: bool = True) -> AIMessageChunk | None:
    """The chunk's metadata (usage, finish reason, native tool-call chunks) with no text."""
    if not _has_payload(chunk):
        return None
    return _fresh_chunk(chunk, content="", keep_tool_calls=keep_tool_calls)


def _fresh_chunk(
    chunk: AIMessageChunk, content: Any, *, keep_tool_calls: bool = True
) -> AIMessageChunk:
    # Ids LangChain made for the inner run and the inner's "last" marker are dropped: the
    # outer run assigns its own and ends its own stream.
    return AIMessageChunk(
        content=content,
        id=_provider_id(chunk),
        additional_kwargs=chunk.additional_kwargs,
        response_metadata=chunk.response_metadata,
        usage_metadata=chunk.usage_metadata,
        tool_call_chunks=chunk.tool_call_chunks if keep_tool_calls else [],
    )


def _tool_call_chunks_message(calls: list[ToolCall], **fields: Any) -> AIMessageChunk:
    return AIMessageChunk(
        content="",
        tool_call_chunks=[
            make_tool_call_chunk(
                name=call["name"], args=_dumps(call["args"]), id=call["id"], index=index
            )
            for index, call in enumerate(calls)
        ],
        **fields,
    )


_JSON_MARKERS = ("{", "[", "```", "<tool_call>")


class _DeferredMetadata:
    """Collects what text-less chunks carry (usage, finish reason) to emit it once, at the end.

    Summing chunks is how LangChain aggregates a stream, so one summed chunk at the end gives
    the same final message as many empty ones along the way, without the noise.
    """

    def __init__(self) -> None:
        self.pending: AIMessageChunk | None = None

    def add(self, chunk: AIMessageChunk, *, keep_tool_calls: bool) -> None:
        rest = _without_text(chunk, keep_tool_calls=keep_tool_calls)
        if rest is not None:
            self.pending = rest if self.pending is None else self.pending + rest

    def flush(self) -> list[AIMessageChunk]:
        pending, self.pending = self.pending, None
        return [pending] if pending is not None else []


class _NativeStreamFilter:
    """Passes text through until it starts like JSON, then holds it to recover a tool call."""

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self.mode: Literal["undecided", "hold", "pass"] = "undecided" if tool_names else "pass"
        self.held = ""
        self.saw_native_calls = False
        self.deferred = _DeferredMetadata()

    def feed(self, item: BaseMessage) -> list[AIMessageChunk]:
        chunk = _as_chunk(item)
        if chunk.tool_call_chunks:
            self.saw_native_calls = True
        if self.mode == "pass":
            return [_fresh_chunk(chunk, content=chunk.content)]
        if not isinstance(chunk.content, str):
            return [*self._release(), _fresh_chunk(chunk, content=chunk.content)]
        self.held += chunk.content
        if self.mode == "undecided":
            start = self.held.lstrip()
            if start and not any(start.startswith(m) for m in _JSON_MARKERS):
                if not any(m.startswith(start) for m in _JSON_MARKERS):
                    self.mode = "pass"
                    text, self.held = self.held, ""
                    return [_fresh_chunk(chunk, content=text)]
            elif start:
                self.mode = "hold"
        self.deferred.add(chunk, keep_tool_calls=True)
        return []

    def _release(self) -> list[AIMessageChunk]:
        self.mode = "pass"
        text, self.held = self.held, ""
        return [AIMessageChunk(content=text)] if text else []

    def finish(self) -> list[AIMessageChunk]:
        out: list[AIMessageChunk] = []
        if self.mode != "pass" and self.held:
            calls = (
                None if self.saw_native_calls else recover_tool_calls(self.held, self.tool_names)
            )
            if calls:
                self.held = ""
                out.append(_tool_call_chunks_message(calls))
            else:
                out.extend(self._release())
        return [*out, *self.deferred.flush()]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _provider_id(message: BaseMessage) -> str | None:
    """The inner reply's id if the provider set it (not one LangChain made for the inner run)."""
    if message.id and not message.id.startswith(("lc_run-", "run-")):
        return message.id
    return None


def _to_openai_tool(tool: Any) -> dict[str, Any]:
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool:
        return copy.deepcopy(tool)
    return convert_to_openai_tool(tool)


class ToolCallingChatModel(BaseChatModel):
    """Any chat model with reliable tool calls, natively or through constrained JSON."""

    inner: BaseChatModel
    """The backend model that produces the text."""
    tool_call_format: ToolCallFormat = "native"
    """``native``: provider tool calling plus recovery of calls written as JSON text.
    ``constrained_json``: tools in the prompt, reply constrained to a JSON schema."""
    json_transport: JsonTransport = "openai_response_format"
    """How the reply schema reaches `inner` in constrained_json mode: an OpenAI-style
    ``response_format`` (llama.cpp server, vLLM, OpenAI), Ollama's ``format``, or not at all
    (prompt only; the reply is still parsed)."""
    tools: list[dict] = Field(default_factory=list)
    """Bound tools in OpenAI format (`convert_to_openai_tool`)."""
    tool_choice: ToolChoice = "auto"
    """``auto``: call a tool or answer; ``required``: must call a tool; ``none``: answer only."""

    @property
    def _llm_type(self) -> str:
        return "homespun-tool-calling"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            **self.inner._identifying_params,
            "inner_llm_type": self.inner._llm_type,
            "tool_call_format": self.tool_call_format,
            "json_transport": self.json_transport,
            "tool_choice": self.tool_choice,
            "tools": [_tool_name(tool) for tool in self.tools],
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # Tracing and telemetry should name the real provider and model, not this wrapper.
        try:
            return self.inner._get_ls_params(stop=stop, **kwargs)
        except Exception:  # pragma: no cover - depends on the inner model
            return super()._get_ls_params(stop=stop, **kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> ToolCallingChatModel:
        """A copy of this model with `tools` bound.

        `tool_choice` takes ``auto``, ``required`` (or LangChain's ``any``/``True``), ``none``
        (or ``False``), or a tool's name, which binds that tool alone as required. ``None``
        keeps the current choice. Provider-specific kwargs (``strict``,
        ``parallel_tool_calls``) have no effect here.
        """
        converted = [_to_openai_tool(tool) for tool in tools]
        choice: ToolChoice = self.tool_choice
        if tool_choice is None:
            pass
        elif tool_choice is True or tool_choice in ("any", "required"):
            choice = "required"
        elif tool_choice is False or tool_choice == "none":
            choice = "none"
        elif tool_choice == "auto":
            choice = "auto"
        elif isinstance(tool_choice, str | dict):
            if isinstance(tool_choice, dict):  # OpenAI form {"type": "function", "function": ...}
                tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get(
                    "name", ""
                )
            chosen = [tool for tool in converted if _tool_name(tool) == tool_choice]
            if not chosen:
                raise ValueError(
                    f"tool_choice {tool_choice!r} names no bound tool; bound: "
                    f"{[_tool_name(tool) for tool in converted]}"
                )
            converted, choice = chosen, "required"
        else:
            raise ValueError(f"unsupported tool_choice {tool_choice!r}")
        return self.model_copy(update={"tools": converted, "tool_choice": choice})

    # -- shared -------------------------------------------------------------------------------

    @property
    def _tool_names(self) -> set[str]:
        if self.tool_choice == "none":
            return set()
        return {_tool_name(tool) for tool in self.tools}

    def _inner_config(
        self, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None
    ) -> RunnableConfig:
        config: RunnableConfig = {"tags": list(_INNER_TAGS)}
        if run_manager is not None:
            # An LLM run manager has no get_child(); build the same child manager by hand so
            # the inner model's run nests under this one in traces.
            manager_cls = (
                AsyncCallbackManager
                if isinstance(run_manager, AsyncCallbackManagerForLLMRun)
                else CallbackManager
            )
            child = manager_cls(handlers=[], parent_run_id=run_manager.run_id)
            child.set_handlers(run_manager.inheritable_handlers)
            child.add_tags(run_manager.inheritable_tags)
            child.add_metadata(run_manager.inheritable_metadata)
            config["callbacks"] = child
        return config

    def _native_runnable(self) -> Runnable[LanguageModelInput, BaseMessage]:
        if not self.tools or self.tool_choice == "none":
            return self.inner
        # "any" is LangChain's spelling of "required"; every provider package maps it.
        choice = "any" if self.tool_choice == "required" else "auto"
        return self.inner.bind_tools(self.tools, tool_choice=choice)

    def _constrained_request(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> tuple[list[BaseMessage], dict[str, Any]]:
        prompt = render_for_constrained_json(messages, self.tools, self.tool_choice)
        schema = build_reply_schema(self.tools, self.tool_choice)
        call_kwargs = dict(kwargs)
        if self.json_transport == "openai_response_format":
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema},
            }
            if "extra_body" in type(self.inner).model_fields:
                # langchain-openai passes a `response_format` kwarg through unchanged, but its
                # presence switches to the SDK's structured-output helpers, which raise
                # LengthFinishReasonError on a reply cut off by max_tokens (and add a duplicate
                # final chunk when streaming). In the request body it is plain JSON for the
                # server; the model's own extra_body (top_k, repeat_penalty) must survive.
                extra_body = {
                    **(getattr(self.inner, "extra_body", None) or {}),
                    **(call_kwargs.get("extra_body") or {}),
                    "response_format": response_format,
                }
                call_kwargs["extra_body"] = extra_body
            else:
                call_kwargs["response_format"] = response_format
        elif self.json_transport == "ollama_format":
            call_kwargs["format"] = schema
        return prompt, call_kwargs

    def _recover_native(self, message: BaseMessage) -> BaseMessage:
        if not isinstance(message, AIMessage) or message.tool_calls:
            return message
        calls = recover_tool_calls(text_of(message.content), self._tool_names)
        if not calls:
            return message
        return AIMessage(
            content="",
            tool_calls=calls,
            id=_provider_id(message),
            additional_kwargs=message.additional_kwargs,
            response_metadata=message.response_metadata,
            usage_metadata=message.usage_metadata,
        )

    def _constrained_message(self, message: BaseMessage) -> AIMessage:
        text = text_of(message.content)
        fields: dict[str, Any] = {
            "id": _provider_id(message),
            "additional_kwargs": dict(getattr(message, "additional_kwargs", {}) or {}),
            "response_metadata": dict(message.response_metadata or {}),
            "usage_metadata": getattr(message, "usage_metadata", None),
        }
        reply = _parse_constrained_reply(text, self._tool_names)
        if isinstance(reply, _Calls):
            return AIMessage(content="", tool_calls=reply.calls, **fields)
        if isinstance(reply, _Answer):
            return AIMessage(content=reply.text, **fields)
        fields["response_metadata"][PARSE_ERROR_KEY] = reply.reason
        return AIMessage(content=text, **fields)

    # -- sync ---------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = self._inner_config(run_manager)
        if self.tool_call_format == "native":
            reply = self._native_runnable().invoke(messages, config, stop=stop, **kwargs)
            message = self._recover_native(reply)
        else:
            prompt, call_kwargs = self._constrained_request(messages, kwargs)
            reply = self.inner.invoke(prompt, config, stop=stop, **call_kwargs)
            message = self._constrained_message(reply)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        config = self._inner_config(run_manager)
        if self.tool_call_format == "native":
            native = _NativeStreamFilter(self._tool_names)
            source = self._native_runnable().stream(messages, config, stop=stop, **kwargs)
            for chunk in source:
                for out in native.feed(chunk):
                    yield self._emit(out, run_manager)
            for out in native.finish():
                yield self._emit(out, run_manager)
            return
        prompt, call_kwargs = self._constrained_request(messages, kwargs)
        constrained = _ConstrainedStream(self._tool_names)
        for chunk in self.inner.stream(prompt, config, stop=stop, **call_kwargs):
            for out in constrained.feed(chunk):
                yield self._emit(out, run_manager)
        for out in constrained.finish():
            yield self._emit(out, run_manager)

    @staticmethod
    def _emit(
        chunk: AIMessageChunk, run_manager: CallbackManagerForLLMRun | None
    ) -> ChatGenerationChunk:
        generation = ChatGenerationChunk(message=chunk)
        if run_manager is not None:
            run_manager.on_llm_new_token(generation.text, chunk=generation)
        return generation

    # -- async --------------------------------------------------------------------------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = self._inner_config(run_manager)
        if self.tool_call_format == "native":
            reply = await self._native_runnable().ainvoke(messages, config, stop=stop, **kwargs)
            message = self._recover_native(reply)
        else:
            prompt, call_kwargs = self._constrained_request(messages, kwargs)
            reply = await self.inner.ainvoke(prompt, config, stop=stop, **call_kwargs)
            message = self._constrained_message(reply)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        config = self._inner_config(run_manager)
        if self.tool_call_format == "native":
            native = _NativeStreamFilter(self._tool_names)
            source = self._native_runnable().astream(messages, config, stop=stop, **kwargs)
            async for chunk in source:
                for out in native.feed(chunk):
                    yield await self._aemit(out, run_manager)
            for out in native.finish():
                yield await self._aemit(out, run_manager)
            return
        prompt, call_kwargs = self._constrained_request(messages, kwargs)
        constrained = _ConstrainedStream(self._tool_names)
        async for chunk in self.inner.astream(prompt, config, stop=stop, **call_kwargs):
            for out in constrained.feed(chunk):
                yield await self._aemit(out, run_manager)
        for out in constrained.finish():
            yield await self._aemit(out, run_manager)

    @staticmethod
    async def _aemit(
        chunk: AIMessageChunk, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> ChatGenerationChunk:
        generation = ChatGenerationChunk(message=chunk)
        if run_manager is not None:
            await run_manager.on_llm_new_token(generation.text, chunk=generation)
        return generation


class _ConstrainedStream:
    """Turns the inner model's JSON reply chunks into answer text or tool-call chunks."""

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self.decoder = _AnswerStreamDecoder()
        self.deferred = _DeferredMetadata()

    def feed(self, item: BaseMessage) -> list[AIMessageChunk]:
        chunk = _as_chunk(item)
        # No tools were sent, so the inner cannot stream native tool-call chunks.
        text = text_of(chunk.content)
        decoded = self.decoder.feed(text) if text else ""
        if decoded:
            return [_fresh_chunk(chunk, content=decoded, keep_tool_calls=False)]
        self.deferred.add(chunk, keep_tool_calls=False)
        return []

    def finish(self) -> list[AIMessageChunk]:
        return [*self._result(), *self.deferred.flush()]

    def _result(self) -> list[AIMessageChunk]:
        reply = _parse_constrained_reply(self.decoder.raw, self.tool_names)
        streamed = self.decoder.emitted
        if isinstance(reply, _Calls):
            return [_tool_call_chunks_message(reply.calls)]
        if isinstance(reply, _Answer):
            if reply.text.startswith(streamed):
                rest = reply.text[len(streamed) :]
                return [AIMessageChunk(content=rest)] if rest else []
            return []  # cannot happen with valid JSON; never repeat what was shown
        # Unparseable: show the raw text unless its answer was already being shown.
        metadata = {PARSE_ERROR_KEY: reply.reason}
        content = "" if streamed else self.decoder.raw
        return [AIMessageChunk(content=content, response_metadata=metadata)]
