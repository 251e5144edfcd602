"""The embedded engine: llama.cpp's server, in-process, through xllamacpp.

One `xllamacpp.Server` per (model, LoRA adapters, context, threads, slots, log file) per
process, shared by everything that asks for it. It answers two ways: `EmbeddedServer.chat` and
`chat_raw` call the server's chat handler directly (no HTTP), and `base_url` serves the
OpenAI-compatible HTTP API on 127.0.0.1 for other clients; that port requires `api_key`, a
random secret of this process, so other local users cannot borrow the model. homespun's own
chat model (`langchain_openai.ChatOpenAI`) takes the first way too, through the httpx2
transports of `engines.in_process`.

llama.cpp logs through one process-wide logger whose threshold is set by whichever server
was created last, and it always echoes to stderr. So every server here is created with
verbosity 0, which silences it completely; when a load fails, the failure is re-run in a
child process with logging on, to name the reason (and write the whole log to ``log_file``).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedServer", "EngineError", "get_embedded_server", "shutdown_embedded_servers"]

# llama.cpp's prompt cache for idle slots defaults to 8 GiB of RAM; a personal machine that
# also runs the agent, its tools and perhaps training should not give it that much.
_PROMPT_CACHE_MIB = 512
_DIAGNOSE_TIMEOUT_S = 120
_GGUF_MAGIC = b"GGUF"


class EngineError(RuntimeError):
    """The embedded engine failed: a model that does not load, or an error response."""

    def __init__(self, message: str, *, code: int | None = None, error_type: str | None = None):
        super().__init__(message)
        self.code = code
        """HTTP-style status of an error response (400 for a request too long), if any."""
        self.error_type = error_type
        """llama.cpp's error type, e.g. ``exceed_context_size_error``."""


@dataclass(frozen=True)
class _ServerKey:
    model_path: Path
    n_ctx: int
    threads: int
    parallel: int
    log_file: Path | None
    adapters: tuple[tuple[Path, float], ...] = ()


