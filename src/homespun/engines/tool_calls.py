"""Reliable tool calling for any chat model.

`ToolCallingChatModel` wraps a LangChain chat model and gives it tool calls in one of two
formats (the spec's `engine.tool_call_format`):

* ``native``: tools are bound the provider's way (`inner.bind_tools`). Small and Qwen-family
  models often print the call as JSON text instead, fenced or bare, often with prose before
  or after it; every such call to a *bound* tool is turned into a proper `tool_calls` entry.
* ``constrained_json``: no native tools are sent. The tool catalog and a reply protocol go
  into the system message, the tool history is rendered as plain chat turns, and the reply is
  constrained by a JSON schema (llama.cpp / OpenAI-compatible ``response_format`` or Ollama
  ``format``) to either ``{"tool": NAME, "arguments": {...}}`` or ``{"answer": "..."}`` (or,
  with parallel calls, a list of calls). This is what makes a 135M model produce well-formed
  calls.

How the catalog, the protocol, tool results and the continuation after them are written is
the spec's `[agent.rendering]` (`RenderingSpec`); its defaults are the original rendering.

Output that cannot be parsed (for example cut off by ``max_tokens``) never raises. Text that
looks like a tool call but cannot be read (cut off mid-JSON, invalid JSON naming a bound tool)
is never returned as the answer: the message has empty content (or the prose before the call)
and ``response_metadata`` names the problem (``tool_call_parse_error``) and keeps the raw text
(``unparsed_tool_call``); the assistant graph ends such a run as an error. Other unparseable
output (prose instead of JSON, an answer cut off) comes back as text with
``tool_call_parse_error`` set.
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

from homespun.spec import RenderingSpec

__all__ = [
    "PARSE_ERROR_KEY",
    "UNPARSED_TOOL_CALL_KEY",
    "JsonTransport",
    "ToolCallFormat",
    "ToolCallScan",
    "ToolCallingChatModel",
    "ToolChoice",
    "build_reply_schema",
    "recover_tool_calls",
    "render_for_constrained_json",
    "render_for_native",
    "scan_tool_calls",
]

JsonTransport = Literal["openai_response_format", "ollama_format", "none"]
ToolCallFormat = Literal["native", "constrained_json"]
ToolChoice = Literal["auto", "required", "none"]

PARSE_ERROR_KEY = "tool_call_parse_error"
UNPARSED_TOOL_CALL_KEY = "unparsed_tool_call"
"""response_metadata key of a reply that looks like a tool call but could not be read: the raw
text. Such a reply is never an answer (graphs.assistant ends the run as an error)."""

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

    Finds every call in `text`: bare JSON, fenced blocks (```json ... ```) or Qwen-style
    `<tool_call>` blocks, with or without prose before, between or after them, holding objects
    of the forms ``{"name": N, "arguments": {...}}``, ``{"tool": N, "arguments"|"args": {...}}``
    and ``{"function": {"name": N, "arguments": "<json>"|{...}}}``, or a list of them. Only
    calls that name a tool in `tool_names` count, and only objects of exactly these forms (an
    extra key, as in a tool's description, is not a call). `scan_tool_calls` also says when
    something looks like a call but cannot be read.
    """
    return scan_tool_calls(text, tool_names).calls or None


@dataclass(frozen=True)
class ToolCallScan:
    """What `scan_tool_calls` found in a reply's text."""

    calls: list[ToolCall]
    """Every readable call to a bound tool, in order."""
    prefix: str
    """The prose before the first call (or before what looks like one), without a fence or
    `<tool_call>` opener; empty when that is only whitespace."""
    unparsed: str
    """Why text that looks like a tool call could not be read ('' when nothing did)."""


# A key and value that only a call to a tool names: "name"/"tool" : "<tool name>"; the
# second group is the closing quote, absent when the reply was cut off inside the name.
_NAMED_CALL_RE = re.compile(r"""["'](?:name|tool)["']\s*:\s*["']([A-Za-z0-9_.\-]*)(["']?)""")
_OPENER_RE = re.compile(r"[{\[]")
# A fence or tag that opens a call (and the blanks up to its JSON): not part of the prose.
_TRAILING_OPENER_RE = re.compile(r"(?:```[A-Za-z0-9_-]*|<tool_call>)\s*$")
# The keys a JSON tool call can start with (a reply cut off before its tool's name).
_CALL_KEYS = ("name", "tool", "function", "type", "tool_calls", "id")
_FIRST_KEY_RE = re.compile(r"""[\s\[{]*(["']?)([A-Za-z_]*)(["']?)""")


