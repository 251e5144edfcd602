"""The runtime assistant: a LangGraph state machine built from the spec's `[agent]` table.

Three loops, each a different graph:

- simple:       respond -> (verify) -> END                       one call, no tools
- react:        agent <-> tools ... -> (verify) -> END           until an answer or max_turns
- plan_execute: plan -> execute <-> tools ... -> answer -> (verify) -> END

The system prompt and few-shot examples are added at call time, not stored in the thread,
so an edited spec takes effect on existing conversations. `turns` counts model calls for
the current question; the caller resets it with each new question.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from homespun.engines.tool_calls import UNPARSED_TOOL_CALL_KEY
from homespun.spec import AgentSpec, FewShotExample, Spec, VerifierSpec
from homespun.stores.traces import StopReason

# A tool result longer than this is cut: tool outputs are untrusted and must not be able
# to flood the context of a small model.
MAX_TOOL_RESULT_CHARS = 6000

TURN_LIMIT_PREFIX = "turn limit"


def turn_limit_message(max_turns: int) -> str:
    """The error text of a run that hit agent.max_turns (its stop reason is turn_limit)."""
    return f"{TURN_LIMIT_PREFIX}: {max_turns} model calls used without a final answer"


class EngineError(RuntimeError):
    """The engine failed: a model call raised (or the model could not be built). The message
    is the original exception's 'Type: message'; the original is its __cause__."""

    @classmethod
    def wrapping(cls, exc: Exception) -> EngineError:
        return cls(f"{type(exc).__name__}: {exc}")


PLAN_INSTRUCTION = (
    "Before answering, write a short numbered plan (at most {n} steps) for how to answer the "
    "user's last message, one step per line, using the tools where useful. Do not answer yet."
)
STEP_INSTRUCTION = (
    "Carry out step {i} of {n} of your plan: {step}\n"
    "Call a tool if this step needs one; otherwise state the result of this step."
)
REPEAT_INSTRUCTION = (
    "You already called {calls} and its result is above. Do not call it again: "
    "give your final answer to the user's last message now."
)
ANSWER_INSTRUCTION = (
    "All steps are done. Now give your final answer to the user's last message, using the "
    "results above. Answer briefly and exactly."
)


class AssistantState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int
    plan: list[str]
    step: int
    verifier_retries: int
    stop_reason: str
    """'' while the run goes on; else a StopReason value the graph decided: turn_limit,
    unparsed_tool_call, or repeat_guard / verifier_failed on the answer it ends with (reset
    by each model call)."""


def new_question_state(question: HumanMessage) -> dict[str, Any]:
    """The input for one question: the message plus per-question counters reset."""
    return {
        "messages": [question],
        "turns": 0,
        "plan": [],
        "step": 0,
        "verifier_retries": 0,
        "stop_reason": "",
    }


EXAMPLES_HEADING = "## Examples"
EXAMPLES_NOTE = (
    "These worked examples show how to use the tools. They are not part of this conversation: "
    "their questions, tool results and answers are made up, so never use them to answer the "
    "user."
)


def examples_block(examples: Sequence[FewShotExample], *, calls_as_list: bool = False) -> str:
    """The worked examples as a block of the system message (few_shot_style system_block);
    with `calls_as_list` each call is written in the list form the reply protocol asks for."""
    lines = [EXAMPLES_HEADING, EXAMPLES_NOTE]
    for i, example in enumerate(examples, 1):
        lines += ["", f"Example {i}", f"User: {example.user}"]
        if example.tool:
            call = {"tool": example.tool, "arguments": dict(example.arguments)}
            shown = [call] if calls_as_list else call
            lines.append(f"Tool call: {json.dumps(shown, ensure_ascii=False)}")
            lines.append(f"Tool result: {example.tool_result}")
        lines.append(f"Answer: {example.assistant}")
    lines += ["", "(End of the examples. The conversation follows.)"]
    return "\n".join(lines)


