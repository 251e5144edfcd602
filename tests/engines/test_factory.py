"""Every generation field of the spec reaches the backend, through the real client libraries."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from homespun.engines.factory import EngineConfigError, build_chat_model, unsupported_fields
from homespun.engines.testing import ScriptedChatModel
from homespun.graphs.runner import run_assistant
from homespun.spec import Spec
from homespun.stores.traces import TraceStore
from tests.stubs import chat_api


def _spec(backend: str, **engine) -> Spec:
    spec = Spec()
    spec.intelligence.model = "some-model"
    spec.intelligence.temperature = 0.3
    spec.intelligence.top_p = 0.8
    spec.intelligence.top_k = 17
    spec.intelligence.max_tokens = 99
    spec.intelligence.repeat_penalty = 1.3
    spec.intelligence.seed = 7
    spec.engine = spec.engine.model_validate(
        {**spec.engine.model_dump(), "backend": backend, **engine}
    )
    return spec


@pytest.fixture
def openai_stub(http_stub):
    """(base URL, recorded requests) of a loopback stand-in for OpenAI-style and Anthropic
    HTTP APIs (their SDKs use httpx2, which respx does not patch)."""
    http_stub.handler = chat_api("pong")
    return http_stub.url("/v1"), http_stub.requests


def test_openai_compatible_request_carries_every_generation_field(settings, openai_stub):
    url, requests = openai_stub
    model = build_chat_model(_spec("openai_compatible", base_url=url), settings)
    reply = model.invoke("ping")
    assert reply.content == "pong"
    body = requests[0].json
    assert body["model"] == "some-model"
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    assert (body["temperature"], body["top_p"], max_tokens, body["seed"]) == (0.3, 0.8, 99, 7)
    assert (body["top_k"], body["repeat_penalty"]) == (17, 1.3)
    assert body["response_format"]["type"] == "json_schema"  # constrained_json by default


def test_openai_backend_uses_the_key_from_the_named_env_var(settings, openai_stub, monkeypatch):
    url, requests = openai_stub
    monkeypatch.setenv("MY_OPENAI_KEY", "sk-test-123")
    spec = _spec("openai", base_url=url, api_key_env="MY_OPENAI_KEY", tool_call_format="native")
    build_chat_model(spec, settings).invoke("ping")
    assert requests[0].headers["authorization"] == "Bearer sk-test-123"
    assert "top_k" not in requests[0].json  # OpenAI's API has no top_k ...
    assert unsupported_fields(spec) == ("top_k", "repeat_penalty")  # ... and we say so


def test_openai_without_key_is_a_clear_error(settings, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EngineConfigError, match="OPENAI_API_KEY"):
        build_chat_model(_spec("openai", tool_call_format="native"), settings)


@respx.mock
def test_ollama_request_carries_every_generation_field(settings):
    route = respx.post("http://127.0.0.1:11434/api/chat").mock(
        return_value=httpx.Response(
            200,
            json={
                "model": "some-model",
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": '{"answer": "pong"}'},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 2,
            },
        )
    )
    spec = _spec("ollama", base_url="http://127.0.0.1:11434", context_length=2048, threads=3)
    assert build_chat_model(spec, settings).invoke("ping").content == "pong"
    body = json.loads(route.calls[0].request.content)
    opts = body["options"]
    assert (
        opts["temperature"],
        opts["top_p"],
        opts["top_k"],
        opts["num_predict"],
        opts["repeat_penalty"],
        opts["seed"],
        opts["num_ctx"],
        opts["num_thread"],
    ) == (0.3, 0.8, 17, 99, 1.3, 7, 2048, 3)
    assert body["format"]["anyOf"]  # the constrained-json schema goes in Ollama's `format`


def test_anthropic_request_carries_its_generation_fields(settings, openai_stub, monkeypatch):
    url, requests = openai_stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    spec = _spec("anthropic", tool_call_format="native", base_url=url.removesuffix("/v1"))
    assert build_chat_model(spec, settings).invoke("ping").content == "pong"
    body = requests[0].json
    assert requests[0].path == "/v1/messages"
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (
        0.3,
        0.8,
        17,
        99,
    )
    # anthropic 2.x sends the key as a bearer token, 1.x as x-api-key
    headers = requests[0].headers
    assert "sk-ant-test" in (
        headers.get("x-api-key"),
        headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert unsupported_fields(spec) == ("seed", "repeat_penalty")


async def test_engine_that_is_down_yields_an_error_trace(settings):
    # nothing listens on port 9 of loopback
    spec = _spec("openai_compatible", base_url="http://127.0.0.1:9/v1", timeout_s=5)
    res = await run_assistant(spec, settings, "hello?")
    assert res.trace.status == "error"
    assert "Connection" in res.trace.error
    row = TraceStore(settings.traces_db).get(res.trace.id)
    assert row.status == "error" and row.query == "hello?"


def test_scripted_model_is_a_chat_model():
    assert ScriptedChatModel(script=["x"]).invoke("hi").content == "x"
