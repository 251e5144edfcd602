"""Per-turn overhead of the react graph with an in-process MCP tool, against a hand-written loop
and against LangGraph's own prebuilt ReAct agent.

Every variant calls the same deterministic chat model and, in the end, the same Python function;
what differs is everything around them: the LangGraph state machine, the MCP round trip
(FastMCP in-memory transport through langchain-mcp-adapters), and optionally the SQLite
checkpoint and the trace row that a real `homespun ask` writes. The peer is
`langgraph.prebuilt.create_react_agent` (deprecated in favour of `langchain.agents.create_agent`,
which homespun does not depend on; the latter is measured too when it is installed) over the
same model and the same MCP tool, with and without an AsyncSqliteSaver checkpointer.

    python benchmarks/overhead.py [--questions 200] [--repeats 3]

Prints milliseconds per turn (one model call) for each variant and its ratio to the hand loop
and to the peer (the persisted rows also to the peer with a checkpointer), and the persisted
path with SQLite's default synchronous=FULL, to show what stores.sqlite's NORMAL saves.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fastmcp
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_mcp_adapters.tools import load_mcp_tools
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from homespun.graphs.assistant import build_assistant_graph, new_question_state
from homespun.graphs.runner import run_assistant
from homespun.spec import Settings, Spec
from homespun.stores import sqlite

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
            reply = AIMessage(content=f"The answer is {last.text}.")
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


async def full_run_loop(
    model: PingPongModel,
    questions: int,
    home: Path,
    *,
    persist: bool = True,
    synchronous: str = sqlite.SYNCHRONOUS,
) -> float:
    """What `homespun ask` (and each question of `homespun chat`) does: the runner opens the
    trace store and the thread's checkpointer, builds the graph, writes the trace row before
    and after. `persist=False` leaves out the checkpoint; `synchronous` is the SQLite setting
    every connection of the run gets ('FULL' is SQLite's default, what homespun had before)."""
    settings = Settings(home=home)
    chosen, sqlite.SYNCHRONOUS = sqlite.SYNCHRONOUS, synchronous
    try:
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
                    persist=persist,
                )
                assert res.answer == "The answer is 1517.", res.trace.error
            return time.perf_counter() - started
    finally:
        sqlite.SYNCHRONOUS = chosen


def prebuilt_react_agent(model: PingPongModel, tools: list, checkpointer: Any = None) -> Any:
    """The peer: LangGraph's prebuilt ReAct agent (its deprecation warning silenced)."""
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_react_agent(model, tools, checkpointer=checkpointer)


def langchain_agent(model: PingPongModel, tools: list, checkpointer: Any = None) -> Any | None:
    """Its successor, `langchain.agents.create_agent`, where langchain is installed."""
    try:
        from langchain.agents import create_agent
    except ImportError:
        return None
    return create_agent(model, tools, checkpointer=checkpointer)


async def peer_loop(
    model: PingPongModel,
    questions: int,
    build: Callable[..., Any] = prebuilt_react_agent,
    db: Path | None = None,
) -> float:
    """A peer agent over the same MCP tool; with `db`, checkpointed there (one saver for all
    questions, one thread per question, as a LangGraph app would)."""
    async with fastmcp.Client(mcp_server()) as client:
        tools = await load_mcp_tools(client.session)
        if db is None:
            return await _run_peer(build(model, tools), questions)
        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            return await _run_peer(build(model, tools, saver), questions)


async def _run_peer(agent: Any, questions: int) -> float:
    started = time.perf_counter()
    for i in range(questions):
        state = await agent.ainvoke(
            {"messages": [HumanMessage("What is 37 * 41?")]},
            {"configurable": {"thread_id": f"peer-{i}"}},
        )
        assert state["messages"][-1].content == "The answer is 1517."
    return time.perf_counter() - started


async def main(questions: int, repeats: int) -> None:
    model = PingPongModel()
    turns = questions * TURNS_PER_QUESTION
    has_langchain = langchain_agent(model, []) is not None

    def in_tmp(run: Callable[[Path], Awaitable[float]]) -> Callable[[], Awaitable[float]]:
        async def go() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                return await run(Path(tmp))

        return go

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "hand": lambda: hand_loop(model, questions),
        "peer": lambda: peer_loop(model, questions),
        "graph": lambda: graph_loop(model, questions),
        "peer_db": in_tmp(lambda tmp: peer_loop(model, questions, db=tmp / "threads.db")),
        "traced": in_tmp(lambda tmp: full_run_loop(model, questions, tmp, persist=False)),
        "full": in_tmp(lambda tmp: full_run_loop(model, questions, tmp)),
        "full_sync": in_tmp(lambda tmp: full_run_loop(model, questions, tmp, synchronous="FULL")),
    }
    if has_langchain:
        variants["agent"] = lambda: peer_loop(model, questions, build=langchain_agent)
    await hand_loop(model, 5)  # warm imports and caches
    await peer_loop(model, 5)
    await graph_loop(model, 5)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(await run())
    ms = {name: statistics.median(t) / turns * 1e3 for name, t in times.items()}

    print(f"questions={questions} turns/question={TURNS_PER_QUESTION} repeats={repeats} (median)")
    print(f"{'':60s} {'ms/turn':>8s} {'x hand':>7s} {'x peer':>7s}")

    def row(label: str, name: str, extra: str = "") -> None:
        print(
            f"{label:60s} {ms[name]:8.3f} {ms[name] / ms['hand']:6.2f}x "
            f"{ms[name] / ms['peer']:6.2f}x{extra}"
        )

    row("hand-written loop, direct function call", "hand")
    row("peer: langgraph.prebuilt.create_react_agent + MCP tool", "peer")
    if has_langchain:
        row("  langchain.agents.create_agent + MCP tool", "agent")
    row("homespun react graph + in-process MCP tool", "graph")
    row("peer + AsyncSqliteSaver checkpoint (SQLite's default FULL)", "peer_db")
    row("homespun run_assistant, trace row, no checkpoint", "traced")
    for label, name in (
        ("homespun ask: + SQLite checkpoint (synchronous=NORMAL)", "full"),
        ("  the same with synchronous=FULL (SQLite's default)", "full_sync"),
    ):
        row(label, name, f"  ({ms[name] / ms['peer_db']:.2f}x peer + checkpoint)")
    print(
        f"overhead per turn over the hand loop: peer {ms['peer'] - ms['hand']:.3f} ms, "
        f"homespun graph {ms['graph'] - ms['hand']:.3f} ms; persisted: peer "
        f"{ms['peer_db'] - ms['hand']:.3f} ms, homespun {ms['full'] - ms['hand']:.3f} ms "
        f"(FULL: {ms['full_sync'] - ms['hand']:.3f} ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.questions, args.repeats))
