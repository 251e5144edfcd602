"""Decode speed of the embedded engine: homespun's chat model against the raw in-process handler.

The reference is llama.cpp's chat handler called in-process (`EmbeddedServer.chat`), with the
very request body homespun's chat model sends (captured from the model's HTTP client), so the
two decode the same tokens with the same sampling and grammar and any difference is the path:
the openai client, langchain-openai, the tool-call wrapper, and the transport between them and
llama.cpp. Measured for both `engine.tool_call_format` values, and the same request body over
the engine's loopback HTTP port as well (what homespun used before its in-process transport).
Streaming rows stream the same body (`astream`, as `homespun ask` does when it prints tokens
as they come) against the raw handler's own streaming callback.

Tokens per second are completion tokens over the wall time of the whole call. The variants run
interleaved, one of each per repeat, and every ratio is the median of the per-repeat ratios, so
that a slow moment of a shared machine weighs on both sides of a ratio alike. On a shared
machine the engine's own speed still varies from call to call by more than the path costs, so
each call's wall time is also set against llama.cpp's own time for it (prompt + decode, from
the `timings` of its reply): the "at equal engine speed" ratio is the variant's share of wall
time spent in the engine over the raw handler's, which is the tokens/s ratio the variant would
have if the engine ran equally fast for both.

    python benchmarks/decode.py [--model smollm2-135m] [--threads 1] [--tokens 128] [--repeats 7]

The model is resolved in HOMESPUN_MODELS_DIR, else the test suite's .cache/models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from homespun.engines.catalog import resolve_model_path
from homespun.engines.embedded import EmbeddedServer, get_embedded_server
from homespun.engines.factory import build_chat_model
from homespun.engines.tool_calls import ToolCallingChatModel
from homespun.spec import Settings, Spec

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a long story about a dragon who learns to cook. Describe every dish."
FORMATS = ("native", "constrained_json")


def models_dir() -> Path:
    return Path(os.environ.get("HOMESPUN_MODELS_DIR") or REPO / ".cache" / "models")


def server_of(spec: Spec, settings: Settings) -> EmbeddedServer:
    """The server `build_chat_model` loaded for `spec` (the same key, so the same object)."""
    return get_embedded_server(
        resolve_model_path(spec.intelligence.model, settings.models_path),
        n_ctx=spec.engine.context_length,
        threads=spec.engine.threads,
        parallel=spec.engine.parallel,
        log_file=settings.logs_dir / "engine.log",
    )


def engine_seconds(reply: dict) -> float:
    timings = reply["timings"]
    return (timings["prompt_ms"] + timings["predicted_ms"]) / 1e3


class Recorder:
    """What a client sends (request bodies) and llama.cpp's own time for its last reply (from
    the `timings` of a completion, or of the last event of a stream)."""

    def __init__(self, client: httpx2.AsyncClient):
        self.bodies: list[bytes] = []
        self.engine_s = 0.0
        client.event_hooks = {"request": [self._request], "response": [self._response]}

    async def _request(self, request: httpx2.Request) -> None:
        self.bodies.append(request.content)

    async def _response(self, response: httpx2.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/json"):
            await response.aread()  # a completion: the SDK reads the same bytes after us
            self.engine_s = engine_seconds(json.loads(response.content))
            return
        inner, recorder = response.stream, self

        class Tee(httpx2.AsyncByteStream):
            """Passes the events on, and takes the timings from the one that has them."""

            async def __aiter__(self) -> Any:
                pending = b""
                async for part in inner:  # type: ignore[union-attr]
                    pending += part
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data: {") and b'"timings"' in line:
                            recorder.engine_s = engine_seconds(json.loads(line[6:]))
                    yield part

            async def aclose(self) -> None:
                await inner.aclose()  # type: ignore[union-attr]

        response.stream = Tee()


def over_http(model: ToolCallingChatModel, server: EmbeddedServer) -> ToolCallingChatModel:
    """`model` with its backend talking to the server's loopback HTTP port instead."""
    inner = model.inner
    assert isinstance(inner, ChatOpenAI)
    http = ChatOpenAI(
        model=inner.model_name,
        base_url=server.base_url,
        api_key=server.api_key,
        max_tokens=inner.max_tokens,
        timeout=inner.request_timeout,
        max_retries=0,
        stream_usage=True,
        temperature=inner.temperature,
        top_p=inner.top_p,
        seed=inner.seed,
        extra_body=inner.extra_body,
        http_async_client=httpx2.AsyncClient(timeout=inner.request_timeout),
    )
    return model.model_copy(update={"inner": http})


Timed = Callable[[], Awaitable[tuple[int, float]]]
"""A call that returns its completion tokens and llama.cpp's own seconds for it."""


async def timed(call: Timed) -> tuple[float, float]:
    """Completion tokens per second of one call, and the share of its wall time in the engine."""
    started = time.perf_counter()
    tokens, engine_s = await call()
    wall = time.perf_counter() - started
    return tokens / wall, engine_s / wall