class EmbeddedServer:
    """A loaded model served by llama.cpp inside this process."""

    base_url: str
    """OpenAI-compatible root, e.g. ``http://127.0.0.1:PORT/v1``."""
    api_key: str
    """Bearer key the HTTP endpoint requires."""
    model_path: Path
    n_ctx: int
    """Context of one request: each of the ``parallel`` slots has this much."""
    threads: int
    parallel: int
    adapters: tuple[tuple[Path, float], ...]
    """LoRA adapters (GGUF path, scale) applied to every request that does not say otherwise."""

    def __init__(self, key: _ServerKey, server: Any, api_key: str):
        self._key = key
        self._server = server
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.api_key = api_key
        self.base_url = server.listening_address.rstrip("/") + "/v1"
        self.model_path = key.model_path
        self.n_ctx = key.n_ctx
        self.threads = key.threads
        self.parallel = key.parallel
        self.adapters = key.adapters

    @property
    def closed(self) -> bool:
        return self._server is None

    def chat(self, request: dict) -> dict:
        """One OpenAI-style chat completion (non-streaming), answered in-process.

        Raises EngineError for a request the server rejects or answers with an error.
        Safe to call from several threads: up to ``parallel`` requests decode together.
        """
        server = self._usable()
        try:
            response = server.handle_chat_completions(request)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise EngineError(f"embedded engine rejected the request: {exc}") from exc
        if not isinstance(response, dict):
            raise EngineError(f"embedded engine returned {type(response).__name__}, not a dict")
        error = response.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise EngineError(
                    f"embedded engine error: {error.get('message', error)}",
                    code=error.get("code"),
                    error_type=error.get("type"),
                )
            raise EngineError(f"embedded engine error: {error}")
        return response

    def chat_raw(self, request: dict | bytes, on_chunk: Callable[[Any], bool]) -> None:
        """llama.cpp's chat handler itself: each piece of the reply goes to ``on_chunk``.

        A streaming request's chunks come one by one (``data:`` payloads, without the
        ``[DONE]`` marker); anything else comes as one piece, the completion or the error
        (``{"error": {...}}``). A dict request gives dict pieces, JSON bytes give bytes.
        ``on_chunk`` returning True stops the request: llama.cpp cancels it, as it does when
        an HTTP client hangs up. It runs on the calling thread, which this call blocks; an
        exception it raises is swallowed by xllamacpp and stops the request. Raises
        EngineError for a closed server or a request the server cannot read.
        """
        server = self._usable()
        try:
            server.handle_chat_completions(request, on_chunk)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise EngineError(f"embedded engine rejected the request: {exc}") from exc

    def _usable(self) -> Any:
        server = self._server  # a local reference keeps it alive if close() races us
        if server is None:
            raise EngineError(f"the embedded server for {self.model_path.name} is closed")
        if os.getpid() != self._pid:  # its threads stayed in the parent: a request would hang
            raise EngineError(
                f"the embedded server for {self.model_path.name} was loaded before this "
                "process forked; load the model again in this process"
            )
        return server

    def close(self) -> None:
        """Stop serving and free the model (idempotent); a later ask loads it again."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        with _cache_lock:
            if _cache.get(self._key) is self:
                del _cache[self._key]
        del server  # xllamacpp stops its HTTP listener and main loop on deallocation

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.base_url
        return f"EmbeddedServer({self.model_path.name!r}, n_ctx={self.n_ctx}, {state})"


_cache: dict[_ServerKey, EmbeddedServer] = {}
_cache_lock = threading.Lock()
_cache_pid = os.getpid()
# Servers inherited through fork(): their threads did not survive, so they can be neither
# used nor destroyed (destroying joins threads that do not exist). Kept to never be freed.
_orphans: list[EmbeddedServer] = []


def get_embedded_server(
    model_path: Path,
    *,
    n_ctx: int = 4096,
    threads: int = 0,
    parallel: int = 1,
    log_file: Path | None = None,
    adapters: tuple[tuple[str, float], ...] = (),
) -> EmbeddedServer:
    """The process-wide server for these settings, loading the model on first ask.

    ``threads=0`` uses every core this process may run on. llama.cpp's threads spin while
    decoding, so two processes that each take all cores slow each other down many times
    over: give a concurrent job (training, a second engine) its own share instead.
    ``n_ctx`` is the context of one request; with ``parallel`` slots the KV cache holds
    ``n_ctx * parallel`` tokens. ``log_file``, when given, gets a line per load and
    llama.cpp's own log of a failed load. ``adapters`` are GGUF LoRA files with their
    scales, applied in order to every request (a request may override the scales with
    llama.cpp's ``lora`` field, e.g. ``[{"id": 0, "scale": 0.0}]`` for the base model).
    """
    global _cache_pid
    key = _ServerKey(
        model_path=Path(model_path).expanduser().resolve(),
        n_ctx=int(n_ctx),
        threads=_resolve_threads(threads),
        parallel=int(parallel),
        log_file=Path(log_file).expanduser().resolve() if log_file is not None else None,
        adapters=tuple(
            (Path(path).expanduser().resolve(), float(scale)) for path, scale in adapters
        ),
    )
    if key.n_ctx < 1 or key.parallel < 1 or key.threads < 1:
        raise ValueError(f"n_ctx, threads and parallel must be positive, got {key}")
    with _cache_lock:
        if _cache_pid != os.getpid():
            _orphans.extend(_cache.values())
            _cache.clear()
            _cache_pid = os.getpid()
        server = _cache.get(key)
        if server is None:
            server = _load(key)
            _cache[key] = server
        return server


def shutdown_embedded_servers() -> None:
    """Close every embedded server of this process (also run at interpreter exit)."""
    with _cache_lock:
        servers = list(_cache.values()) if _cache_pid == os.getpid() else []
    for server in servers:
        server.close()


atexit.register(shutdown_embedded_servers)


def _resolve_threads(threads: int) -> int:
    if threads > 0:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _params(key: _ServerKey, api_key: str) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(key.model_path)
    # llama.cpp splits n_ctx evenly between slots; ours is per request, as the spec means it.
    # (A unified KV cache instead lets concurrent long requests fail each other mid-decode.)
    params.n_ctx = key.n_ctx * key.parallel
    params.n_parallel = key.parallel
    params.cpuparams.n_threads = key.threads
    params.cpuparams_batch.n_threads = key.threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address tells which
    params.api_keys = [api_key]
    params.ui = False
    params.endpoint_metrics = True  # see _wait_for_main_loop; behind the API key like the rest
    params.warmup = False  # a warm-up decode costs more than it saves for one user
    params.cache_ram_mib = _PROMPT_CACHE_MIB
    params.verbosity = 0  # silent: see the module docstring
    if key.adapters:
        params.lora_adapters = [
            xllamacpp.CommonAdapterLoraInfo(str(path), scale) for path, scale in key.adapters
        ]
    return params


def _load(key: _ServerKey) -> EmbeddedServer:
    import xllamacpp

    _check_file(key.model_path)
    for path, _ in key.adapters:
        _check_file(path, what="LoRA adapter")
    api_key = secrets.token_urlsafe(32)
    started = time.perf_counter()
    try:
        server = xllamacpp.Server(_params(key, api_key))
    except RuntimeError as exc:
        raise EngineError(_diagnose(key)) from exc
    _wait_for_main_loop(server)
    _log(
        key.log_file,
        f"loaded {key.model_path} in {time.perf_counter() - started:.2f}s "
        f"(n_ctx={key.n_ctx}, threads={key.threads}, parallel={key.parallel}"
        + "".join(f", lora={path}@{scale:g}" for path, scale in key.adapters)
        + ") "
        f"at {server.listening_address}",
    )
    return EmbeddedServer(key, server, api_key)


def _wait_for_main_loop(server: Any) -> None:
    """Return once the server's task loop runs, so that it can be stopped.

    `xllamacpp.Server()` returns before its loop thread enters llama.cpp's `start_loop()`,
    which begins by setting `running = true`. Freed in that window, the server's destructor
    calls `terminate()` first, the loop then sets `running` back, never exits, and the
    destructor's join hangs the process (seen in tests that close a server just loaded).
    A metrics request is a cheap task that only a running loop answers.
    """
    reply = server.handle_metrics()
    if "not_supported" in reply[:200]:  # metrics disabled: fall back to a one-token chat
        server.handle_chat_completions(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        )


def _check_file(path: Path, what: str = "model") -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise EngineError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise EngineError(f"{what} file {path} cannot be read: {exc}") from exc
    if magic != _GGUF_MAGIC:
        raise EngineError(f"{what} file {path} is not a GGUF file (it starts with {magic!r})")


_DIAGNOSE_SCRIPT = """
import json, sys, xllamacpp
a = json.loads(sys.argv[1])
p = xllamacpp.CommonParams()
p.model.path = a["model"]; p.n_ctx = a["n_ctx"] * a["parallel"]; p.n_parallel = a["parallel"]
p.cpuparams.n_threads = a["threads"]; p.cpuparams_batch.n_threads = a["threads"]
p.hostnames = ["127.0.0.1"]; p.port = 0; p.api_keys = ["diagnose"]; p.ui = False
p.warmup = False; p.verbosity = 2
p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(path, s) for path, s in a["adapters"]]
try:
    xllamacpp.Server(p)