def _snippet(text: str, n: int = 200) -> str:
    return repr(text[:n] + ("…" if len(text) > n else ""))


def _closes(text: str, start: int) -> bool:
    """Whether the JSON-like bracket at `start` is closed before the text ends."""
    depth, in_string, escaped = 0, False, False
    for char in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth <= 0:
                return True
    return False


def _named_tool(obj: Any) -> str | None:
    """The tool a call-shaped object names ("name", "tool" or "function.name"), if any."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("function")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        return inner["name"]
    for key in ("name", "tool"):
        if isinstance(obj.get(key), str):
            return obj[key]
    return None


def _bad_call(value: Any, tool_names: set[str]) -> str | None:
    """Why a complete JSON value that is shaped like a call to a bound tool is not one."""
    if isinstance(value, dict) and set(value) == {"tool_calls"}:
        value = value["tool_calls"]
    if isinstance(value, list):
        named = [_named_tool(item) for item in value]
        if any(name in tool_names for name in named):
            unknown = sorted({str(n) for n in named if n not in tool_names})
            if unknown:
                return f"a list of tool calls names tools that are not offered: {unknown}"
            for item in value:
                reason = _bad_call(item, tool_names)
                if reason:
                    return reason
        return None
    name = _named_tool(value)
    if name not in tool_names:
        return None
    call_keys = {"name", "tool", "function", "id", "type", *_ARGUMENT_KEYS}
    if set(value) - call_keys:
        return None  # e.g. a tool's description: not a call at all
    return f"the call to {name!r} has arguments that are not a JSON object"


def scan_tool_calls(text: str, tool_names: set[str], *, cut_off: bool = False) -> ToolCallScan:
    """The tool calls in a reply's text, the prose before them, and what could not be read.

    Every JSON value in `text` (bare, fenced or in `<tool_call>` tags, prose around it or not)
    that is a call, or a list of calls, to tools in `tool_names` is a call. Text that looks
    like a call but is not one is reported in `unparsed`: a complete object shaped like a call
    to a bound tool whose arguments cannot be read, invalid or unfinished JSON that names a
    bound tool (``"name": "calculator"``), and, when `cut_off` (the reply hit its token cap),
    JSON that stops before it could name its tool.
    """
    if not tool_names or not isinstance(text, str) or not text.strip():
        return ToolCallScan([], "", "")
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    calls: list[ToolCall] = []
    first: int | None = None  # where the first call (or the first problem) starts
    problems: list[tuple[int, str]] = []
    pos = 0
    while (match := _OPENER_RE.search(text, pos)) is not None:
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        spans.append((start, end))
        found = _calls_from_value(value, tool_names)
        if found:
            calls.extend(found)
            first = start if first is None else first
        elif (reason := _bad_call(value, tool_names)) is not None:
            problems.append((start, reason))
        pos = end

    def outside(index: int) -> bool:
        return not any(a <= index < b for a, b in spans)

    for named in _NAMED_CALL_RE.finditer(text):
        if not outside(named.start()):
            continue
        name, closed = named.group(1), named.group(2)
        at_end = named.end() == len(text.rstrip())
        opener = max(text.rfind("{", 0, named.start()), text.rfind("[", 0, named.start()))
        if opener < 0:
            continue  # prose that happens to quote a key, not JSON
        if name in tool_names or (
            not closed and at_end and any(t.startswith(name) for t in tool_names)
        ):
            state = "is cut off" if not _closes(text, opener) else "is not valid JSON"
            problems.append(
                (opener, f"a call to {name or 'a tool'!r} {state}: {_snippet(text[opener:])}")
            )
    if cut_off and not problems:
        tail = next(
            (
                m.start()
                for m in _OPENER_RE.finditer(text)
                if outside(m.start()) and not _closes(text, m.start())
            ),
            None,
        )
        if tail is not None:
            quote, key, closing = _FIRST_KEY_RE.match(text, tail).groups()  # type: ignore[union-attr]
            rest = text[tail:].strip("[{ \t\r\n")
            started_call = quote and (
                key in _CALL_KEYS or (not closing and any(k.startswith(key) for k in _CALL_KEYS))
            )
            if not rest or rest in ('"', "'") or started_call:
                problems.append(
                    (tail, f"the reply was cut off inside a tool call: {_snippet(text[tail:])}")
                )
    if first is None and problems:
        first = min(start for start, _ in problems)
    prefix = ""
    if first is not None:
        before = _TRAILING_OPENER_RE.sub("", text[:first], count=1)
        prefix = before if before.strip() else ""
    unparsed = "; ".join(reason for _, reason in sorted(problems))
    return ToolCallScan(calls, prefix, unparsed)


def was_cut_off(metadata: dict[str, Any] | None) -> bool:
    """Whether a reply's response_metadata says it stopped at its token cap."""
    metadata = metadata or {}
    return (
        metadata.get("finish_reason") == "length"
        or metadata.get("done_reason") == "length"
        or metadata.get("stop_reason") == "max_tokens"
    )


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