async def measure_format(
    tool_call_format: str, settings: Settings, args: argparse.Namespace
) -> dict[str, Any]:
    spec = Spec.model_validate(
        {
            "engine": {"threads": args.threads, "tool_call_format": tool_call_format},
            "intelligence": {"model": args.model, "max_tokens": args.tokens},
        }
    )
    model = build_chat_model(spec, settings)
    server = server_of(spec, settings)
    http_model = over_http(model, server)
    assert isinstance(model.inner, ChatOpenAI) and isinstance(http_model.inner, ChatOpenAI)
    sent = Recorder(model.inner.http_async_client or model.inner.root_async_client._client)
    sent_http = Recorder(http_model.inner.http_async_client)
    question = [HumanMessage(PROMPT)]

    warm = await model.ainvoke(question)  # loads the model, fills the prompt cache
    await http_model.ainvoke(question)
    body = json.loads(sent.bodies[-1])
    assert json.loads(sent_http.bodies[-1]) == body, "the HTTP variant must send the same request"
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}

    async def raw() -> tuple[int, float]:
        reply = server.chat(body)
        return reply["usage"]["completion_tokens"], engine_seconds(reply)

    async def raw_stream() -> tuple[int, float]:
        last: dict[str, Any] = {}

        def on_chunk(chunk: dict) -> bool:
            last.update(chunk)
            return False

        server.chat_raw(stream_body, on_chunk)
        return last["usage"]["completion_tokens"], engine_seconds(last)

    async def invoke(chat: ToolCallingChatModel, recorder: Recorder) -> tuple[int, float]:
        reply = await chat.ainvoke(question)
        return reply.usage_metadata["output_tokens"], recorder.engine_s

    async def stream(chat: ToolCallingChatModel, recorder: Recorder) -> tuple[int, float]:
        tokens = 0
        async for chunk in chat.astream(question):
            if chunk.usage_metadata:
                tokens += chunk.usage_metadata["output_tokens"]
        return tokens, recorder.engine_s

    variants: dict[str, Timed] = {
        "raw": raw,
        "chat": lambda: invoke(model, sent),
        "http": lambda: invoke(http_model, sent_http),
        "raw_stream": raw_stream,
        "chat_stream": lambda: stream(model, sent),
        "http_stream": lambda: stream(http_model, sent_http),
    }
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    shares: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, call in variants.items():
            speed, share = await timed(call)
            speeds[name].append(speed)
            shares[name].append(share)
    return {
        "tokens": warm.usage_metadata["output_tokens"],
        "server_threads": server.threads,
        "speeds": speeds,
        "shares": shares,
        "in_process": model.inner.http_async_client is not None,
    }


def ratio(speeds: dict[str, list[float]], over: str, under: str) -> float:
    return statistics.median(a / b for a, b in zip(speeds[over], speeds[under], strict=True))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), models_dir=models_dir())
        path = resolve_model_path(args.model, settings.models_path)
        print(
            f"model={path.name} threads={args.threads} max_tokens={args.tokens} "
            f"temperature=0 repeats={args.repeats} (median; ratios: median of per-repeat ratios)"
        )
        for tool_call_format in FORMATS:
            result = await measure_format(tool_call_format, settings, args)
            speeds = result["speeds"]
            transport = "in-process transport" if result["in_process"] else "loopback HTTP"
            print(
                f"\ntool_call_format={tool_call_format}: {result['tokens']} completion tokens, "
                f"server threads={result['server_threads']}; homespun's chat model uses the "
                f"{transport}"
            )
            rows = [
                ("raw in-process handler (EmbeddedServer.chat)", "raw", "raw"),
                ("homespun chat model (build_chat_model)", "chat", "raw"),
                ("  same body over loopback HTTP", "http", "raw"),
                ("raw handler, streaming callback", "raw_stream", "raw_stream"),
                ("homespun chat model, astream", "chat_stream", "raw_stream"),
                ("  same body over loopback HTTP, astream", "http_stream", "raw_stream"),
            ]
            shares = result["shares"]
            head = f"  {'':44s}  {'tok/s':>6s}  {'ratio':>5s}  {'in engine':>9s}"
            print(head + "  ratio at equal engine speed")
            for label, name, reference in rows:
                print(
                    f"  {label:44s}: {statistics.median(speeds[name]):6.1f}  "
                    f"{ratio(speeds, name, reference):.3f}  "
                    f"{statistics.median(shares[name]):9.1%}  {ratio(shares, name, reference):.3f}"
                )
            print(
                f"  => homespun chat model / raw handler: {ratio(speeds, 'chat', 'raw'):.3f} "
                f"measured, {ratio(shares, 'chat', 'raw'):.3f} at equal engine speed "
                f"(streaming: {ratio(speeds, 'chat_stream', 'raw_stream'):.3f}, "
                f"{ratio(shares, 'chat_stream', 'raw_stream'):.3f})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