def prompt_messages(
    agent: AgentSpec, messages: Sequence[BaseMessage], extra: str | None = None
) -> list[BaseMessage]:
    """What the model is sent: the system prompt, the worked examples (as made-up earlier
    turns, or as a block of the system message: `agent.rendering.few_shot_style`), the
    conversation, and the node's instruction if any."""
    if agent.few_shot and agent.rendering.few_shot_style == "system_block":
        block = examples_block(agent.few_shot, calls_as_list=agent.rendering.calls_as_list)
        system = f"{agent.system_prompt.rstrip()}\n\n{block}"
        return [SystemMessage(system), *messages, *([HumanMessage(extra)] if extra else [])]
    out: list[BaseMessage] = [SystemMessage(agent.system_prompt)]
    for i, example in enumerate(agent.few_shot):
        out.append(HumanMessage(example.user))
        if example.tool:
            call_id = f"example_{i}"
            out.append(
                AIMessage(
                    "",
                    tool_calls=[
                        {"name": example.tool, "args": dict(example.arguments), "id": call_id}
                    ],
                )
            )
            out.append(ToolMessage(example.tool_result, tool_call_id=call_id, name=example.tool))
        out.append(AIMessage(example.assistant))
    out.extend(messages)
    if extra:
        out.append(HumanMessage(extra))
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts)


def parse_plan(text: str, max_steps: int) -> list[str]:
    """Numbered or bulleted lines -> steps; free text -> one step."""
    steps = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)", line)
        if m:
            steps.append(m.group(1))
    if not steps and text.strip():
        steps = [text.strip()]
    return steps[:max_steps]


def check_verifier(verifier: VerifierSpec, answer: str) -> str | None:
    """None if the answer passes; otherwise the feedback for the agent."""
    failed = False
    if verifier.kind == "non_empty":
        failed = not answer.strip()
    elif verifier.kind == "regex":
        failed = re.search(verifier.pattern, answer) is None
    elif verifier.kind == "max_length":
        failed = len(answer) > verifier.max_chars
    if not failed:
        return None
    if verifier.feedback:
        return verifier.feedback
    return {
        "non_empty": "Your answer was empty. Give a final answer.",
        "regex": f"Your answer must match the pattern {verifier.pattern!r}. Answer again.",
        "max_length": f"Your answer must be at most {verifier.max_chars} characters. Shorten it.",
    }[verifier.kind]


class _ToolRunner:
    """Executes the tool calls of the last AI message; never raises into the graph."""

    def __init__(self, tools: Sequence[BaseTool]):
        self.tools = {t.name: t for t in tools}

    async def __call__(self, state: AssistantState) -> dict[str, Any]:
        last = state["messages"][-1]
        results: list[ToolMessage] = []
        for call in getattr(last, "tool_calls", []) or []:
            results.append(await self._run_one(call))
        return {"messages": results}

    async def _run_one(self, call: dict[str, Any]) -> ToolMessage:
        name, call_id = call["name"], call.get("id") or ""
        tool = self.tools.get(name)
        started = time.perf_counter()
        server = (tool.metadata or {}).get("mcp_server") if tool else None
        if tool is None:
            available = ", ".join(sorted(self.tools)) or "none"
            content = f"Error: unknown tool {name!r}. Available tools: {available}."
            status = "error"
        else:
            try:
                out = await tool.ainvoke(
                    {
                        "type": "tool_call",
                        "name": name,
                        "args": call.get("args") or {},
                        "id": call_id,
                    }
                )
                content = _text(out.content if isinstance(out, ToolMessage) else out)
                status = out.status if isinstance(out, ToolMessage) else "success"
            except Exception as exc:  # bad arguments, server gone: the model sees it
                content, status = f"Error: {type(exc).__name__}: {exc}", "error"
        if len(content) > MAX_TOOL_RESULT_CHARS:
            content = content[:MAX_TOOL_RESULT_CHARS] + "\n[truncated]"
        return ToolMessage(
            content=content,
            tool_call_id=call_id,
            name=name,
            status=status,
            additional_kwargs={
                "latency_s": round(time.perf_counter() - started, 4),
                "mcp_server": server,
            },
        )