except RuntimeError:
    sys.exit(1)
"""


def _diagnose(key: _ServerKey) -> str:
    """Why the model failed to load: the load again in a child process with llama.cpp's
    warnings and errors on (in-process they would be echoed to the user's terminal)."""
    head = f"llama.cpp could not load the model {key.model_path}"
    if key.adapters:
        head += " with the LoRA adapter(s) " + ", ".join(str(path) for path, _ in key.adapters)
    args = json.dumps(
        {
            "model": str(key.model_path),
            "n_ctx": key.n_ctx,
            "parallel": key.parallel,
            "threads": key.threads,
            "adapters": [[str(path), scale] for path, scale in key.adapters],
        }
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", _DIAGNOSE_SCRIPT, args],
            capture_output=True,
            text=True,
            timeout=_DIAGNOSE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{head} (no diagnosis: {exc})"
    log = child.stderr.strip()
    _log(key.log_file, f"failed to load {key.model_path}; llama.cpp says:\n{log}")
    errors = [_strip_prefix(line) for line in log.splitlines() if " E " in line[:20]]
    # llama.cpp repeats itself (it tries once to fit memory, once to load): keep each reason
    # once, and drop the fitting attempt, which only echoes the loader's error.
    errors = [e for e in errors if not e.startswith("common_fit_params")]
    reasons = list(dict.fromkeys(errors))[:5]
    if not reasons:
        return f"{head} (llama.cpp logged no error; n_ctx={key.n_ctx} may exceed memory)"
    where = f"; full log in {key.log_file}" if key.log_file is not None else ""
    return f"{head}{where}:\n  " + "\n  ".join(reasons)


def _strip_prefix(line: str) -> str:
    # "0.00.005.606 E gguf_init_from_file: failed ..." -> "gguf_init_from_file: failed ..."
    parts = line.split(" ", 2)
    return parts[2] if len(parts) == 3 and parts[1] == "E" else line


def _log(log_file: Path | None, message: str) -> None:
    if log_file is None:
        return
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {message}\n")
    except OSError:
        pass  # a log that cannot be written must not stop the engine
