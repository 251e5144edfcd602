"""One chat model per spec, whatever the backend.

Every generation field of `[intelligence]` is passed to the backend under the name that
backend uses. A few backends have no equivalent for a field (OpenAI's API has no top_k or
repeat_penalty; Anthropic's has no seed or repeat penalty): those are listed by
`unsupported_fields` so the CLI can say so instead of pretending they took effect.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from homespun.spec import Settings, Spec

from .providers import build_provider_model
from .tool_calls import ToolCallingChatModel

# Fields each backend cannot express, and why the CLI shows a note about them.
_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "embedded": (),
    "openai_compatible": (),
    "ollama": (),
    "openai": ("top_k", "repeat_penalty"),
    "anthropic": ("seed", "repeat_penalty"),
}


# Backends that can apply intelligence.adapters: the embedded engine loads them itself; an
# openai_compatible server (llama-server) is asked per request for the ones it has loaded.
_ADAPTER_BACKENDS = ("embedded", "openai_compatible")


class EngineConfigError(ValueError):
    """The spec asks for an engine that cannot be built here (missing key, extra, model)."""


def unsupported_fields(spec: Spec) -> tuple[str, ...]:
    return _UNSUPPORTED[spec.engine.backend]


def _seed(spec: Spec) -> int | None:
    return None if spec.intelligence.seed < 0 else spec.intelligence.seed


def _check_adapters(spec: Spec) -> None:
    """LoRA adapters change what the model says; a backend that cannot apply them must not
    silently answer without them."""
    if spec.intelligence.adapters and spec.engine.backend not in _ADAPTER_BACKENDS:
        raise EngineConfigError(
            f"intelligence.adapters: engine.backend = {spec.engine.backend!r} cannot apply LoRA "
            f"adapters; use one of {', '.join(_ADAPTER_BACKENDS)} (or remove the adapters)"
        )


def _openai_style(
    spec: Spec,
    *,
    provider: str,
    base_url: str | None,
    model: str,
    llama_extras: bool,
    lora_field: bool = False,
    api_key: str | None = None,
    api_key_env: str | None = None,
    http_clients: tuple[Any, Any] | None = None,
) -> BaseChatModel:
    intel = spec.intelligence
    extra_body: dict[str, Any] = {}
    if llama_extras:
        # llama.cpp server and vLLM read these from the request body.
        extra_body = {"top_k": intel.top_k, "repeat_penalty": intel.repeat_penalty}
    if lora_field and intel.adapters:
        # llama-server's per-request adapter scales: `id` is the adapter's position in the
        # server's --lora list, so the server must load the spec's adapters in spec order.
        # (vLLM serves a LoRA as a model name instead: start it with
        # --enable-lora --lora-modules NAME=PATH and set intelligence.model = NAME; it
        # ignores this field.)
        extra_body["lora"] = [
            {"id": i, "scale": adapter.scale} for i, adapter in enumerate(intel.adapters)
        ]
    return _provider_model(
        spec,
        provider,
        model,
        base_url=base_url,
        api_key=api_key,
        api_key_env=api_key_env,
        generation={"temperature": intel.temperature, "top_p": intel.top_p, "seed": _seed(spec)},
        extra_body=extra_body,
        http_clients=http_clients,
    )


def _provider_model(
    spec: Spec,
    provider: str,
    model: str,
    *,
    base_url: str | None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    generation: dict[str, Any],
    extra_body: dict[str, Any] | None = None,
    http_clients: tuple[Any, Any] | None = None,
) -> BaseChatModel:
    return build_provider_model(
        provider,
        model,
        who=f"engine.backend = {spec.engine.backend!r}",
        error=EngineConfigError,
        base_url=base_url,
        api_key=api_key,
        api_key_env=api_key_env,
        key_hint=" (or name another one in engine.api_key_env)",
        max_tokens=spec.intelligence.max_tokens,
        timeout_s=spec.engine.timeout_s,
        max_retries=0,
        generation=generation,
        extra_body=extra_body,
        http_clients=http_clients,
    )


def build_backend_model(spec: Spec, settings: Settings) -> BaseChatModel:
    """The raw backend chat model, without tool-call handling."""
    backend = spec.engine.backend
    intel = spec.intelligence
    key_env = spec.engine.api_key_env
    _check_adapters(spec)
    if backend == "embedded":
        from .catalog import resolve_model_path
        from .embedded import get_embedded_server
        from .in_process import in_process_clients

        path = resolve_model_path(intel.model, settings.models_path)
        server = get_embedded_server(
            path,
            n_ctx=spec.engine.context_length,
            threads=spec.engine.threads,
            parallel=spec.engine.parallel,
            log_file=settings.logs_dir / "engine.log",
            adapters=tuple((str(a.resolved_path), a.scale) for a in intel.adapters),
        )
        # The OpenAI client reaches the server in-process (engines.in_process), not through
        # its loopback port: same requests and replies, without a socket, HTTP parsing or the
        # environment's proxy settings in between (benchmarks/decode.py measures both ways).
        return _openai_style(
            spec,
            provider="openai_compatible",
            base_url=server.base_url,
            api_key=server.api_key,
            model=path.stem,
            llama_extras=True,
            http_clients=in_process_clients(server),
        )
    if backend == "openai_compatible":
        return _openai_style(
            spec,
            provider="openai_compatible",
            base_url=spec.engine.base_url,
            api_key_env=key_env or None,
            model=intel.model,
            llama_extras=True,
            lora_field=True,
        )
    if backend == "openai":
        return _openai_style(
            spec,
            provider="openai",
            base_url=spec.engine.base_url or None,
            api_key_env=key_env or "OPENAI_API_KEY",
            model=intel.model,
            llama_extras=False,
        )
    if backend == "ollama":
        return _provider_model(
            spec,
            "ollama",
            intel.model,
            base_url=spec.engine.base_url or None,
            generation={
                "temperature": intel.temperature,
                "top_p": intel.top_p,
                "top_k": intel.top_k,
                "repeat_penalty": intel.repeat_penalty,
                "seed": _seed(spec),
                "num_ctx": spec.engine.context_length,
                "num_thread": spec.engine.threads or None,
            },
        )
    if backend == "anthropic":
        return _provider_model(
            spec,
            "anthropic",
            intel.model,
            base_url=spec.engine.base_url or None,
            api_key_env=key_env or "ANTHROPIC_API_KEY",
            generation={
                "temperature": intel.temperature,
                "top_p": intel.top_p,
                "top_k": intel.top_k,
            },
        )
    raise EngineConfigError(f"engine.backend {backend!r} is not known")  # pragma: no cover


def build_chat_model(spec: Spec, settings: Settings) -> ToolCallingChatModel:
    """The chat model the assistant uses: backend + the spec's tool-call format and the
    rendering of tools and their results (`[agent.rendering]`)."""
    inner = build_backend_model(spec, settings)
    transport = {
        "ollama": "ollama_format",
        "anthropic": "none",
    }.get(spec.engine.backend, "openai_response_format")
    return ToolCallingChatModel(
        inner=inner,
        tool_call_format=spec.engine.tool_call_format,
        json_transport=transport,
        rendering=spec.agent.rendering,
    )


# The embedded teacher's context per request: a diagnosis digest of failing runs, or the LLM
# proposer's prompt (spec, clusters, the JSON schema of every edit op: ~4k tokens) with the
# reply, must fit. The KV cache this takes is small next to the weights (~0.5 GB for
# Qwen2.5-Coder-1.5B), and only what a request uses is ever computed.
TEACHER_CONTEXT = 16384


def build_embedded_teacher(
    model: str, settings: Settings, *, max_tokens: int, timeout_s: float
) -> ToolCallingChatModel:
    """The teacher `embedded:MODEL`: a catalog model or .gguf path run in this process, on
    a server of its own (its own context size), every structured reply decoded under the
    JSON schema of the tool it is asked to call (constrained_json).

    It uses every core, as the student's server does by default: a session never runs the
    two at the same time (each teacher call is awaited before the next student run starts),
    and two llama.cpp servers that decode at once with all cores each spin-wait against each
    other. Greedy decoding without a repeat penalty: a JSON reply repeats its punctuation by
    design. Raises ModelNotAvailable (not pulled, no such file) or EngineError (no load).
    """
    from homespun.spec.models import EngineSpec, IntelligenceSpec

    spec = Spec(
        intelligence=IntelligenceSpec(
            model=model, temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens, seed=0
        ),
        engine=EngineSpec(
            backend="embedded",
            context_length=TEACHER_CONTEXT,
            threads=0,
            parallel=1,
            tool_call_format="constrained_json",
            timeout_s=timeout_s,
        ),
    )
    return build_chat_model(spec, settings)
