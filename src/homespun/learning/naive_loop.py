"""The naive-loop baseline: the simplest honest agent loop over the spec's model and tools.

`homespun bench run --baseline naive` runs every task through this loop as well as through
the assistant of the spec, so a spec is always compared with the floor it must clear. The
loop uses the same model (the spec's `[intelligence]` and `[engine]`), the same tools (the
benchmark environment's LangChain/MCP tools) and the same turn cap (`agent.max_turns`), and
nothing else of the spec: no system prompt, few-shot examples, rendering, verifiers, repeat
guard or loop choice.

The rules, as built:

* The system message lists every tool with its description and its FULL JSON argument schema,
  then the protocol: reply with exactly one JSON object, ``{"tool": NAME, "arguments": {...}}``
  to call a tool or ``{"answer": TEXT}`` to answer. The question is the user message.
* Each reply is decoded under the JSON schema of that protocol (`build_reply_schema`, the one
  the assistant's constrained_json format uses) where the backend can constrain decoding: an
  OpenAI-style ``response_format`` in the request body for the embedded engine and
  openai_compatible servers, Ollama's ``format``. Other backends are only told the protocol;
  the first JSON object in their reply's text is read.
* A tool call runs through the tool object itself, as the assistant's tool node runs it; its
  result (or its error: bad arguments, a tool that failed) goes back as the user message
  ``Result of NAME: ...`` and is recorded on the trace. A tool error does not end the run: the
  assistant shows the model its tool errors too.
* A reply that cannot be read (not JSON, not one of the two forms, an unknown tool) gets ONE
  retry: the model is told what was wrong and asked again. A second unreadable reply in a row
  ends the run as failed (stop reason ``unparsed_tool_call``). Retries are model calls.
* The loop stops at an answer (``answered``) or after ``agent.max_turns`` model calls without
  one: a failed run (``turn_limit``). A model call that raises is a failed run
  (``engine_error``); tools that cannot be opened, ``tool_error``; anything else,
  ``internal_error``. Every run leaves a trace (status running, then ok or error), so every
  benchmark's grader reads it unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from homespun.engines.cost import price_for
from homespun.engines.telemetry import (
    CLOUD_BACKENDS,
    EnergyMeter,
    RunMeter,
    electricity_usd_per_kwh,
    run_cost_usd,
)
from homespun.engines.tool_calls import (
    ToolCallingChatModel,
    build_reply_schema,
    text_of,
    was_cut_off,
)
from homespun.graphs.assistant import MAX_TOOL_RESULT_CHARS, EngineError, turn_limit_message
from homespun.graphs.runner import RunResult, message_to_dict
from homespun.mcp_servers.loader import ToolLoadError
from homespun.spec import Settings, Spec
from homespun.stores.traces import StopReason, ToolCallRecord, Trace, TraceStore

__all__ = [
    "LOOP_NAME",
    "Answer",
    "Call",
    "NAIVE_LOOP_VERSION",
    "PROTOCOL",
    "BadReply",
    "naive_key",
    "parse_reply",
    "run_naive",
    "system_prompt",
]

LOOP_NAME = "naive"
NAIVE_LOOP_VERSION = "naive-1"
"""Part of `naive_key`: change it whenever the prompt or the rules change, so cached baseline
outcomes are re-run."""

PROTOCOL = (
    "Reply with exactly one JSON object and nothing else: "
    '{"tool": NAME, "arguments": {...}} to call a tool, or {"answer": TEXT} to answer.'
)
MAX_BAD_REPLIES_IN_A_ROW = 2
"""The second unreadable reply in a row ends the run (one retry)."""


def naive_key(spec: Spec) -> str:
    """The eval-cache key of the naive loop under `spec`: ``naive:<model>:<hash>``.

    The hash covers what the loop's outcome depends on, and nothing else: the loop version,
    `[intelligence]`, `[engine]` (minus tool_call_format, which the loop does not use),
    `agent.max_turns`, and `[tools]` and `[memory]` (which shape the tools a benchmark
    offers). An edit to the system prompt, say, keeps the key, and the baseline is not re-run;
    the key can never equal a spec's content hash (16 hex digits, no prefix).
    """
    data = {
        "loop": NAIVE_LOOP_VERSION,
        "intelligence": spec.intelligence.model_dump(mode="json"),
        "engine": spec.engine.model_dump(mode="json", exclude={"tool_call_format"}),
        "max_turns": spec.agent.max_turns,
        "tools": spec.tools.model_dump(mode="json"),
        "memory": spec.memory.model_dump(mode="json"),
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"naive:{spec.intelligence.model}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _openai_tools(tools: Sequence[BaseTool]) -> list[dict[str, Any]]:
    return [convert_to_openai_tool(tool) for tool in tools]


def system_prompt(tools: Sequence[BaseTool]) -> str:
    """Every tool with its description and full JSON argument schema, then the protocol."""
    lines = ["You are a helpful assistant. You can use these tools:"]
    for tool in _openai_tools(tools):
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        lines.append(f"\n- {fn['name']}: {fn.get('description', '').strip()}")
        lines.append(f"  arguments (JSON schema): {json.dumps(params, ensure_ascii=False)}")
    if not tools:
        lines.append("(none)")
    lines.append(f"\n{PROTOCOL}")
    return "\n".join(lines)


class BadReply(ValueError):
    """A reply the protocol cannot read; the message says why."""


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    text: str


def parse_reply(text: str, tool_names: set[str], *, cut_off: bool = False) -> Call | Answer:
    """The first JSON object of `text` as a tool call or an answer; `BadReply` otherwise."""
    start = text.find("{")
    if start < 0:
        raise BadReply(f"no JSON object in the reply {text[:120]!r}")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        cause = "it was cut off by the token cap" if cut_off else f"invalid JSON ({exc.msg})"
        raise BadReply(f"the reply is not one JSON object: {cause}") from None
    if isinstance(value, dict) and set(value) == {"answer"} and isinstance(value["answer"], str):
        return Answer(value["answer"])
    if isinstance(value, dict) and set(value) <= {"tool", "arguments"} and "tool" in value:
        name, arguments = value["tool"], value.get("arguments", {})
        if not isinstance(name, str) or name not in tool_names:
            raise BadReply(f"unknown tool {name!r}; the tools are {sorted(tool_names)}")
        if not isinstance(arguments, dict):
            raise BadReply(f"the arguments of {name!r} are not a JSON object")
        return Call(name, arguments)
    raise BadReply('the object is neither {"tool": ..., "arguments": ...} nor {"answer": ...}')


def _decoding(spec: Spec, model: BaseChatModel, schema: dict[str, Any]) -> dict[str, Any]:
    """Call kwargs that constrain the reply to `schema`, where the backend can."""
    backend = spec.engine.backend
    if backend in ("embedded", "openai_compatible"):
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        }
        if "extra_body" in type(model).model_fields:
            # As engines.tool_calls does: in the request body, so langchain-openai does not
            # switch to its structured-output helpers; the model's own extra_body survives.
            body = getattr(model, "extra_body", None) or {}
            return {"extra_body": {**body, "response_format": response_format}}
        return {"response_format": response_format}
    if backend == "ollama":
        return {"format": schema}
    return {}  # told the protocol only; parse_reply reads the first JSON object


async def _run_tool(tool: BaseTool, arguments: dict[str, Any]) -> ToolCallRecord:
    """Run one call as the assistant's tool node does; an error is recorded, never raised."""
    record = ToolCallRecord(name=tool.name, arguments=arguments)
    record.server = (tool.metadata or {}).get("mcp_server")
    started = time.perf_counter()
    call = {"type": "tool_call", "name": tool.name, "args": arguments, "id": uuid.uuid4().hex}
    try:
        out = await tool.ainvoke(call)
        text = text_of(out.content if isinstance(out, ToolMessage) else out)
        failed = isinstance(out, ToolMessage) and out.status == "error"
    except Exception as exc:  # bad arguments, server gone: the model sees it
        text, failed = f"Error: {type(exc).__name__}: {exc}", True
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = text[:MAX_TOOL_RESULT_CHARS] + "\n[truncated]"
    record.latency_s = round(time.perf_counter() - started, 4)
    if failed:
        record.error = text
    else:
        record.result = text
    return record


