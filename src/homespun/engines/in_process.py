"""The embedded engine's OpenAI-compatible API without a socket.

`langchain_openai.ChatOpenAI` sends its requests through the `openai` SDK, which sends them with
an httpx2 client. `in_process_clients(server)` gives it clients whose transports hand each
request to llama.cpp's chat handler in this process (`EmbeddedServer.chat_raw`) and return what
the server's HTTP port would have answered: the status, the JSON completion or error, or the
server-sent events of a streaming request. No loopback connection, no HTTP parsing on either
side, and no API key: only code in this process can reach it. The HTTP port stays, for other
clients (`EmbeddedServer.base_url`).

Every request runs on a thread of its own in llama.cpp's streaming mode, a non-streaming one
included (its chunks are put together into the completion llama.cpp would have sent), because
only a streaming request can be stopped: a caller that stops waiting (its timeout, a cancelled
task, Ctrl-C, a stream closed early) stops the decode at the next token, as a closed connection
stops it over HTTP, instead of leaving it to run to max_tokens in the background.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2

from .embedded import EmbeddedServer, EngineError

__all__ = [
    "AsyncInProcessTransport",
    "InProcessTransport",
    "assemble_completion",
    "in_process_clients",
]

_CHAT_PATH = "/chat/completions"
_END = object()
"""Put after the last chunk of a request."""


def in_process_clients(server: EmbeddedServer) -> tuple[httpx2.Client, httpx2.AsyncClient]:
    """A sync and an async httpx2 client (for ChatOpenAI's `http_client` and
    `http_async_client`) that reach `server` in-process, whatever host their URLs name."""
    return (
        httpx2.Client(transport=InProcessTransport(server), trust_env=False),
        httpx2.AsyncClient(transport=AsyncInProcessTransport(server), trust_env=False),
    )


class _Request:
    """One chat completion running on its own thread in llama.cpp's streaming mode. Its chunks
    (JSON bytes) go to `deliver` one by one, then `_END`; or, with `collect`, all at once as a
    list when it ends (no wake-up of the consumer per token). An exception that ends it is
    delivered instead. `stop()` cancels it at its next chunk."""

    def __init__(
        self,
        server: EmbeddedServer,
        body: dict,
        deliver: Callable[[Any], None],
        *,
        collect: bool,
    ):
        self._server = server
        self._body = json.dumps(_streaming_body(body), ensure_ascii=False).encode()
        self._deliver = deliver
        self._collected: list[bytes] | None = [] if collect else None
        self._stopped = threading.Event()
        # Not a daemon: a stopped request ends at its next token, and the interpreter must
        # not finalize while llama.cpp may still call back into it.
        self._thread = threading.Thread(target=self._run, name="homespun-embedded-request")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _on_chunk(self, chunk: bytes) -> bool:
        if self._stopped.is_set():
            return True
        if self._collected is not None:
            self._collected.append(chunk)
            return False
        try:
            self._deliver(chunk)
        except Exception:  # the consumer is gone (its event loop closed): stop decoding
            self._stopped.set()
            return True
        return False

    def _run(self) -> None:
        outcome: Any
        try:
            self._server.chat_raw(self._body, self._on_chunk)
        except BaseException as exc:  # handed to the consumer, which raises it
            outcome = exc
        else:
            outcome = self._collected if self._collected is not None else _END
        try:
            self._deliver(outcome)
        except Exception:
            pass  # nobody is waiting any more


def _parse(request: httpx2.Request) -> dict | httpx2.Response:
    """The request's JSON body, or the error response the HTTP server would give instead."""
    if request.method != "POST" or not request.url.path.endswith(_CHAT_PATH):
        return _error(404, f"{request.method} {request.url.path} is not served in-process")
    try:
        body = json.loads(request.content)
    except ValueError as exc:
        return _error(400, f"the request body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "the request body is not a JSON object")
    return body


def _streaming_body(body: dict) -> dict:
    if body.get("stream"):
        return body
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


def _timeout(request: httpx2.Request) -> float | None:
    """The SDK's read timeout: for a whole completion, or between two chunks of a stream
    (what it bounds over HTTP, where a completion is one read)."""
    read = (request.extensions.get("timeout") or {}).get("read")
    return float(read) if read is not None else None


def _timed_out(request: httpx2.Request, seconds: float | None) -> httpx2.ReadTimeout:
    return httpx2.ReadTimeout(
        f"the embedded engine did not answer within {seconds:g}s", request=request
    )


def _error(status: int, message: str, error_type: str = "invalid_request_error") -> httpx2.Response:
    return httpx2.Response(
        status, json={"error": {"code": status, "message": message, "type": error_type}}
    )


def _engine_error(chunk: dict) -> httpx2.Response | None:
    """llama.cpp's error reply (a request it rejects gets one, instead of a stream) as its HTTP
    server sends it; None for a normal chunk."""
    error = chunk.get("error")
    if error is None:
        return None
    status = error.get("code") if isinstance(error, dict) else None
    return httpx2.Response(status if isinstance(status, int) else 500, json=chunk)


def _outcome(item: Any, request: httpx2.Request, server: EmbeddedServer) -> Any:
    """What a request delivered, with an exception turned into what the HTTP client would
    have seen: a connection error for a closed engine, else a 500 response."""
    if not isinstance(item, BaseException):
        return item
    if isinstance(item, EngineError) and server.closed:  # as a port nobody listens on
        raise httpx2.ConnectError(str(item), request=request) from item
    if isinstance(item, Exception):
        return _error(500, str(item), "server_error")
    raise item


def _completion(chunks: Any) -> httpx2.Response:
    """The response to a request that does not stream, from all its chunks."""
    if isinstance(chunks, httpx2.Response):
        return chunks
    parsed = [json.loads(chunk) for chunk in chunks]
    for chunk in parsed:
        if (error := _engine_error(chunk)) is not None:
            return error
    return httpx2.Response(200, json=assemble_completion(parsed))


def _sse(chunk: bytes) -> bytes:
    return b"data: " + chunk + b"\n\n"


_DONE = b"data: [DONE]\n\n"
_EVENT_STREAM = {"content-type": "text/event-stream"}


def _stream_response(first: Any, call: _Request, events: Any) -> httpx2.Response:
    """The response to a streaming request once its first chunk came."""
    if isinstance(first, httpx2.Response):
        return first
    if first is _END:
        return httpx2.Response(200, headers=_EVENT_STREAM, content=_DONE)
    if (error := _engine_error(json.loads(first))) is not None:
        return error
    return httpx2.Response(200, headers=_EVENT_STREAM, stream=events)


# ------------------------------------------------------------------------------------ sync


class InProcessTransport(httpx2.BaseTransport):
    """httpx2 transport to `server`'s chat handler, for synchronous clients."""

    def __init__(self, server: EmbeddedServer):
        self._server = server

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        body = _parse(request)
        if isinstance(body, httpx2.Response):
            return body
        timeout = _timeout(request)
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        streaming = bool(body.get("stream"))
        call = _Request(self._server, body, items.put, collect=not streaming)

        def next_item() -> Any:
            try:
                item = items.get(timeout=timeout)
            except queue.Empty:
                raise _timed_out(request, timeout) from None
            return _outcome(item, request, self._server)

        try:
            if not streaming:
                return _completion(next_item())
            first = next_item()
            return _stream_response(first, call, _SyncEvents(first, call, next_item))
        except BaseException:  # interrupted, timed out: stop decoding for nobody
            call.stop()
            raise


class _SyncEvents(httpx2.SyncByteStream):
    """The events of one stream, once: iterated again (the openai SDK drains a stream after its
    [DONE], as an exhausted socket would be), it has nothing more."""

    def __init__(self, first: Any, call: _Request, next_item: Callable[[], Any]):
        self._first, self._call, self._next = first, call, next_item
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            return
        self._started = True
        try:
            item = self._first
            while item is not _END:
                if isinstance(item, httpx2.Response):  # the engine failed mid-stream
                    yield _sse(item.content)
                    break
                yield _sse(item)
                item = self._next()
            yield _DONE
        finally:
            self._call.stop()

    def close(self) -> None:
        self._call.stop()


# ----------------------------------------------------------------------------------- async


class AsyncInProcessTransport(httpx2.AsyncBaseTransport):
    """httpx2 transport to `server`'s chat handler, for asyncio clients: the request runs on
    its own thread, the event loop only waits for what it delivers."""

    def __init__(self, server: EmbeddedServer):
        self._server = server

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        body = _parse(request)
        if isinstance(body, httpx2.Response):
            return body
        timeout = _timeout(request)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        streaming = bool(body.get("stream"))
        call = _Request(
            self._server,
            body,
            lambda item: loop.call_soon_threadsafe(items.put_nowait, item),
            collect=not streaming,
        )

        async def next_item() -> Any:
            try:
                async with asyncio.timeout(timeout):
                    item = await items.get()
            except TimeoutError:
                raise _timed_out(request, timeout) from None
            return _outcome(item, request, self._server)

        try:
            if not streaming:
                return _completion(await next_item())
            first = await next_item()
            return _stream_response(first, call, _AsyncEvents(first, call, next_item))
        except BaseException:  # cancelled, timed out: stop decoding for nobody
            call.stop()
            raise


class _AsyncEvents(httpx2.AsyncByteStream):
    """The events of one stream, once (see _SyncEvents)."""

    def __init__(self, first: Any, call: _Request, next_item: Callable[[], Any]):
        self._first, self._call, self._next = first, call, next_item
        self._started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            return
        self._started = True
        try:
            item = self._first
            while item is not _END:
                if isinstance(item, httpx2.Response):  # the engine failed mid-stream
                    yield _sse(item.content)
                    break
                yield _sse(item)
                item = await self._next()
            yield _DONE
        finally:
            self._call.stop()

    async def aclose(self) -> None:
        self._call.stop()


# ------------------------------------------------------------------------------ assembling


def assemble_completion(chunks: list[dict]) -> dict:
    """The `chat.completion` that the chunks of a streamed one add up to: what llama.cpp
    answers the same request when it does not stream (content, reasoning and tool calls
    joined, the last finish reason, usage and timings)."""
    completion: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk:
                completion.setdefault(key, chunk[key])
        for key in ("usage", "timings"):
            if chunk.get(key) is not None:
                completion[key] = chunk[key]
        for choice in chunk.get("choices") or ():
            slot = choices.setdefault(
                choice.get("index", 0),
                {"content": [], "reasoning": [], "calls": {}, "finish": None, "logprobs": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                slot["content"].append(delta["content"])
            if delta.get("reasoning_content"):
                slot["reasoning"].append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                index = call.get("index", len(slot["calls"]))
                joined = slot["calls"].setdefault(
                    index, {"type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.get("id"):
                    joined["id"] = call["id"]
                function = call.get("function") or {}
                joined["function"]["name"] += function.get("name") or ""
                joined["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                slot["finish"] = choice["finish_reason"]
            if choice.get("logprobs"):
                logprobs = slot["logprobs"] = slot["logprobs"] or {"content": []}
                logprobs["content"].extend(choice["logprobs"].get("content") or ())
    completion["object"] = "chat.completion"
    completion["choices"] = []
    for index, slot in sorted(choices.items()):
        calls = [slot["calls"][i] for i in sorted(slot["calls"])]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(slot["content"]) if slot["content"] or not calls else None,
        }
        if slot["reasoning"]:
            message["reasoning_content"] = "".join(slot["reasoning"])
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"finish_reason": slot["finish"], "index": index}
        choice["message"] = message
        if slot["logprobs"] is not None:
            choice["logprobs"] = slot["logprobs"]
        completion["choices"].append(choice)
    return completion
