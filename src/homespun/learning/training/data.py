"""Training examples in exactly the form the assistant's model sees at inference.

A LoRA learns what follows *its* prompt; trained on a different system prompt, without the
few-shot turns, or on a bare answer where the runtime decodes ``{"answer": "..."}``, it
would be trained for a conversation that never happens. So every example is built by the
assistant's own prompt builder (`homespun.graphs.assistant.prompt_messages`: system prompt, few-shot
turns, the conversation) and, for ``tool_call_format = "constrained_json"``, rendered by the
same `render_for_constrained_json` the engine wrapper uses, so the target is the JSON text the
runtime decodes. The last message of an example is the assistant's final answer, the only
part that is trained on.

Which tools the final turn sees depends on the loop: ``react`` offers its tools on every
turn (pass them as ``tools`` to get the same catalog in the prompt); ``simple`` and the
``plan_execute`` answer step offer none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from homespun.learning.privacy import eligible_traces, scrub_obj
from homespun.spec import Spec
from homespun.stores.traces import Trace

__all__ = ["SFTExample", "sft_examples_from_pairs", "sft_examples_from_traces"]


@dataclass
class SFTExample:
    """One conversation, as chat messages (OpenAI-style dicts: ``role``, ``content``, and
    ``tool_calls`` / ``tool_call_id`` in native tool-call format). The last message is the
    assistant's reply, the training target; everything before it is the prompt."""

    messages: list[dict[str, Any]]
    source: str = field(default="", compare=False)
    """Where the example came from (``pair``, ``trace:<id>``), for reports; not trained on."""

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SFTExample:
        return cls(messages=list(data["messages"]), source=str(data.get("source", "")))


def sft_examples_from_pairs(
    spec: Spec,
    pairs: Sequence[tuple[str, str]],
    *,
    tools: Sequence[Any] = (),
) -> list[SFTExample]:
    """One example per (user question, gold final answer): the answer as the assistant's
    first and only reply to the question. ``tools`` (LangChain tools or OpenAI tool dicts)
    are the tools the runtime binds; they appear in the prompt only where the spec's loop
    offers tools on the answering turn (see the module docstring)."""
    examples = []
    for query, answer in pairs:
        if not query.strip() or not answer.strip():
            raise ValueError(f"empty question or answer in training pair {(query, answer)!r}")
        messages = _render(spec, [HumanMessage(query)], AIMessage(answer), tools)
        examples.append(SFTExample(messages=messages, source="pair"))
    return examples


def sft_examples_from_traces(
    spec: Spec,
    traces: Sequence[Trace],
    min_feedback: float = 0.7,
    *,
    tools: Sequence[Any] = (),
) -> list[SFTExample]:
    """Examples from the user's own good runs: traces that finished with an answer, got
    feedback of at least ``min_feedback``, and are not marked sensitive. Each is scrubbed
    (e-mail addresses, phone numbers, keys, card numbers, IBANs) before it becomes training
    data: an adapter memorises what it is trained on and may be shared later.

    The tool calls and results of a run stay in the prompt (the answer was made from them);
    earlier questions of the same thread are not part of a trace and are not included.
    """
    examples = []
    for trace in eligible_traces(list(traces)):
        if trace.status != "ok" or not (trace.final_answer or "").strip():
            continue
        if trace.feedback is None or trace.feedback < min_feedback:
            continue
        trace_id = trace.id  # ids are random hex, which the scrubber takes for keys
        trace = scrub_obj(trace)
        conversation = [HumanMessage(trace.query)] + _messages_from_trace(trace)
        final = conversation[-1]
        if not isinstance(final, AIMessage) or final.tool_calls:
            continue  # the recorded run does not end in an answer (an older trace format)
        final = AIMessage(trace.final_answer or "")
        examples.append(
            SFTExample(
                messages=_render(spec, conversation[:-1], final, tools),
                source=f"trace:{trace_id}",
            )
        )
    return examples


def _messages_from_trace(trace: Trace) -> list[BaseMessage]:
    """The messages of a trace (as `graphs.runner.message_to_dict` wrote them) back as
    LangChain messages."""
    out: list[BaseMessage] = []
    for m in trace.messages:
        role, content = m.get("role"), m.get("content") or ""
        name = m.get("name")
        if role == "human":
            out.append(HumanMessage(content, name=name))
        elif role == "ai":
            calls = [
                {"name": c["name"], "args": dict(c.get("args") or {}), "id": c.get("id") or ""}
                for c in m.get("tool_calls") or []
            ]
            out.append(AIMessage(content, name=name, tool_calls=calls))
        elif role == "tool":
            out.append(
                ToolMessage(
                    content,
                    tool_call_id=m.get("tool_call_id") or "",
                    name=name,
                    status=m.get("status") or "success",
                )
            )
        elif role == "system":
            out.append(SystemMessage(content))
    return out


def _answering_tools(spec: Spec, tools: Sequence[Any]) -> list[dict[str, Any]]:
    """The tools bound on the turn that gives the final answer (graphs/assistant.py)."""
    if spec.agent.loop != "react" or spec.agent.tool_policy == "none":
        return []
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(t) for t in tools]


def _render(
    spec: Spec, history: list[BaseMessage], final: AIMessage, tools: Sequence[Any]
) -> list[dict[str, Any]]:
    # graphs imports learning (stores); importing graphs at module level would be a cycle.
    from homespun.engines.tool_calls import render_for_constrained_json, render_for_native
    from homespun.graphs.assistant import ANSWER_INSTRUCTION, prompt_messages

    extra = ANSWER_INSTRUCTION if spec.agent.loop == "plan_execute" else None
    prompt = prompt_messages(spec.agent, history, extra)
    answer_tools = _answering_tools(spec, tools)
    rendering = spec.agent.rendering
    if spec.engine.tool_call_format == "constrained_json":
        rendered = render_for_constrained_json(
            [*prompt, final], answer_tools, "auto" if answer_tools else "none", rendering
        )
        # (plain turns by default; tool calls and tool messages when result_framing keeps them)
        return [_openai_message(m) for m in rendered]
    return [_openai_message(m) for m in [*render_for_native(prompt, rendering), final]]


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    raise TypeError(f"unexpected message type {type(message).__name__}")


def _content(message: BaseMessage) -> str:
    from homespun.engines.tool_calls import text_of

    return text_of(message.content)


def _plain_message(message: BaseMessage) -> dict[str, Any]:
    return {"role": _role(message), "content": _content(message)}


def _openai_message(message: BaseMessage) -> dict[str, Any]:
    """The message as langchain-openai sends it to an OpenAI-compatible server."""
    out = _plain_message(message)
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{i}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call["args"], ensure_ascii=False),
                },
            }
            for i, call in enumerate(message.tool_calls)
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out