async def _loop(
    spec: Spec,
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    question: str,
    trace: Trace,
    config: dict[str, Any],
) -> None:
    """The loop itself; fills `trace` (status, answer, calls, tokens, stop reason)."""
    by_name = {tool.name: tool for tool in tools}
    kwargs = _decoding(spec, model, build_reply_schema(_openai_tools(tools), "auto"))
    messages: list[BaseMessage] = [SystemMessage(system_prompt(tools)), HumanMessage(question)]
    bad_in_a_row = 0
    try:
        for _ in range(spec.agent.max_turns):
            try:
                reply = await model.ainvoke(messages, config, **kwargs)
            except Exception as exc:
                raise EngineError.wrapping(exc) from exc
            trace.model_calls += 1
            usage = reply.usage_metadata or {}
            trace.prompt_tokens += int(usage.get("input_tokens", 0) or 0)
            trace.completion_tokens += int(usage.get("output_tokens", 0) or 0)
            text = text_of(reply.content)
            messages.append(AIMessage(text))
            try:
                step = parse_reply(text, set(by_name), cut_off=was_cut_off(reply.response_metadata))
            except BadReply as exc:
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_BAD_REPLIES_IN_A_ROW:
                    trace.status, trace.stop_reason = "error", StopReason.UNPARSED_TOOL_CALL
                    trace.error = f"two replies in a row could not be read; the last: {exc}"
                    return
                messages.append(HumanMessage(f"Your reply could not be read: {exc}. {PROTOCOL}"))
                continue
            bad_in_a_row = 0
            if isinstance(step, Answer):
                trace.status, trace.stop_reason = "ok", StopReason.ANSWERED
                trace.final_answer = step.text
                return
            record = await _run_tool(by_name[step.tool], step.arguments)
            trace.tool_calls.append(record)
            result = record.result if record.error is None else record.error
            messages.append(HumanMessage(f"Result of {step.tool}: {result}"))
        trace.status, trace.stop_reason = "error", StopReason.TURN_LIMIT
        trace.error = turn_limit_message(spec.agent.max_turns)
    finally:
        trace.messages = [message_to_dict(m) for m in messages]


