"""Per-turn overhead of the react graph with an in-process MCP tool, against a hand-written loop.

Both sides call the same deterministic chat model and, in the end, the same Python function;
what differs is everything homespun adds around them: the LangGraph state machine, the MCP
round trip (FastMCP in-memory transport through langchain-mcp-adapters), and optionally the
SQLite checkpoint and the trace row that a real `homespun ask` writes.

    python benchmarks/overhead.py [--questions 200]

Prints seconds per turn (one model call) for each variant and the ratio to the hand loop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import fastmcp
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_mcp_adapters.tools import load_mcp_tools

from homespun.graphs.assistant import build_assistant_graph, new_question_state
from homespun.graphs.runner import run_assistant
from homespun.spec import Settings, Spec

TURNS_PER_QUESTION = 2  # tool call, then answer


def multiply(expression: str) -> str:
    a, b = (int(x) for x in expression.split("*"))
    return str(a * b)


class PingPongModel(BaseChatModel):
    """Calls the tool, then answers with its result: the same two turns every question."""

    @property
    def _llm_type(self) -> str:
        return "ping-pong"

    def bind_tools(self, tools: Any, **kwargs: Any) -> PingPongModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"The answer is {last.content}.")
        else:
            reply = AIMessage(
                content="",
                tool_calls=[
                    {
                        "name": "multiply",
                        "args": {"expression": "37 * 41"},
                        "id": "c1",
                        "type": "tool_call",
                    }
                ],
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


async def hand_loop(model: PingPongModel, questions: int) -> float:
    started = time.perf_counter()
    for _ in range(questions):
        messages: list[BaseMessage] = [HumanMessage("What is 37 * 41?")]
        while True:
            reply = await model.ainvoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                break
            for call in reply.tool_calls:
                messages.append(ToolMessage(multiply(**call["args"]), tool_call_id=call["id"]))
    return time.perf_counter() - started


def mcp_server() -> fastmcp.FastMCP:
    server = fastmcp.FastMCP("bench")
    server.tool(multiply, name="multiply", description="Multiply 'a * b'.")
    return server


async def graph_loop(model: PingPongModel, questions: int) -> float:
    async with fastmcp.Client(mcp_server()) as client:
        tools = await load_mcp_tools(client.session)
        graph = build_assistant_graph(Spec(), model, tools)
        started = time.perf_counter()
        for _ in range(questions):
            state = await graph.ainvoke(new_question_state(HumanMessage("What is 37 * 41?")))
            assert state["messages"][-1].content == "The answer is 1517."
        return time.perf_counter() - started


async def full_run_loop(model: PingPongModel, questions: int, home: Path) -> float:
    """What `homespun ask` does per question: graph + MCP + checkpoint + trace row."""
    settings = Settings(home=home)
    async with fastmcp.Client(mcp_server()) as client:
        tools = await load_mcp_tools(client.session)
        started = time.perf_counter()
        for i in range(questions):
            res = await run_assistant(
                Spec(),
                settings,
                "What is 37 * 41?",
                model=model,
                tools=tools,
                thread_id=f"bench-{i}",
            )
            assert res.answer == "The answer is 1517.", res.trace.error
        return time.perf_counter() - started


async def main(questions: int, repeats: int) -> None:
    model = PingPongModel()
    turns = questions * TURNS_PER_QUESTION
    await hand_loop(model, 5)  # warm imports and caches
    await graph_loop(model, 5)
    hand, graph, full = [], [], []
    for _ in range(repeats):
        hand.append(await hand_loop(model, questions))
        graph.append(await graph_loop(model, questions))
        with tempfile.TemporaryDirectory() as tmp:
            full.append(await full_run_loop(model, questions, Path(tmp)))
    h, g, f = (statistics.median(x) / turns for x in (hand, graph, full))
    print(f"questions={questions} turns/question={TURNS_PER_QUESTION} repeats={repeats} (median)")
    print(f"hand-written loop, direct function call      : {h * 1e3:8.3f} ms/turn  (1.00x)")
    print(
        f"react graph + in-process MCP tool             : {g * 1e3:8.3f} ms/turn  "
        f"({g / h:.2f}x)  overhead {(g - h) * 1e3:.3f} ms/turn"
    )
    print(
        f"  + SQLite checkpoint + trace row (homespun ask): {f * 1e3:8.3f} ms/turn  "
        f"({f / h:.2f}x)  overhead {(f - h) * 1e3:.3f} ms/turn"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.questions, args.repeats))