def build_reply_schema(
    tools: Sequence[dict[str, Any]],
    tool_choice: ToolChoice,
    *,
    parallel_calls: bool = False,
    calls_as_list: bool = False,
) -> dict[str, Any]:
    """The JSON schema that constrains a reply to one tool call or a final answer.

    One branch per tool, ``{"tool": {"const": NAME}, "arguments": <its parameters>}``, plus the
    answer branch ``{"answer": "..."}``; `required` drops the answer branch and `none` (or no
    tools) leaves only it. With `parallel_calls` a list of one or more calls is a branch too;
    with `calls_as_list` it is the only form a call takes.
    `$defs` of the tools' schemas move to the root, where `$ref`s resolve.
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
    if (parallel_calls or calls_as_list) and branches:
        calls = copy.deepcopy(branches)
        listed = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        branches = [listed] if calls_as_list else [*branches, listed]
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


_ANSWER_FORM = '{"answer": "..."}'
_CALL_FORM = '{"tool": "...", "arguments": {...}}'
_CALLS_FORM = '[{"tool": "...", "arguments": {...}}, {"tool": "...", "arguments": {...}}]'
_LIST_FORM = '[{"tool": "...", "arguments": {...}}, ...]'


def _framing(rendering: RenderingSpec, tool_call_format: ToolCallFormat) -> str:
    """user_message or tool_message: how tool results go back to the model in this format."""
    if rendering.result_framing != "auto":
        return rendering.result_framing
    return "tool_message" if tool_call_format == "native" else "user_message"


def _result_notice(rendering: RenderingSpec) -> str:
    """The catalog's sentence on how a tool result comes back ('' when it cannot say)."""
    if _framing(rendering, "constrained_json") == "tool_message":
        return "A tool's result comes back in a tool message."
    lead = rendering.result_template.split("{result}", 1)[0].replace("{name}", "<name>").strip()
    if not lead:
        return ""
    return f'A tool\'s result comes back in a message that starts with "{lead}".'


def _catalog_text(
    tools: Sequence[dict[str, Any]], tool_choice: ToolChoice, rendering: RenderingSpec
) -> str:
    active = list(tools) if tool_choice != "none" else []
    if not active:
        return f"## How to reply\nReply with one JSON object and nothing else: {_ANSWER_FORM}"
    lines = ["## Tools", "You can call these tools:"]
    for tool in active:
        fn = _tool_function(tool)
        description = " ".join((fn.get("description") or "").split())
        lines.append(f"- {fn['name']}: {description}" if description else f"- {fn['name']}")
        lines += _catalog_arguments(_tool_parameters(tool), rendering.catalog_arguments)
    as_list = rendering.calls_as_list
    parallel = rendering.parallel_calls and not as_list
    reply = (
        "Reply with JSON and nothing else."
        if parallel or as_list
        else ("Reply with one JSON object and nothing else.")
    )
    lines += ["", "## How to reply", reply]
    notice = _result_notice(rendering)
    call_form = (
        f"{_LIST_FORM} (a list of every call the request needs, in order)"
        if as_list
        else _CALL_FORM
    )
    if rendering.reply_protocol == "explicit":
        if tool_choice == "required":
            lines.append(
                f"You must call {'one or more' if as_list else 'one'} of the tools: {call_form}"
            )
        else:
            lines.append(f"If the question needs a tool, call it first: {call_form}")
        if parallel:
            lines.append(f"To call several tools in one step, in order: {_CALLS_FORM}")
        lines.append(
            (f"{notice} " if notice else "")
            + "Tool results are shown to you; never write a tool result yourself."
        )
        if tool_choice != "required":
            lines.append(
                "When the results you were shown answer the question, give the final answer, "
                f"using only what they say: {_ANSWER_FORM}"
            )
            if rendering.no_tool_rule:
                lines.append(rendering.no_tool_rule)
        return "\n".join(lines)
    if tool_choice == "required":
        lines.append(
            f"You must call {'one or more' if as_list else 'one'} of the tools: {call_form}"
        )
    else:
        lines.append(f"To call tools: {call_form}" if as_list else f"To call a tool: {call_form}")
    if parallel:
        lines.append(f"To call several tools in one step, in order: {_CALLS_FORM}")
    if tool_choice != "required":
        lines.append(f"When you have the final answer: {_ANSWER_FORM}")
        if rendering.no_tool_rule:
            lines.append(rendering.no_tool_rule)
    if notice:
        lines.append(notice)
    return "\n".join(lines)


