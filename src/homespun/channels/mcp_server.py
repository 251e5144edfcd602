"""The homespun assistant itself as an MCP server, for Claude Desktop, Cursor, VS Code, ...

Three tools: `ask` (a run of the assistant of the *current* spec, one conversation thread per
MCP client session), `search_memory` and `give_feedback`. Every run leaves a trace with
source "mcp", and `ask` ends its answer with the trace id so the user can rate it.

Served over stdio (`serve_stdio`, what desktop clients start) or streamable HTTP
(`serve_http`), which requires `Authorization: Bearer <token>`; the token lives in
HOMESPUN_HOME/mcp_token (mode 0600). Inputs are data: a question goes to the model as a
user message, a query to full-text search, a trace id to a lookup; nothing here runs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import fastmcp
from fastmcp import Context
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, AuthProvider, TokenVerifier
from pydantic import Field

from homespun.spec import Settings, Spec, SpecError, load_spec
from homespun.stores.memory import MemoryStore

__all__ = [
    "DEFAULT_HTTP_PORT",
    "HttpEndpoint",
    "RemoteBindRefused",
    "create_assistant_server",
    "ensure_token",
    "http_endpoint",
    "is_loopback",
    "serve_http",
    "serve_stdio",
    "thread_id_for_session",
    "token_path",
]

DEFAULT_HTTP_PORT = 8765
MCP_PATH = "/mcp"
SEARCH_MEMORY_MAX_LIMIT = 50
_TOKEN_FILE = "mcp_token"

_INSTRUCTIONS = (
    "homespun is the user's personal assistant, with its own tools (calculator, memory, "
    "workspace files, clock). Use `ask` to hand it a question; the conversation continues "
    "across calls of this session. Each answer ends with '(trace ID)'; pass that ID to "
    "`give_feedback` when the user rates an answer."
)


# --------------------------------------------------------------------------- the server


def thread_id_for_session(session_id: str) -> str:
    """A stable conversation-thread id for one MCP client session (same session, same id)."""
    return "mcp-" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:16]


def create_assistant_server(
    settings: Settings, *, auth: AuthProvider | None = None
) -> fastmcp.FastMCP:
    """The "homespun" MCP server: `ask`, `search_memory` and `give_feedback`.

    `auth` guards the HTTP transports (see `http_endpoint`); stdio needs none.
    """
    server = fastmcp.FastMCP("homespun", instructions=_INSTRUCTIONS, auth=auth)
    # Two asks on one thread at once would interleave their checkpoints; runs of one
    # session queue, different sessions run side by side. Weak values: a finished
    # session's lock goes away with its last waiter.
    thread_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @server.tool(
        description=(
            "Ask the homespun assistant. It answers with its own tools and remembers the "
            "conversation of this session. The answer ends with '(trace ID)'."
        )
    )
    async def ask(
        question: Annotated[str, Field(description="The question or request, in plain words.")],
        ctx: Context,
    ) -> str:
        from homespun.graphs.runner import run_assistant

        if not question.strip():
            raise ToolError("the question is empty; ask something")
        spec = _current_spec(settings)  # per call: spec edits take effect on the next ask
        thread_id = thread_id_for_session(ctx.session_id)
        lock = thread_locks.get(thread_id)
        if lock is None:
            lock = thread_locks[thread_id] = asyncio.Lock()
        async with lock:
            result = await run_assistant(
                spec, settings, question, thread_id=thread_id, source="mcp"
            )
        trace = result.trace
        if trace.status != "ok":
            raise ToolError(
                f"the assistant run failed (trace {trace.id}): {trace.error or 'unknown error'}"
            )
        return f"{trace.final_answer or ''}\n\n(trace {trace.id})"

    @server.tool(
        description=(
            "Search the user's saved memories (facts the assistant was told) by keywords. "
            "Returns one memory per line, best match first."
        )
    )
    def search_memory(
        query: Annotated[str, Field(description="Keywords, e.g. 'dentist appointment'.")],
        limit: Annotated[
            int, Field(ge=1, le=SEARCH_MEMORY_MAX_LIMIT, description="At most this many memories.")
        ] = 5,
    ) -> str:
        hits = MemoryStore(settings.memory_db).search(query, limit=limit)
        if not hits:
            return f"No memory matches {query!r}."
        lines = []
        for hit in hits:
            tags = f" (tags: {hit.tags})" if hit.tags else ""
            lines.append(f"[{hit.id}] {hit.text}{tags}")
        return "\n".join(lines)

    @server.tool(
        description=(
            "Record the user's rating of an answer of `ask`: value is 'up', 'down' or a "
            "number from 0 to 1; trace_id is the ID printed after the answer."
        )
    )
    def give_feedback(
        trace_id: Annotated[str, Field(description="The trace ID (or a unique prefix).")],
        value: Annotated[str, Field(description="'up', 'down', or a number from 0 to 1.")],
    ) -> str:
        from homespun.stores.traces import TraceStore, parse_feedback

        try:
            score = parse_feedback(value)
        except ValueError as exc:
            raise ToolError(f"{exc.args[0]}; use 'up', 'down' or a number such as 0.7") from None
        try:
            TraceStore(settings.traces_db).set_feedback(trace_id.strip(), score)
        except KeyError as exc:
            raise ToolError(f"{exc.args[0]}; use the ID printed after an answer of `ask`") from None
        return f"feedback {score:g} recorded for trace {trace_id.strip()}"

    return server


def _current_spec(settings: Settings) -> Spec:
    path = settings.spec_path
    if not path.exists():
        raise ToolError(f"no spec at {path}; run `homespun init` (or `homespun quickstart`)")
    try:
        return load_spec(path)
    except SpecError as exc:
        raise ToolError(f"the spec is invalid, fix it and ask again: {exc}") from None


# --------------------------------------------------------------------------- stdio


def serve_stdio(settings: Settings) -> None:
    """Serve over stdin/stdout until the client closes it (what desktop clients start)."""
    create_assistant_server(settings).run(transport="stdio", show_banner=False)


# --------------------------------------------------------------------------- HTTP


class RemoteBindRefused(ValueError):
    """A non-loopback address was asked for without `allow_remote`."""


def token_path(settings: Settings) -> Path:
    return settings.home.expanduser() / _TOKEN_FILE


def ensure_token(settings: Settings) -> str:
    """The HTTP bearer token, created on first use in HOMESPUN_HOME/mcp_token (mode 0600).

    A token file that others could read is treated as leaked: it is replaced by a new token.
    """
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        token = _read_private_token(path)
    except FileNotFoundError:
        token = None
    if token:
        return token
    token = secrets.token_urlsafe(32)
    if not path.exists():
        try:
            _write_new_private(path, token)
            return token
        except FileExistsError:  # another process made it first: use theirs
            existing = _read_private_token(path)
            if existing:
                return existing
    # Unreadable-by-policy or empty: replace atomically with a fresh private file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    _write_new_private(tmp, token)
    os.replace(tmp, path)
    return token


def _read_private_token(path: Path) -> str | None:
    """The token in `path`, or None when it is empty or readable by others."""
    with open(path, encoding="utf-8") as fh:
        if os.name != "nt" and stat.S_IMODE(os.fstat(fh.fileno()).st_mode) & 0o077:
            return None
        return fh.read().strip() or None


def _write_new_private(path: Path, text: str) -> None:
    # O_EXCL + 0o600 at creation: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class _BearerTokenVerifier(TokenVerifier):
    """Accepts exactly one token, compared in constant time."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode("utf-8")

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode("utf-8"), self._token):
            return None
        return AccessToken(token=token, client_id="homespun-user", scopes=[])


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HttpEndpoint:
    """What `serve_http` serves: the ASGI app, its URL and where the token is kept."""

    app: object
    url: str
    token_path: Path
    host: str
    port: int