def build_assistant_graph(
    spec: Spec,
    model: BaseChatModel,
    tools: Sequence[BaseTool] = (),
    *,
    checkpointer: Any = None,
):
    """Compile the assistant graph of `spec` around `model` and `tools`.

    `checkpointer=None` gives the form LangGraph Studio wants (it brings its own).
    """
    agent = spec.agent
    tools = list(tools) if agent.tool_policy != "none" else []
    plain = model  # no tools bound: planning, final answers, the simple loop
    try:  # a model that cannot take tools fails here: the engine's failure
        auto = model.bind_tools(tools) if tools else model
        required = model.bind_tools(tools, tool_choice="required") if tools else model
    except Exception as exc:
        raise EngineError.wrapping(exc) from exc

    def tool_model(state: AssistantState) -> Any:
        first_call = not any(isinstance(m, ToolMessage) for m in _this_question(state))
        if agent.tool_policy == "required_first" and first_call:
            return required
        return auto

    async def ask(runnable: Any, messages: list[BaseMessage]) -> Any:
        try:
            return await runnable.ainvoke(messages)
        except Exception as exc:  # the engine's failure, told apart from a tool's
            raise EngineError.wrapping(exc) from exc

    async def call(runnable: Any, state: AssistantState, extra: str | None = None) -> dict:
        reply = await ask(runnable, prompt_messages(agent, state["messages"], extra))
        turns = state.get("turns", 0) + 1
        repeated = _repeated_calls(state, reply) if agent.repeat_guard else []
        if repeated and turns < agent.max_turns:
            # The result is already in the conversation: re-running the tool would only
            # loop. Ask once more, without tools, for the answer.
            instruction = REPEAT_INSTRUCTION.format(calls=", ".join(repeated))
            answer_reply = await ask(plain, prompt_messages(agent, state["messages"], instruction))
            answer_reply.usage_metadata = _add_usage(reply, answer_reply)
            return {
                "messages": [answer_reply],
                "turns": turns + 1,
                "stop_reason": StopReason.REPEAT_GUARD.value,
            }
        if _unparsed_tool_call(reply):
            # Looks like a tool call but could not be read: never an answer.
            stop = StopReason.UNPARSED_TOOL_CALL.value
            return {"messages": [reply], "turns": turns, "stop_reason": stop}
        return {"messages": [reply], "turns": turns, "stop_reason": ""}

    # ----- nodes

    async def respond(state: AssistantState) -> dict:
        return await call(plain, state)

    async def agent_node(state: AssistantState) -> dict:
        return await call(tool_model(state), state)

    async def plan(state: AssistantState) -> dict:
        out = await call(plain, state, PLAN_INSTRUCTION.format(n=agent.max_plan_steps))
        reply = out["messages"][0]
        steps = parse_plan(_text(reply.content), agent.max_plan_steps)
        reply = AIMessage(
            content=_text(reply.content),
            name="planner",
            usage_metadata=getattr(reply, "usage_metadata", None),
            response_metadata=reply.response_metadata,
        )
        return {**out, "messages": [reply], "plan": steps, "step": 0}

    async def execute(state: AssistantState) -> dict:
        steps, i = state.get("plan") or [], state.get("step", 0)
        instruction = STEP_INSTRUCTION.format(i=i + 1, n=len(steps), step=steps[i])
        return await call(tool_model(state), state, instruction)

    async def answer(state: AssistantState) -> dict:
        return await call(plain, state, ANSWER_INSTRUCTION)

    def turn_limit(state: AssistantState) -> dict:
        return {"stop_reason": StopReason.TURN_LIMIT.value}

    def verify(state: AssistantState) -> dict:
        answer_text = _text(state["messages"][-1].content)
        failed = False
        for verifier in agent.verifiers:
            feedback = check_verifier(verifier, answer_text)
            if feedback is not None and state.get("verifier_retries", 0) < verifier.retries:
                return {
                    "messages": [HumanMessage(feedback, name="verifier")],
                    "verifier_retries": state.get("verifier_retries", 0) + 1,
                }
            failed = failed or feedback is not None
        # Retries spent: the answer stands (as before), but the trace says it failed.
        return {"stop_reason": StopReason.VERIFIER_FAILED.value} if failed else {}

    tool_runner = _ToolRunner(tools)

    # ----- routing

    def out_of_turns(state: AssistantState) -> bool:
        return state.get("turns", 0) >= agent.max_turns

    def unparsed(state: AssistantState) -> bool:
        return state.get("stop_reason") == StopReason.UNPARSED_TOOL_CALL

    def after_agent(state: AssistantState) -> str:
        if unparsed(state):
            return END
        if state["messages"][-1].tool_calls:
            return "turn_limit" if out_of_turns(state) else "tools"
        return "verify"

    def after_execute(state: AssistantState) -> str:
        if unparsed(state):
            return END
        if state["messages"][-1].tool_calls:
            return "turn_limit" if out_of_turns(state) else "tools"
        if out_of_turns(state):
            return "turn_limit"
        return "next_step"

    def next_step(state: AssistantState) -> dict:
        return {"step": state.get("step", 0) + 1}

    def after_next_step(state: AssistantState) -> str:
        return "execute" if state.get("step", 0) < len(state.get("plan") or []) else "answer"

    def after_verify(entry: str):
        def route(state: AssistantState) -> str:
            last = state["messages"][-1]
            if isinstance(last, HumanMessage) and last.name == "verifier":
                return "turn_limit" if out_of_turns(state) else entry
            return END

        return route

    def after_answer_like(state: AssistantState) -> str:
        return "verify" if agent.verifiers else END

    g = StateGraph(AssistantState)
    g.add_node("turn_limit", turn_limit)
    g.add_edge("turn_limit", END)
    g.add_node("verify", verify)

    if agent.loop == "simple":
        g.add_node("respond", respond)
        g.add_edge(START, "respond")
        g.add_conditional_edges("respond", after_answer_like, ["verify", END])
        g.add_conditional_edges("verify", after_verify("respond"), ["respond", "turn_limit", END])
    elif agent.loop == "react":
        g.add_node("agent", agent_node)
        g.add_node("tools", tool_runner)
        g.add_edge(START, "agent")

        def route_agent(state: AssistantState) -> str:
            nxt = after_agent(state)
            return after_answer_like(state) if nxt == "verify" else nxt

        g.add_conditional_edges("agent", route_agent, ["tools", "turn_limit", "verify", END])
        g.add_edge("tools", "agent")
        g.add_conditional_edges("verify", after_verify("agent"), ["agent", "turn_limit", END])
    elif agent.loop == "plan_execute":
        g.add_node("plan", plan)
        g.add_node("execute", execute)
        g.add_node("tools", tool_runner)
        g.add_node("next_step", next_step)
        g.add_node("answer", answer)
        g.add_edge(START, "plan")

        def route_plan(state: AssistantState) -> str:
            return "execute" if state.get("plan") else "answer"

        g.add_conditional_edges("plan", route_plan, ["execute", "answer"])
        g.add_conditional_edges("execute", after_execute, ["tools", "turn_limit", "next_step", END])
        g.add_edge("tools", "execute")
        g.add_conditional_edges("next_step", after_next_step, ["execute", "answer"])
        g.add_conditional_edges("answer", after_answer_like, ["verify", END])
        g.add_conditional_edges("verify", after_verify("answer"), ["answer", "turn_limit", END])
    else:  # pragma: no cover - the spec's Literal makes this unreachable
        raise ValueError(f"unknown agent.loop {agent.loop!r}")

    return g.compile(checkpointer=checkpointer, name=f"homespun-{agent.loop}")