async def run_naive(
    spec: Spec,
    settings: Settings,
    question: str,
    *,
    model: BaseChatModel | None = None,
    tools: list[BaseTool] | None = None,
    store: TraceStore | None = None,
    source: str = "baseline:naive",
    energy_meter: EnergyMeter | None = None,
) -> RunResult:
    """Answer `question` with the naive loop; the trace is always written.

    `model` replaces the spec's backend model (a `ToolCallingChatModel` is unwrapped: the
    loop speaks its own protocol) and `tools` the spec's MCP servers (benchmarks, tests).
    """
    store = store or TraceStore(settings.traces_db)
    trace = store.start(
        query=question,
        spec_hash=naive_key(spec),
        thread_id=uuid.uuid4().hex[:12],
        loop=LOOP_NAME,
        model=spec.intelligence.model,
        backend=spec.engine.backend,
        source=source,
    )
    meter = RunMeter.for_engine(spec.engine.backend, spec.engine.base_url, energy_meter)
    started = time.perf_counter()
    meter.start()
    try:
        async with AsyncExitStack() as stack:
            if model is None:
                from homespun.engines.factory import build_backend_model

                try:
                    model = build_backend_model(spec, settings)
                except Exception as exc:
                    raise EngineError.wrapping(exc) from exc
            if isinstance(model, ToolCallingChatModel):
                model = model.inner
            if tools is None:
                from homespun.mcp_servers.loader import open_tools

                tools = (await stack.enter_async_context(open_tools(spec, settings))).tools
            await _loop(spec, model, tools, question, trace, {"callbacks": [meter.recorder]})
    except Exception as exc:
        trace.status = "error"
        trace.stop_reason = _failure_reason(exc)
        trace.error = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
    except (asyncio.CancelledError, KeyboardInterrupt):
        trace.stop_reason = StopReason.CANCELLED  # the row keeps its status; re-raised
        raise
    finally:
        trace.latency_s = round(time.perf_counter() - started, 4)
        _record_telemetry(trace, meter)
        store.finish(trace)
    return RunResult(trace)


def _failure_reason(exc: Exception) -> StopReason:
    """Whose failure a run that raised was: the engine's, the tools', or anything else."""
    if isinstance(exc, EngineError):
        return StopReason.ENGINE_ERROR
    if isinstance(exc, ToolLoadError):
        return StopReason.TOOL_ERROR
    return StopReason.INTERNAL_ERROR


def _record_telemetry(trace: Trace, meter: RunMeter) -> None:
    """Energy, tokens/s and cost, measured as the runner measures the assistant's runs."""
    measured = meter.stop()
    trace.energy_j, trace.energy_source = measured.energy_j, measured.energy_source
    trace.tokens_per_s = measured.tokens_per_s
    price = None
    if trace.backend in CLOUD_BACKENDS:
        per_mtok, known = price_for(f"{trace.backend}:{trace.model}")
        price = per_mtok if known else None
    try:
        usd_per_kwh: float | None = electricity_usd_per_kwh()
    except ValueError:
        usd_per_kwh = None
    trace.cost_usd = run_cost_usd(
        backend=trace.backend,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        energy_j=trace.energy_j,
        price_per_mtok=price,
        usd_per_kwh=usd_per_kwh,
    )