def http_endpoint(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    *,
    allow_remote: bool = False,
) -> HttpEndpoint:
    """Build the bearer-protected streamable-HTTP app (no socket is opened here)."""
    if not is_loopback(host) and not allow_remote:
        raise RemoteBindRefused(
            f"refusing to listen on {host}: it is reachable from other machines, and anyone "
            "who can reach it and holds the token can run your assistant (with your files "
            "and memories) over plain, unencrypted HTTP. Use 127.0.0.1, or pass "
            "--allow-remote (allow_remote=True) behind a TLS proxy you trust."
        )
    token = ensure_token(settings)
    server = create_assistant_server(settings, auth=_BearerTokenVerifier(token))
    app = server.http_app(path=MCP_PATH, transport="http")
    shown = f"[{host}]" if ":" in host else host
    return HttpEndpoint(
        app=app,
        url=f"http://{shown}:{port}{MCP_PATH}",
        token_path=token_path(settings),
        host=host,
        port=port,
    )


def serve_http(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    *,
    allow_remote: bool = False,
    on_ready: Callable[[HttpEndpoint], None] | None = None,
) -> None:
    """Serve streamable HTTP at http://host:port/mcp until interrupted.

    Every request needs `Authorization: Bearer <token>` (HOMESPUN_HOME/mcp_token); others
    get 401. Raises RemoteBindRefused for a non-loopback host unless `allow_remote`.
    """
    import uvicorn

    endpoint = http_endpoint(settings, host, port, allow_remote=allow_remote)
    if on_ready is not None:
        on_ready(endpoint)
    uvicorn.run(endpoint.app, host=host.strip("[]"), port=port, log_level="warning", lifespan="on")