def _catalog_arguments(params: dict[str, Any], style: str) -> list[str]:
    if style == "full_schema":
        return [f"  Arguments (JSON schema): {_dumps(params)}"]
    if style == "descriptions":
        props = params.get("properties") or {}
        if not props:
            return ["  Arguments: none"]
        required = set(params.get("required") or [])
        lines = ["  Arguments:"]
        for name, prop in props.items():
            line = f'    "{name}": {_kind(prop)}' + ("" if name in required else " (optional)")
            description = " ".join(str(prop.get("description") or "").split())
            lines.append(f"{line} - {description}" if description else line)
        return lines
    return [f"  Arguments: {_compact_arguments(params)}"]


def _kind(prop: dict[str, Any]) -> str:
    kind = prop.get("type") or (
        "one of " + "/".join(map(str, prop["enum"])) if "enum" in prop else "value"
    )
    return "/".join(map(str, kind)) if isinstance(kind, list) else str(kind)


def _compact_arguments(params: dict[str, Any]) -> str:
    """`{"expression": string}`: names and types only. Small models copy example text from
    argument descriptions verbatim into their calls, so by default the catalog leaves those
    out (the decoding grammar still enforces the full schema)."""
    props = params.get("properties") or {}
    if not props:
        return "{} (none)"
    required = set(params.get("required") or [])
    parts = [
        f'"{name}": {_kind(prop)}' + ("" if name in required else " (optional)")
        for name, prop in props.items()
    ]
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


def _result_text(message: ToolMessage, name: str, rendering: RenderingSpec) -> str:
    failed = getattr(message, "status", "success") == "error"
    template = rendering.error_template if failed else rendering.result_template
    body = text_of(message.content)
    # Not str.format: a template may hold literal braces (JSON), and a result always does.
    return template.replace("{name}", name).replace("{result}", body)


def _render_history(
    messages: Sequence[BaseMessage],
    rendering: RenderingSpec,
    tool_call_format: ToolCallFormat,
) -> list[BaseMessage]:
    """Tool calls, tool results and answers as the rendering shows them in this format."""
    as_user = _framing(rendering, tool_call_format) == "user_message"
    constrained = tool_call_format == "constrained_json"
    call_names: dict[str, str] = {}
    rendered: list[BaseMessage] = []
    pending: list[BaseMessage] = []  # the current batch of tool results

    def flush_results() -> None:
        if not pending:
            return
        if as_user:
            texts = [
                _result_text(m, m.name or call_names.get(m.tool_call_id) or "tool", rendering)
                for m in pending
                if isinstance(m, ToolMessage)
            ]
            if rendering.continuation:
                texts.append(rendering.continuation)
            rendered.append(HumanMessage(content="\n\n".join(texts)))
        else:
            rendered.extend(pending)
            if rendering.continuation:
                rendered.append(HumanMessage(content=rendering.continuation))
        pending.clear()

    for message in messages:
        if isinstance(message, ToolMessage):
            pending.append(message)
            continue
        flush_results()
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call.get("id"):
                    call_names[call["id"]] = call["name"]
            if message.tool_calls and as_user:
                key = "tool" if constrained else "name"
                objects = [{key: c["name"], "arguments": c["args"]} for c in message.tool_calls]
                if constrained and (
                    rendering.calls_as_list or (rendering.parallel_calls and len(objects) > 1)
                ):
                    text = _dumps(objects)
                else:
                    text = "\n".join(_dumps(o) for o in objects)
                if not constrained and text_of(message.content).strip():
                    text = f"{text_of(message.content).rstrip()}\n{text}"
                rendered.append(AIMessage(content=text, id=message.id, name=message.name))
            elif constrained and not message.tool_calls:
                text = _dumps({"answer": text_of(message.content)})
                rendered.append(AIMessage(content=text, id=message.id, name=message.name))
            elif constrained:  # calls kept as the chat template's tool calls
                rendered.append(
                    AIMessage(
                        content="", tool_calls=message.tool_calls, id=message.id, name=message.name
                    )
                )
            else:
                rendered.append(message)
        else:
            rendered.append(message)
    flush_results()
    return rendered


