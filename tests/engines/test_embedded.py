"""The embedded llama.cpp engine with the real default model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from homespun.engines.embedded import EmbeddedServer, EngineError, get_embedded_server

pytestmark = pytest.mark.slow

HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "seed": 1}


@pytest.fixture(scope="module")
def server(model_path: Path) -> EmbeddedServer:
    return get_embedded_server(model_path, n_ctx=2048)


def test_chat_answers_in_process(server: EmbeddedServer):
    response = server.chat(HELLO)
    message = response["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"].strip()
    assert 0 < response["usage"]["completion_tokens"] <= 8


def test_error_responses_raise(server: EmbeddedServer):
    too_long = {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 4}
    with pytest.raises(EngineError) as err:
        server.chat(too_long)
    assert err.value.code == 400
    assert err.value.error_type == "exceed_context_size_error"
    with pytest.raises(EngineError, match="streaming"):
        server.chat({**HELLO, "stream": True})


def test_http_endpoint_serves_openai_clients_with_the_key(server: EmbeddedServer):
    assert urlsplit(server.base_url).hostname == "127.0.0.1"
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    reply = client.chat.completions.create(model="smollm2", **HELLO)
    assert reply.choices[0].message.content.strip()

    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=server.base_url, api_key=server.api_key, model="smollm2",
                      max_tokens=8, max_retries=0)  # fmt: skip
    assert chat.invoke("Say hello.").content.strip()


def test_http_endpoint_rejects_requests_without_the_key(server: EmbeddedServer):
    url = server.base_url + "/chat/completions"
    assert httpx.post(url, json=HELLO).status_code == 401
    assert httpx.post(url, json=HELLO, headers={"Authorization": "Bearer guess"}).status_code == 401
    stranger = openai.OpenAI(base_url=server.base_url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="smollm2", **HELLO)


def test_same_settings_share_one_server(server: EmbeddedServer, model_path: Path):
    cores = len(os.sched_getaffinity(0))
    assert get_embedded_server(model_path, n_ctx=2048) is server
    # threads=0 means "all cores", and another spelling of the path is the same file
    via_dotdot = model_path.parent / ".." / model_path.parent.name / model_path.name
    assert get_embedded_server(via_dotdot, n_ctx=2048, threads=cores) is server
    other = get_embedded_server(model_path, n_ctx=1024)
    try:
        assert other is not server and other.base_url != server.base_url
        assert other.api_key != server.api_key
    finally:
        other.close()


def test_close_stops_serving_and_next_ask_reloads(model_path: Path):
    first = get_embedded_server(model_path, n_ctx=512)
    url, key = first.base_url, first.api_key
    first.close()
    first.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        first.chat(HELLO)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=2)
    second = get_embedded_server(model_path, n_ctx=512)
    try:
        assert second is not first and second.chat(HELLO)["choices"]
    finally:
        second.close()


def test_every_parallel_slot_gets_the_full_context(model_path: Path):
    both = get_embedded_server(model_path, n_ctx=1024, parallel=2)
    try:
        long = {"messages": [{"role": "user", "content": "word " * 900}], "max_tokens": 2}
        assert both.chat(long)["usage"]["prompt_tokens"] > 900  # > n_ctx / parallel
    finally:
        both.close()


@pytest.mark.timeout(180, method="thread")  # a hang in a native join ignores signals
def test_closing_a_just_loaded_server_does_not_hang(model_path: Path):
    # xllamacpp's loop thread may not have started when Server() returns; freeing the server
    # in that window used to hang the process forever.
    for _ in range(8):
        get_embedded_server(model_path, n_ctx=256).close()


def test_load_failure_names_the_file(model_path: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.gguf"
    with model_path.open("rb") as f:
        truncated.write_bytes(f.read(1_000_000))
    log = tmp_path / "logs" / "engine.log"
    with pytest.raises(EngineError) as err:
        get_embedded_server(truncated, log_file=log)
    assert str(truncated) in str(err.value)
    assert "failed to load model" in str(err.value)  # llama.cpp's reason, from the child
    assert "failed to read" in log.read_text()

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(EngineError, match="not a GGUF file"):
        get_embedded_server(not_gguf)
    with pytest.raises(EngineError, match="does not exist"):
        get_embedded_server(tmp_path / "absent.gguf")


def test_llama_cpp_stays_quiet(model_path: Path, tmp_path: Path):
    """A CLI user sees none of llama.cpp's log lines: not on load, not per request, not at
    exit. Run in a child process to see its real stderr."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from homespun.engines.embedded import get_embedded_server, shutdown_embedded_servers
        server = get_embedded_server(Path({str(model_path)!r}), n_ctx=512,
                                     log_file=Path({str(tmp_path / "engine.log")!r}))
        print(server.chat({HELLO!r})["choices"][0]["message"]["content"])
        shutdown_embedded_servers()
        print("closed", server.closed)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    assert child.stdout.strip().endswith("closed True")
    assert "loaded" in (tmp_path / "engine.log").read_text()
