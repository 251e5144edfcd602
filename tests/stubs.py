"""One recording HTTP stub on loopback, for the tests that drive real client libraries.

The OpenAI, Anthropic and Slack SDKs are exercised over real HTTP against `RecordingStub`
(several of them use httpx2 or aiohttp, which respx does not patch). The stub listens on
127.0.0.1 on a free port, records every request (method, path, headers, raw body, parsed
JSON) and answers each one with, in this order:

1. the next entry of `replies` (a queue the test fills), else
2. `handler(request)`, else
3. HTTP 500 naming the unexpected request (so a test that forgot a reply fails visibly).

A reply is a `Reply`, a JSON-able dict/list (status 200), or a `(status, dict)` pair.
Get a started one from the `http_stub` fixture (tests/conftest.py) or `with RecordingStub()`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "Reply",
    "RecordedRequest",
    "RecordingStub",
    "anthropic_message",
    "anthropic_text",
    "anthropic_tool_use",
    "chat_api",
    "chat_completion",
    "sse",
]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    raw: str

    @cached_property
    def json(self) -> Any:
        """The body parsed as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, str]:
        """The body as a form (application/x-www-form-urlencoded), one value per key."""
        return {k: v[0] for k, v in parse_qs(self.raw).items()}


@dataclass(frozen=True)
class Reply:
    body: Any = None  # dict/list: sent as JSON; str/bytes: sent as they are
    status: int = 200
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Handler = Callable[[RecordedRequest], "Reply | dict | list | tuple[int, Any]"]


def _as_reply(value: Any) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, tuple):
        status, body = value
        return Reply(body, status)
    return Reply(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping (delay_s) never blocks shutdown

    def handle_error(self, request, client_address) -> None:  # a client that hung up
        pass


@dataclass
class RecordingStub:
    """A loopback HTTP server that records requests and replays canned replies."""

    handler: Handler | None = None
    replies: list[Any] = field(default_factory=list)
    delay_s: float = 0.0  # wait this long before answering (client timeouts)
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    bodies: list[Any] = field(default_factory=list, init=False)  # requests' JSON, in order
    _server: _Server | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> RecordingStub:
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                stub._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), _Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RecordingStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        return self.base_url + path

    # ------------------------------------------------------------------ serving

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        request = RecordedRequest(
            method=http.command,
            path=http.path,
            headers={k.lower(): v for k, v in http.headers.items()},
            raw=_read_body(http).decode(errors="replace"),
        )
        self.requests.append(request)
        self.bodies.append(request.json)
        reply = self._reply_for(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        data = reply.encoded()
        try:
            http.send_response(reply.status)
            http.send_header("Content-Type", reply.content_type)
            http.send_header("Content-Length", str(len(data)))
            http.end_headers()
            http.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def _reply_for(self, request: RecordedRequest) -> Reply:
        if self.replies:
            return _as_reply(self.replies.pop(0))
        if self.handler is not None:
            return _as_reply(self.handler(request))
        return Reply(
            {"error": {"message": f"stub: no reply for {request.method} {request.path}"}}, 500
        )


def _read_body(http: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (http.headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while size := int(http.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(http.rfile.read(size))
            http.rfile.readline()
        http.rfile.readline()
        return b"".join(chunks)
    return http.rfile.read(int(http.headers.get("Content-Length") or 0))


# --------------------------------------------------------------------------- canned replies


def chat_completion(
    content: str | None,
    *,
    model: str = "x",
    finish_reason: str = "stop",
    usage: tuple[int, int] = (3, 2),
    tool_calls: list | None = None,
    id: str = "x",
    created: int = 0,
) -> dict:
    """An OpenAI chat.completion body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def anthropic_message(
    content: list[dict],
    *,
    model: str = "some-model",
    stop_reason: str = "end_turn",
    usage: tuple[int, int] = (3, 2),
    id: str = "m",
    **extra: Any,
) -> dict:
    """An Anthropic Messages API body."""
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        **extra,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def anthropic_tool_use(
    name: str, args: dict, usage: tuple[int, int] = (3, 2), *, model: str = "claude-opus-4-6"
) -> dict:
    """An Anthropic reply that calls tool `name` with `args`."""
    return anthropic_message(
        [{"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": args}],
        model=model,
        stop_reason="tool_use",
        usage=usage,
        id=f"msg_{name}",
        stop_sequence=None,
    )


def anthropic_text(
    text: str, usage: tuple[int, int] = (3, 2), *, model: str = "claude-opus-4-6"
) -> dict:
    """An Anthropic reply of one text block."""
    return anthropic_message(
        [{"type": "text", "text": text}], model=model, usage=usage, id="msg_t", stop_sequence=None
    )


def sse(events: Iterable[dict]) -> Reply:
    """A server-sent-events stream of JSON events, ended by OpenAI's `[DONE]`."""
    payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return Reply(payload, content_type="text/event-stream")


def chat_api(answer: str = "pong") -> Handler:
    """A handler that answers every chat request with `answer`: OpenAI-style chat completions
    get the constrained-JSON reply `{"answer": answer}` (echoing the requested model),
    Anthropic's /v1/messages a plain text block."""

    def handle(request: RecordedRequest) -> dict:
        body = request.json or {}
        if request.path.endswith("/messages"):
            return anthropic_message([{"type": "text", "text": answer}])
        return chat_completion(json.dumps({"answer": answer}), model=body.get("model", "x"))

    return handle


class EmbeddedStub:
    """Stands in for `engines.embedded.EmbeddedServer` where llama.cpp itself is not loaded:
    homespun's chat model reaches it through the in-process transport (`chat_raw`, always a
    streaming request), and it answers every request with the constrained-JSON reply
    `{"answer": answer}`, recording each request body in `bodies`. With `reply`, the text of
    each reply is `reply(body)` instead; an exception it raises is the engine's failure."""

    base_url = "http://embedded.invalid/v1"
    api_key = "not-used-in-process"
    closed = False

    def __init__(
        self,
        answer: str = "pong",
        bodies: list[dict] | None = None,
        reply: Callable[[dict], str] | None = None,
    ):
        self.answer = answer
        self.bodies: list[dict] = [] if bodies is None else bodies
        self.reply = reply

    def chat_raw(self, request: bytes | dict, on_chunk) -> None:
        body = json.loads(request) if isinstance(request, bytes | str) else dict(request)
        self.bodies.append(body)
        model = body.get("model", "x")

        def chunk(delta: dict | None, finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            choices = [] if delta is None else [choice]
            return json.dumps(
                {
                    "id": "x",
                    "created": 0,
                    "model": model,
                    "object": "chat.completion.chunk",
                    "choices": choices,
                    **extra,
                }  # fmt: skip
            ).encode()

        text = self.reply(body) if self.reply else json.dumps({"answer": self.answer})
        for piece in (
            chunk({"role": "assistant", "content": text}),
            chunk({}, finish="stop"),
            chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        ):
            if on_chunk(piece):
                return