def render_for_constrained_json(
    messages: Sequence[BaseMessage],
    tools: Sequence[dict[str, Any]],
    tool_choice: ToolChoice = "auto",
    rendering: RenderingSpec | None = None,
) -> list[BaseMessage]:
    """The conversation as a model without tool support sees it in constrained_json mode.

    The first system message gets the tool catalog and reply protocol (one is created if there
    is none); assistant turns become the JSON the protocol asks for; tool results become user
    turns (consecutive ones merged, since many chat templates want roles to alternate), or
    stay tool messages when `rendering.result_framing` says so.
    """
    rendering = rendering or RenderingSpec()
    rendered = _render_history(messages, rendering, "constrained_json")
    catalog = _catalog_text(tools, tool_choice, rendering)
    for index, message in enumerate(rendered):
        if isinstance(message, SystemMessage):
            rendered[index] = _append_to_system(message, catalog)
            break
    else:
        rendered.insert(0, SystemMessage(content=catalog))
    return rendered


def render_for_native(
    messages: Sequence[BaseMessage], rendering: RenderingSpec | None = None
) -> list[BaseMessage]:
    """The conversation as a model with native tool calls sees it.

    Unchanged by default. With ``result_framing = "user_message"`` earlier tool calls are shown
    as JSON text and their results as user turns written with the templates; a continuation
    instruction follows each batch of tool results.
    """
    rendering = rendering or RenderingSpec()
    if _framing(rendering, "native") == "tool_message" and not rendering.continuation:
        return list(messages)
    return _render_history(messages, rendering, "native")


@dataclass(frozen=True)
class _Answer:
    text: str


@dataclass(frozen=True)
class _Calls:
    calls: list[ToolCall]


@dataclass(frozen=True)
class _ParseError:
    reason: str
    tool_call: bool = False
    """The reply looks like a tool call: it must not become an answer."""


_ConstrainedReply = _Answer | _Calls | _ParseError


def _starts_as_answer(text: str) -> bool:
    decoder = _AnswerStreamDecoder()
    decoder.feed(text)
    return decoder.state in ("string", "done") or (
        decoder.state == "prefix" and text.strip() not in ("", "{")
    )


def _parse_constrained_reply(
    text: str, tool_names: set[str], *, cut_off: bool = False
) -> _ConstrainedReply:
    values = _candidate_json(text)
    if values is not None:
        if len(values) == 1 and isinstance(values[0], dict) and set(values[0]) == {"answer"}:
            answer = values[0]["answer"]
            return _Answer(answer if isinstance(answer, str) else _dumps(answer))
        calls = recover_tool_calls(text, tool_names)
        if calls:
            return _Calls(calls)
        first = values[0]
        if isinstance(first, dict) and isinstance(first.get("tool"), str):
            if first["tool"] not in tool_names:
                reason = f"reply calls unknown tool {first['tool']!r}"
            else:
                reason = f"reply has bad arguments for tool {first['tool']!r}"
            return _ParseError(reason, tool_call=bool(tool_names))
        scan = scan_tool_calls(text, tool_names)
        if scan.unparsed:
            return _ParseError(f"reply JSON is not a readable call: {scan.unparsed}", True)
        return _ParseError("reply JSON is neither a tool call nor an answer")
    if not text.strip():
        return _ParseError(f"reply is empty: {text[:200]!r}")
    if _starts_as_answer(text):  # an answer cut off (or broken): never a call
        return _ParseError(f"reply is not complete JSON: {text[:200]!r}")
    # Not JSON only: without a grammar (json_transport none) a model may wrap its call in
    # prose or a fence; with one, the reply was cut off.
    scan = scan_tool_calls(text, tool_names, cut_off=cut_off)
    if scan.calls:
        return _Calls(scan.calls)
    if scan.unparsed:
        return _ParseError(f"reply is not a readable tool call: {scan.unparsed}", True)
    if tool_names and text.lstrip().startswith(("{", "[")):
        # The grammar allows a call or an answer; this is not an answer.
        return _ParseError(f"reply is not complete JSON: {text[:200]!r}", True)
    return _ParseError(f"reply is not complete JSON: {text[:200]!r}")


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


