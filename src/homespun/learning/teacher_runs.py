"""The teacher as the agent: re-running failing tasks to measure the teacher success rate.

`MeteredChatModel` puts every model call of such a run through the session's CostMeter:
`check()` before (a spent budget stops the run, which then counts as failed) and
`record()` after, so the teacher's own task runs are never counted as free.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from homespun.learning.evaluation import evaluate
from homespun.learning.tasks import Benchmark, Task
from homespun.spec import Settings, Spec


class MeteredChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Any  # a chat model, or one with tools bound (a Runnable)
    meter: Any
    max_output_tokens: int = 1024

    @property
    def _llm_type(self) -> str:
        return "metered"

    def bind_tools(self, tools: Any, **kwargs: Any) -> MeteredChatModel:
        return MeteredChatModel(inner=self.inner.bind_tools(tools, **kwargs), meter=self.meter,
                                max_output_tokens=self.max_output_tokens)

    def _estimate(self, messages: list[BaseMessage]) -> int:
        return sum(len(str(m.content)) for m in messages) // 4 + 200

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.meter.check(self._estimate(messages), self.max_output_tokens)
        reply = self.inner.invoke(messages, **kwargs)
        self.meter.record(reply)
        return ChatResult(generations=[ChatGeneration(message=_ai(reply))])

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.meter.check(self._estimate(messages), self.max_output_tokens)
        reply = await self.inner.ainvoke(messages, **kwargs)
        self.meter.record(reply)
        return ChatResult(generations=[ChatGeneration(message=_ai(reply))])


def _ai(reply: Any) -> AIMessage:
    return reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply))


def teacher_rerun(*, teacher: BaseChatModel, meter: Any, spec: Spec, settings: Settings,
                  benchmark: Benchmark):
    """The `rerun` callable for teacher_diagnosis: task id -> did the teacher succeed."""

    async def rerun(tasks: list[Task]) -> dict[str, bool]:
        model = MeteredChatModel(inner=teacher, meter=meter)
        result = await evaluate(spec, settings, benchmark, tasks, student=lambda _spec: model)
        return {o.task_id: o.success for o in result.outcomes}

    return rerun
