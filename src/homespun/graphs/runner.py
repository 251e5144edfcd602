"""Run the assistant on one question and leave a trace, whatever happens.

This is the one path every surface uses (CLI ask/chat, quickstart, evaluation, channels):
build the model from the spec, open the MCP servers (one session each for the run), build
the graph, run it on a persisted thread, and record the trace. A failure at any stage,
including an engine that is down, ends as a trace with status 'error', never a missing row.
Every finished trace says why the run ended (`Trace.stop_reason`, a `StopReason`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool

from homespun.engines.cost import price_for
from homespun.engines.telemetry import (
    CLOUD_BACKENDS,
    EnergyMeter,
    RunMeter,
    RunTelemetry,
    electricity_usd_per_kwh,
    run_cost_usd,
)
from homespun.engines.tool_calls import PARSE_ERROR_KEY, UNPARSED_TOOL_CALL_KEY
from homespun.mcp_servers.loader import ToolLoadError
from homespun.spec import Settings, Spec
from homespun.stores.sqlite import connect_async
from homespun.stores.traces import StopReason, ToolCallRecord, Trace, TraceStore

from .assistant import (
    AssistantState,
    EngineError,
    build_assistant_graph,
    new_question_state,
    recursion_limit,
    turn_limit_message,
)

TokenCallback = Callable[[str], None]

# Nodes whose streamed tokens are the user-visible answer (plan and step chatter are not).
_ANSWER_NODES = {"agent", "respond", "answer"}


@dataclass
class RunResult:
    trace: Trace

    @property
    def ok(self) -> bool:
        return self.trace.status == "ok"

    @property
    def answer(self) -> str | None:
        return self.trace.final_answer


def message_to_dict(m: BaseMessage) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.type, "content": m.content}
    if getattr(m, "name", None):
        d["name"] = m.name
    if isinstance(m, AIMessage) and m.tool_calls:
        d["tool_calls"] = [
            {"name": c["name"], "args": c["args"], "id": c.get("id")} for c in m.tool_calls
        ]
    if isinstance(m, ToolMessage):
        d["tool_call_id"] = m.tool_call_id
        d["status"] = m.status
    return d


def _fill_trace(
    trace: Trace, messages: list[BaseMessage], state: dict[str, Any], max_turns: int
) -> None:
    trace.messages = [message_to_dict(m) for m in messages]
    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    calls: list[ToolCallRecord] = []
    for m in messages:
        if isinstance(m, AIMessage):
            trace.model_calls += 1
            usage = m.usage_metadata or {}
            trace.prompt_tokens += int(usage.get("input_tokens", 0) or 0)
            trace.completion_tokens += int(usage.get("output_tokens", 0) or 0)
            for c in m.tool_calls:
                res = results.get(c.get("id") or "")
                rec = ToolCallRecord(name=c["name"], arguments=dict(c["args"] or {}))
                if res is None:
                    rec.error = "not executed (turn limit)"
                else:
                    text = res.content if isinstance(res.content, str) else str(res.content)
                    if res.status == "error":
                        rec.error = text
                    else:
                        rec.result = text
                    rec.server = res.additional_kwargs.get("mcp_server")
                    rec.latency_s = res.additional_kwargs.get("latency_s")
                calls.append(rec)
    trace.tool_calls = calls
    stop = state.get("stop_reason") or ""
    last = messages[-1] if messages else None
    if stop == StopReason.TURN_LIMIT:
        trace.status, trace.error = "error", turn_limit_message(max_turns)
        trace.stop_reason = StopReason.TURN_LIMIT
    elif stop == StopReason.UNPARSED_TOOL_CALL or (
        isinstance(last, AIMessage)
        and not last.tool_calls
        and last.response_metadata.get(UNPARSED_TOOL_CALL_KEY)
    ):
        # What looks like a tool call but could not be read is never the answer.
        why = last.response_metadata.get(PARSE_ERROR_KEY) if isinstance(last, AIMessage) else ""
        trace.status = "error"
        trace.error = f"the model wrote a tool call that could not be parsed: {why or 'unknown'}"
        trace.stop_reason = StopReason.UNPARSED_TOOL_CALL
    elif isinstance(last, AIMessage) and not last.tool_calls:
        content = last.content if isinstance(last.content, str) else str(last.content)
        trace.final_answer = content
        parse_error = last.response_metadata.get(PARSE_ERROR_KEY)
        trace.status = "ok"
        # The graph marks an answer the repeat guard asked for, or one a verifier still
        # rejects; any other answer is a plain one.
        trace.stop_reason = (
            StopReason(stop)
            if stop in (StopReason.REPEAT_GUARD, StopReason.VERIFIER_FAILED)
            else StopReason.ANSWERED
        )
        if parse_error:
            trace.error = f"model output was not valid for the tool-call format: {parse_error}"
    else:
        trace.status, trace.error = "error", "the run ended without a final answer"
        trace.stop_reason = StopReason.NO_ANSWER


async def run_assistant(
    spec: Spec,
    settings: Settings,
    question: str,
    *,
    thread_id: str | None = None,
    model: BaseChatModel | None = None,
    tools: list[BaseTool] | None = None,
    store: TraceStore | None = None,
    on_token: TokenCallback | None = None,
    source: str = "cli",
    persist: bool = True,
    energy_meter: EnergyMeter | None = None,
) -> RunResult:
    """Answer `question` with the assistant of `spec`; the trace is always written.

    `model` and `tools` replace the spec's engine and MCP servers (tests, benchmarks).
    With `persist`, the conversation continues on `thread_id` in HOMESPUN_HOME/threads.db.
    The run is measured (tokens/s, energy, cost) with `energy_meter`, or with the energy
    counter found on this machine.
    """
    store = store or TraceStore(settings.traces_db)
    thread_id = thread_id or uuid.uuid4().hex[:12]
    trace = store.start(
        query=question,
        spec_hash=spec.content_hash(),
        thread_id=thread_id,
        loop=spec.agent.loop,
        model=spec.intelligence.model,
        backend=spec.engine.backend,
        source=source,
    )
    # Built before the clock starts: the first run of a process probes the energy counters.
    meter = RunMeter.for_engine(spec.engine.backend, spec.engine.base_url, energy_meter)
    started = time.perf_counter()
    meter.start()
    try:
        async with AsyncExitStack() as stack:
            if model is None:
                from homespun.engines.factory import build_chat_model

                try:
                    model = build_chat_model(spec, settings)
                except Exception as exc:
                    raise EngineError.wrapping(exc) from exc
            sensitive: set[str] = set()
            if tools is None:
                from homespun.mcp_servers.loader import open_tools

                loaded = await stack.enter_async_context(open_tools(spec, settings))
                tools, sensitive = loaded.tools, loaded.sensitive_servers
            checkpointer = None
            if persist:
                from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

                # Through stores.sqlite: WAL, synchronous=NORMAL, the busy timeout, owner-only.
                conn = await stack.enter_async_context(connect_async(settings.threads_db))
                checkpointer = AsyncSqliteSaver(conn)
            graph = build_assistant_graph(spec, model, tools, checkpointer=checkpointer)
            question_msg = HumanMessage(question, id=uuid.uuid4().hex)
            config = {
                "configurable": {"thread_id": thread_id},
                "recursion_limit": recursion_limit(spec),
                "callbacks": [meter.recorder],
            }
            state = await _invoke(graph, new_question_state(question_msg), config, on_token)
            messages = state["messages"]
            ids = [m.id for m in messages]
            new = messages[ids.index(question_msg.id) + 1 :] if question_msg.id in ids else messages
            _fill_trace(trace, new, state, spec.agent.max_turns)
            used_servers = {c.server for c in trace.tool_calls if c.server}
            trace.sensitive = bool(used_servers & sensitive)
    except Exception as exc:
        trace.status = "error"
        trace.stop_reason = _failure_reason(exc)
        # An EngineError's message already is the original's 'Type: message'.
        trace.error = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Re-raised; the row keeps its status and says why it never finished.
        trace.stop_reason = StopReason.CANCELLED
        raise
    finally:
        trace.latency_s = round(time.perf_counter() - started, 4)
        _record_telemetry(trace, meter.stop())
        store.finish(trace)
    return RunResult(trace)


def _failure_reason(exc: Exception) -> StopReason:
    """The stop reason of a run that raised: whose failure it was."""
    if isinstance(exc, EngineError):
        return StopReason.ENGINE_ERROR
    if isinstance(exc, ToolLoadError):
        return StopReason.TOOL_ERROR
    return StopReason.INTERNAL_ERROR


def _record_telemetry(trace: Trace, measured: RunTelemetry) -> None:
    trace.energy_j = measured.energy_j
    trace.energy_source = measured.energy_source
    trace.tokens_per_s = measured.tokens_per_s
    price = None
    if trace.backend in CLOUD_BACKENDS:
        # An unknown model's price stays unknown here: the teacher's fallback (the dearest
        # price) is a budget safeguard, not a cost to report.
        per_mtok, known = price_for(f"{trace.backend}:{trace.model}")
        price = per_mtok if known else None
    try:
        usd_per_kwh: float | None = electricity_usd_per_kwh()
    except ValueError as exc:  # a bad setting must not fail the run, nor pass unnoticed
        usd_per_kwh = None
        if trace.backend not in CLOUD_BACKENDS:
            trace.error = trace.error or f"cost not measured: {exc}"
    trace.cost_usd = run_cost_usd(
        backend=trace.backend,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        energy_j=trace.energy_j,
        price_per_mtok=price,
        usd_per_kwh=usd_per_kwh,
    )


async def _invoke(
    graph: Any, inputs: dict, config: dict, on_token: TokenCallback | None
) -> AssistantState:
    if on_token is None:
        return await graph.ainvoke(inputs, config)
    final: AssistantState = {}
    async for mode, chunk in graph.astream(inputs, config, stream_mode=["messages", "values"]):
        if mode == "values":
            final = chunk
        else:
            message, meta = chunk
            if (
                isinstance(message, AIMessageChunk)
                and meta.get("langgraph_node") in _ANSWER_NODES
                and isinstance(message.content, str)
                and message.content
            ):
                on_token(message.content)
    return final