# Where text that may be a tool call starts: held back from there on while streaming.
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


def _marker_split(text: str) -> tuple[int | None, int]:
    """(where the first marker starts, or None; how long a tail may still become one)."""
    found = [i for i in (text.find(m) for m in _JSON_MARKERS) if i >= 0]
    if found:
        return min(found), 0
    for size in range(min(len(text), max(map(len, _JSON_MARKERS)) - 1), 0, -1):
        tail = text[-size:]
        if any(m.startswith(tail) and m != tail for m in _JSON_MARKERS):
            return None, size
    return None, 0


class _NativeStreamFilter:
    """Passes text through until something that may be a tool call starts (JSON, a fence, a
    `<tool_call>` tag), then holds the rest to recover the calls in it at the end.

    Prose before a call is shown as it comes; the call, and anything after it, is not shown
    unless it turns out not to be a call. A held reply that looks like a call but cannot be
    read is not shown either: the final chunk names the problem instead.
    """

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self.watch = bool(tool_names)
        self.emitted = ""  # text passed through
        self.pending = ""  # text not yet passed: leading blanks, a tail that may be a marker
        self.held = ""  # text from the first marker on
        self.holding = False
        self.saw_native_calls = False
        self.cut_off = False
        self.deferred = _DeferredMetadata()

    def feed(self, item: BaseMessage) -> list[AIMessageChunk]:
        chunk = _as_chunk(item)
        if chunk.tool_call_chunks:
            self.saw_native_calls = True
        self.cut_off = self.cut_off or was_cut_off(chunk.response_metadata)
        if not self.watch:
            return [_fresh_chunk(chunk, content=chunk.content)]
        if not isinstance(chunk.content, str):  # content blocks: no recovery from here on
            self.watch = False
            return [*self._release(), _fresh_chunk(chunk, content=chunk.content)]
        if self.holding:
            self.held += chunk.content
            self.deferred.add(chunk, keep_tool_calls=True)
            return []
        text = self.pending + chunk.content
        marker, keep = _marker_split(text)
        if marker is not None:
            out, self.held, self.holding = text[:marker], text[marker:], True
            self.pending = ""
        else:
            out, self.pending = text[: len(text) - keep], text[len(text) - keep :]
        if not self.emitted and not out.strip():  # nothing shown yet: keep leading blanks
            self.pending, out = out + self.pending, ""
            if self.holding:
                self.held, self.pending = self.pending + self.held, ""
        if out:
            self.emitted += out
            return [_fresh_chunk(chunk, content=out)]
        self.deferred.add(chunk, keep_tool_calls=True)
        return []

    def _release(self) -> list[AIMessageChunk]:
        text, self.pending, self.held, self.holding = self.pending + self.held, "", "", False
        self.emitted += text
        return [AIMessageChunk(content=text)] if text else []

    def _rest_of(self, prefix: str) -> list[AIMessageChunk]:
        """The part of `prefix` not shown yet (the prose before a call)."""
        if prefix.startswith(self.emitted) and len(prefix) > len(self.emitted):
            return [AIMessageChunk(content=prefix[len(self.emitted) :])]
        return []

    def finish(self) -> list[AIMessageChunk]:
        out: list[AIMessageChunk] = []
        if self.watch and self.holding and not self.saw_native_calls:
            full = self.emitted + self.pending + self.held
            scan = scan_tool_calls(full, self.tool_names, cut_off=self.cut_off)
            if scan.calls:
                out += self._rest_of(scan.prefix)
                metadata = {PARSE_ERROR_KEY: scan.unparsed} if scan.unparsed else {}
                out.append(_tool_call_chunks_message(scan.calls, response_metadata=metadata))
            elif scan.unparsed:
                out += self._rest_of(scan.prefix)
                metadata = {PARSE_ERROR_KEY: scan.unparsed, UNPARSED_TOOL_CALL_KEY: full}
                out.append(AIMessageChunk(content="", response_metadata=metadata))
            else:
                out += self._release()
        else:
            out += self._release()
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
    rendering: RenderingSpec = Field(default_factory=RenderingSpec)
    """How the catalog, the reply protocol, tool results and the continuation after them are
    shown to the model (the spec's `[agent.rendering]`)."""

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
            "rendering": self.rendering.model_dump(),
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
        prompt = render_for_constrained_json(messages, self.tools, self.tool_choice, self.rendering)
        schema = build_reply_schema(
            self.tools,
            self.tool_choice,
            parallel_calls=self.rendering.parallel_calls,
            calls_as_list=self.rendering.calls_as_list,
        )
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
        text = text_of(message.content)
        scan = scan_tool_calls(
            text, self._tool_names, cut_off=was_cut_off(message.response_metadata)
        )
        if not scan.calls and not scan.unparsed:
            return message
        metadata = dict(message.response_metadata or {})
        if scan.unparsed:
            metadata[PARSE_ERROR_KEY] = scan.unparsed
            if not scan.calls:
                metadata[UNPARSED_TOOL_CALL_KEY] = text
        return AIMessage(
            content=scan.prefix,
            tool_calls=scan.calls,
            id=_provider_id(message),
            additional_kwargs=message.additional_kwargs,
            response_metadata=metadata,
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
        cut_off = was_cut_off(message.response_metadata)
        reply = _parse_constrained_reply(text, self._tool_names, cut_off=cut_off)
        if isinstance(reply, _Calls):
            return AIMessage(content="", tool_calls=reply.calls, **fields)
        if isinstance(reply, _Answer):
            return AIMessage(content=reply.text, **fields)
        fields["response_metadata"][PARSE_ERROR_KEY] = reply.reason
        if reply.tool_call:  # never an answer: the run ends as an error naming it
            fields["response_metadata"][UNPARSED_TOOL_CALL_KEY] = text
            return AIMessage(content="", **fields)
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
            native_messages = render_for_native(messages, self.rendering)
            reply = self._native_runnable().invoke(native_messages, config, stop=stop, **kwargs)
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
            native_messages = render_for_native(messages, self.rendering)
            source = self._native_runnable().stream(native_messages, config, stop=stop, **kwargs)
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
            native_messages = render_for_native(messages, self.rendering)
            reply = await self._native_runnable().ainvoke(
                native_messages, config, stop=stop, **kwargs
            )
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
            native_messages = render_for_native(messages, self.rendering)
            source = self._native_runnable().astream(native_messages, config, stop=stop, **kwargs)
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
        self.cut_off = False

    def feed(self, item: BaseMessage) -> list[AIMessageChunk]:
        chunk = _as_chunk(item)
        self.cut_off = self.cut_off or was_cut_off(chunk.response_metadata)
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
        raw = self.decoder.raw
        reply = _parse_constrained_reply(raw, self.tool_names, cut_off=self.cut_off)
        streamed = self.decoder.emitted
        if isinstance(reply, _Calls):
            return [_tool_call_chunks_message(reply.calls)]
        if isinstance(reply, _Answer):
            if reply.text.startswith(streamed):
                rest = reply.text[len(streamed) :]
                return [AIMessageChunk(content=rest)] if rest else []
            return []  # cannot happen with valid JSON; never repeat what was shown
        if reply.tool_call:  # never shown: the run ends as an error naming it
            metadata = {PARSE_ERROR_KEY: reply.reason, UNPARSED_TOOL_CALL_KEY: raw}
            return [AIMessageChunk(content="", response_metadata=metadata)]
        # Unparseable: show the raw text unless its answer was already being shown.
        content = "" if streamed else raw
        return [AIMessageChunk(content=content, response_metadata={PARSE_ERROR_KEY: reply.reason})]