def _this_question(state: AssistantState) -> list[BaseMessage]:
    """Messages since the last user question (the verifier's notes do not count)."""
    messages = state["messages"]
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, HumanMessage) and m.name != "verifier":
            return messages[i + 1 :]
    return list(messages)


def _unparsed_tool_call(reply: Any) -> bool:
    """A reply the engine marked as a tool call it could not read (engines.tool_calls)."""
    metadata = getattr(reply, "response_metadata", None) or {}
    return not getattr(reply, "tool_calls", None) and bool(metadata.get(UNPARSED_TOOL_CALL_KEY))


def _call_key(call: dict[str, Any]) -> str:
    return f"{call['name']}({json.dumps(call.get('args') or {}, sort_keys=True)})"


def _repeated_calls(state: AssistantState, reply: Any) -> list[str]:
    """Tool calls in `reply` that were already made, with a result, for this question."""
    calls = getattr(reply, "tool_calls", None) or []
    if not calls:
        return []
    answered = {m.tool_call_id for m in _this_question(state) if isinstance(m, ToolMessage)}
    done = {
        _call_key(c)
        for m in _this_question(state)
        if isinstance(m, AIMessage)
        for c in m.tool_calls
        if c.get("id") in answered
    }
    keys = [_call_key(c) for c in calls]
    return keys if all(k in done for k in keys) else []


def _add_usage(a: Any, b: Any) -> Any:
    ua, ub = getattr(a, "usage_metadata", None), getattr(b, "usage_metadata", None)
    if not ua or not ub:
        return ub or ua
    keys = ("input_tokens", "output_tokens", "total_tokens")
    return {k: int(ua.get(k, 0) or 0) + int(ub.get(k, 0) or 0) for k in keys}


def recursion_limit(spec: Spec) -> int:
    """Enough graph steps for max_turns model calls plus their tool and routing nodes."""
    per_turn = 4 if spec.agent.loop == "plan_execute" else 3
    verifier_rounds = sum(v.retries for v in spec.agent.verifiers)
    return (spec.agent.max_turns + verifier_rounds) * per_turn + 10
