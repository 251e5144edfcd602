"""Deterministic chat models for tests and benchmarks, shipped with the library.

`ScriptedChatModel` replays the AIMessages it is given, in order, and records what it was
asked (messages, bound tools, tool_choice), so graph logic can be tested without an engine.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

Reply = AIMessage | str | Callable[[list[BaseMessage]], AIMessage | str]


class ScriptCall(dict):
    """One recorded call: {'messages': [...], 'tools': [names], 'tool_choice': ...}."""


def tool_call(name: str, args: dict[str, Any] | None = None, id: str | None = None) -> AIMessage:
    """An AIMessage asking for one tool call (for scripts)."""
    ids = id or f"call_{name}_{next(_ids)}"
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args or {}, "id": ids, "type": "tool_call"}]
    )


_ids = itertools.count(1)


class _Shared:
    """Script position and call log, shared by a model and its bound copies (pydantic would
    copy a plain list on validation)."""

    def __init__(self) -> None:
        self.position = 0
        self.calls: list[ScriptCall] = []


class ScriptedChatModel(BaseChatModel):
    """Replays `script`; a reply may be a function of the messages it receives."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[Any] = Field(default_factory=list)
    bound_tools: list[dict] = Field(default_factory=list)
    tool_choice: str | None = None
    shared: _Shared = Field(default_factory=_Shared)
    usage: dict[str, int] = Field(default_factory=lambda: {"input_tokens": 10, "output_tokens": 5})

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[ScriptCall]:
        return self.shared.calls

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> ScriptedChatModel:
        # Shares script, position and calls with the original, so one script spans the
        # bound and unbound forms the graph uses.
        copy = ScriptedChatModel(
            script=self.script,
            shared=self.shared,
            usage=self.usage,
            bound_tools=[convert_to_openai_tool(t) for t in tools],
            tool_choice=tool_choice,
        )
        return copy

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        self.shared.calls.append(
            ScriptCall(
                messages=list(messages),
                tools=[t["function"]["name"] for t in self.bound_tools],
                tool_choice=self.tool_choice,
                tool_descriptions={
                    t["function"]["name"]: t["function"].get("description", "")
                    for t in self.bound_tools
                },
            )
        )
        i = self.shared.position
        if i >= len(self.script):
            raise RuntimeError(f"scripted model ran out of replies after {i} calls")
        self.shared.position += 1
        reply = self.script[i]
        if callable(reply):
            reply = reply(list(messages))
        if isinstance(reply, str):
            reply = AIMessage(content=reply)
        reply = reply.model_copy(deep=True)
        reply.usage_metadata = {**self.usage, "total_tokens": sum(self.usage.values())}  # type: ignore[typeddict-item]
        return reply

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ):
        reply = self._next(messages)
        text = reply.content if isinstance(reply.content, str) else ""
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            if not piece:
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[
                    {
                        "name": c["name"],
                        "args": json.dumps(c["args"]),
                        "id": c["id"],
                        "index": j,
                        "type": "tool_call_chunk",
                    }
                    for j, c in enumerate(reply.tool_calls)
                ],
                usage_metadata=reply.usage_metadata,
            )
        )
