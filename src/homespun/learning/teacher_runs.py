"""The teacher as the agent: re-running failing tasks to measure the teacher success rate.

`MeteredChatModel` puts every model call of such a run through `engines.cost.metered_call`
on the session's CostMeter: a spent budget stops the run (which then counts as failed), and
the teacher's own task runs are never counted as free.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from homespun.engines.cost import max_output_tokens, metered_call, metered_call_sync
from homespun.engines.providers import bound_reply_tokens
from homespun.learning.evaluation import evaluate
from homespun.learning.tasks import Benchmark, Task
from homespun.spec import Settings, Spec


class MeteredChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Any  # a chat model, or one with tools bound (a Runnable)
    meter: Any
    max_output_tokens: int = 1024
    # What bind_tools bound, for the estimate: the schemas go with every request.
    bound_tools: list[dict] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "metered"

    def bind_tools(self, tools: Any, **kwargs: Any) -> MeteredChatModel:
        return MeteredChatModel(
            inner=self.inner.bind_tools(tools, **kwargs),
            meter=self.meter,
            max_output_tokens=self.max_output_tokens,
            bound_tools=[convert_to_openai_tool(t) for t in tools],
        )

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        reply = metered_call_sync(
            self.meter,
            self.inner,
            messages,
            tools=self.bound_tools,
            max_output_tokens=self.max_output_tokens,
            **kwargs,
        )
        return ChatResult(generations=[ChatGeneration(message=_ai(reply))])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        reply = await metered_call(
            self.meter,
            self.inner,
            messages,
            tools=self.bound_tools,
            max_output_tokens=self.max_output_tokens,
            **kwargs,
        )
        return ChatResult(generations=[ChatGeneration(message=_ai(reply))])


def _ai(reply: Any) -> AIMessage:
    return reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply))


# The bound on each of the teacher's replies as the agent, where the teacher allows one
# (`bound_reply_tokens`: a local teacher decoding under the tools' JSON schema): one tool
# call or a short answer, as the student's own replies (intelligence.max_tokens, 256 by
# default). A local teacher writes ~10 tokens/s on 2 cores (Qwen2.5-Coder-1.5B), and a
# re-run is several replies.
RERUN_REPLY_TOKENS = 512


def teacher_rerun(
    *, teacher: BaseChatModel, meter: Any, spec: Spec, settings: Settings, benchmark: Benchmark
):
    """The `rerun` callable for teacher_diagnosis: task id -> did the teacher succeed."""
    bounded = bound_reply_tokens(teacher, RERUN_REPLY_TOKENS)

    async def rerun(tasks: list[Task]) -> dict[str, bool]:
        model = MeteredChatModel(
            inner=bounded,
            meter=meter,
            max_output_tokens=max_output_tokens(bounded, default=RERUN_REPLY_TOKENS),
        )
        result = await evaluate(spec, settings, benchmark, tasks, student=lambda _spec: model)
        return {o.task_id: o.success for o in result.outcomes}

    return rerun
