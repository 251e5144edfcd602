"""The embedded engine's in-process transport: the OpenAI SDK and ChatOpenAI reach llama.cpp's
chat handler without a socket. A scripted handler stands in for llama.cpp here; the real one is
tested at the end (slow)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI

from homespun.engines.in_process import (
    AsyncInProcessTransport,
    InProcessTransport,
    assemble_completion,
    in_process_clients,
)

URL = "http://embedded.invalid/v1"
HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


def _chunk(delta: dict | None = None, finish: str | None = None, **extra: Any) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c1", "created": 1, "model": "m", "object": "chat.completion.chunk",
            "choices": choices, **extra}  # fmt: skip


TEXT = [
    _chunk({"role": "assistant", "content": None}),
    _chunk({"content": "Hel"}),
    _chunk({"content": "lo"}),
    _chunk({}, finish="stop", timings={"predicted_n": 2}),
    _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
]


class ScriptedHandler:
    """Stands in for EmbeddedServer: answers every request with `chunks` (a streaming one
    chunk by chunk, `delay_s` apart), and records the requests and whether it was stopped."""

    closed = False

    def __init__(self, chunks: list[dict], delay_s: float = 0.0, first_delay_s: float = 0.0):
        self.chunks = chunks
        self.delay_s = delay_s
        self.first_delay_s = first_delay_s
        self.requests: list[dict] = []
        self.stopped = threading.Event()
        self.finished = threading.Event()

    def chat_raw(self, request: bytes, on_chunk) -> None:
        body = json.loads(request)
        self.requests.append(body)
        time.sleep(self.first_delay_s)
        try:
            if not body.get("stream"):  # never asked of it: the transport always streams
                on_chunk(json.dumps({"error": {"code": 500, "message": "not streaming"}}))
                return
            for chunk in self.chunks:
                if on_chunk(json.dumps(chunk).encode()):
                    self.stopped.set()
                    return
                time.sleep(self.delay_s)
        finally:
            self.finished.set()


def _sync_client(handler: ScriptedHandler, **kwargs: Any) -> openai.OpenAI:
    http = httpx2.Client(transport=InProcessTransport(handler))  # type: ignore[arg-type]
    return openai.OpenAI(base_url=URL, api_key="unused", http_client=http, max_retries=0, **kwargs)


def _async_client(handler: ScriptedHandler, **kwargs: Any) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=AsyncInProcessTransport(handler))  # type: ignore[arg-type]
    return openai.AsyncOpenAI(
        base_url=URL, api_key="unused", http_client=http, max_retries=0, **kwargs
    )


def test_a_completion_is_assembled_from_the_stream_it_runs_as():
    handler = ScriptedHandler(TEXT)
    reply = _sync_client(handler).chat.completions.create(model="m", **HELLO)
    assert handler.requests[0]["stream"] is True  # stoppable, see the module docstring
    assert handler.requests[0]["stream_options"] == {"include_usage": True}
    assert handler.requests[0]["messages"] == HELLO["messages"]
    assert reply.choices[0].message.content == "Hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_tool_call_deltas_are_joined_as_llama_cpp_joins_them():
    calls = [
        _chunk({"role": "assistant", "content": None}),
        _chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function",
                                "function": {"name": "mul", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "2}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "type": "function",
                                "function": {"name": "add", "arguments": "{}"}}]}),
        _chunk({}, finish="tool_calls"),
    ]  # fmt: skip
    completion = assemble_completion(calls)
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "mul", "arguments": '{"x": 2}'}},
        {"id": "b", "type": "function", "function": {"name": "add", "arguments": "{}"}},
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["object"] == "chat.completion" and completion["id"] == "c1"


async def test_a_streaming_request_streams_server_sent_events():
    handler = ScriptedHandler(TEXT)
    client = _async_client(handler)
    stream = await client.chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True}, **HELLO
    )
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        usage = chunk.usage or usage
    assert pieces == ["Hel", "lo"]
    assert usage is not None and usage.completion_tokens == 2


async def test_chat_openai_works_over_the_clients_sync_async_and_streaming():
    handler = ScriptedHandler(TEXT)
    sync, async_ = in_process_clients(handler)  # type: ignore[arg-type]
    chat = ChatOpenAI(model="m", base_url=URL, api_key="unused", max_retries=0,
                      stream_usage=True, http_client=sync, http_async_client=async_)  # fmt: skip
    assert chat.invoke("hi").content == "Hello"
    reply = await chat.ainvoke("hi")
    assert reply.content == "Hello" and reply.usage_metadata["output_tokens"] == 2
    assert reply.response_metadata["finish_reason"] == "stop"
    streamed = [c.content async for c in chat.astream("hi")]
    assert "".join(streamed) == "Hello"


def test_an_engine_error_keeps_its_http_status():
    too_long = {"error": {"code": 400, "type": "exceed_context_size_error", "message": "long"}}
    with pytest.raises(openai.BadRequestError) as err:
        _sync_client(ScriptedHandler([too_long])).chat.completions.create(model="m", **HELLO)
    assert err.value.status_code == 400 and "long" in str(err.value)


async def test_an_engine_error_on_a_stream_keeps_its_status_too():
    too_long = {"error": {"code": 400, "type": "exceed_context_size_error", "message": "long"}}
    with pytest.raises(openai.BadRequestError):
        await _async_client(ScriptedHandler([too_long])).chat.completions.create(
            model="m", stream=True, **HELLO
        )


async def test_a_stream_read_once_has_nothing_more_as_an_exhausted_socket():
    # The openai SDK drains a stream after its [DONE]: a stream that started over would make
    # it wait (0.1 s, its drain timeout) for chunks that never come.
    request = httpx2.Request("POST", URL + "/chat/completions", json={**HELLO, "stream": True})
    response = await AsyncInProcessTransport(ScriptedHandler(TEXT)).handle_async_request(request)
    first = [part async for part in response.stream]
    assert first[0].startswith(b"data: {") and first[-1] == b"data: [DONE]\n\n"
    assert [part async for part in response.stream] == []
    sync = InProcessTransport(ScriptedHandler(TEXT)).handle_request(request)  # type: ignore[arg-type]
    assert list(sync.stream)[-1] == b"data: [DONE]\n\n" and list(sync.stream) == []


def test_a_closed_engine_is_a_connection_error_as_a_closed_port_is():
    from homespun.engines.embedded import EngineError

    class Closed(ScriptedHandler):
        closed = True

        def chat_raw(self, request: bytes, on_chunk) -> None:
            raise EngineError("the embedded server for m.gguf is closed")

    with pytest.raises(openai.APIConnectionError):
        _sync_client(Closed([])).chat.completions.create(model="m", **HELLO)


def test_other_paths_are_not_found():
    http = httpx2.Client(transport=InProcessTransport(ScriptedHandler(TEXT)))  # type: ignore[arg-type]
    assert http.get(URL + "/models").status_code == 404


def _endless(n: int = 10_000) -> list[dict]:
    return [_chunk({"role": "assistant"})] + [_chunk({"content": "x"})] * n


async def test_closing_a_stream_early_stops_the_decode():
    handler = ScriptedHandler(_endless(), delay_s=0.001)
    stream = await _async_client(handler).chat.completions.create(model="m", stream=True, **HELLO)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()
    assert await asyncio.to_thread(handler.finished.wait, 10)
    assert handler.stopped.is_set()


async def test_a_cancelled_call_stops_the_decode():
    handler = ScriptedHandler(_endless(), delay_s=0.001)
    task = asyncio.create_task(_async_client(handler).chat.completions.create(model="m", **HELLO))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(handler.finished.wait, 10)
    assert handler.stopped.is_set()


async def test_a_call_past_its_timeout_raises_the_sdks_timeout_and_stops_the_decode():
    handler = ScriptedHandler(_endless(), delay_s=0.001)
    with pytest.raises(openai.APITimeoutError):
        await _async_client(handler, timeout=0.2).chat.completions.create(model="m", **HELLO)
    assert await asyncio.to_thread(handler.finished.wait, 10)
    assert handler.stopped.is_set()


def test_a_sync_call_past_its_timeout_stops_the_decode_too():
    handler = ScriptedHandler(_endless(), delay_s=0.001)
    with pytest.raises(openai.APITimeoutError):
        _sync_client(handler, timeout=0.2).chat.completions.create(model="m", **HELLO)
    assert handler.finished.wait(10) and handler.stopped.is_set()


# ------------------------------------------------------------------ the real engine (slow)


@pytest.fixture(scope="module")
def server(model_path: Path):
    from homespun.engines.embedded import get_embedded_server

    return get_embedded_server(model_path, n_ctx=2048)


REPLY_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "reply",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        },
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"response_format": REPLY_SCHEMA}], ids=["text", "json"])
def test_the_in_process_reply_is_the_servers_own(server, extra: dict):
    request = {**HELLO, "max_tokens": 24, "temperature": 0, "seed": 1, **extra}
    direct = server.chat(request)
    sync, _ = in_process_clients(server)
    reply = sync.post(URL + "/chat/completions", json=request)
    assert reply.status_code == 200
    through = reply.json()
    assert through["choices"][0]["message"] == direct["choices"][0]["message"]
    assert through["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert through["usage"][key] == direct["usage"][key]


@pytest.mark.slow
async def test_the_real_engine_streams_and_rejects_over_the_clients(server):
    sync, async_ = in_process_clients(server)
    client = openai.AsyncOpenAI(base_url=URL, api_key="unused", http_client=async_, max_retries=0)
    stream = await client.chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True},
        **{**HELLO, "temperature": 0, "seed": 1},
    )  # fmt: skip
    text, usage = "", None
    async for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    direct = server.chat({**HELLO, "temperature": 0, "seed": 1})
    assert text == direct["choices"][0]["message"]["content"]
    assert usage is not None and usage.completion_tokens == direct["usage"]["completion_tokens"]
    too_long = {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 4}
    with pytest.raises(openai.BadRequestError, match="exceed"):
        openai.OpenAI(base_url=URL, api_key="unused", http_client=sync, max_retries=0
                      ).chat.completions.create(model="m", **too_long)  # fmt: skip


def _tokens_predicted(server) -> float:
    metrics = server._server.handle_metrics()
    line = next(x for x in metrics.splitlines() if x.startswith("llamacpp:tokens_predicted_total"))
    return float(line.split()[-1])


@pytest.mark.slow
async def test_a_stream_closed_early_frees_the_real_engine(server):
    _, async_ = in_process_clients(server)
    client = openai.AsyncOpenAI(base_url=URL, api_key="unused", http_client=async_, max_retries=0)
    before = _tokens_predicted(server)
    long = {"messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 1500, "extra_body": {"ignore_eos": True}}  # fmt: skip
    stream = await client.chat.completions.create(model="m", stream=True, **long)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()
    server.chat(HELLO)  # queued behind the first request if it still ran: waits for its end
    assert _tokens_predicted(server) - before < 200  # not the 1500 it was asked for


@pytest.mark.slow
@pytest.mark.parametrize("tool_call_format", ["native", "constrained_json"])
async def test_homespuns_chat_model_reaches_the_engine_in_process(
    settings, model_path: Path, tool_call_format: str
):
    from homespun.engines.factory import build_chat_model
    from homespun.spec import Spec

    spec = Spec.model_validate(
        {"engine": {"tool_call_format": tool_call_format, "context_length": 2048},
         "intelligence": {"max_tokens": 16}}
    )  # fmt: skip
    model = build_chat_model(spec, settings)
    assert isinstance(model.inner.http_async_client._transport, AsyncInProcessTransport)
    assert isinstance(model.inner.http_client._transport, InProcessTransport)
    reply = await model.ainvoke("Say hello.")
    assert reply.content.strip() and reply.usage_metadata["output_tokens"] > 0
    streamed = [chunk async for chunk in model.astream("Say hello.")]
    assert "".join(c.content for c in streamed if isinstance(c.content, str)).strip()
