"""Chat clients per provider, for the student (engines.factory) and the teacher
(`learning.teacher` = 'provider:model[@url]') alike."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel

from .cost import PROVIDERS

_ACCEPTED_FORMS = (
    "'anthropic:MODEL' (e.g. 'anthropic:claude-opus-4-6'), 'openai:MODEL' (e.g. "
    "'openai:gpt-5'), 'ollama:MODEL[@URL]' (e.g. 'ollama:qwen2.5:14b'), "
    "'openai_compatible:MODEL@URL' (e.g. 'openai_compatible:qwen@http://127.0.0.1:8000/v1')"
)


class TeacherConfigError(ValueError):
    """learning.teacher names a teacher that cannot be built here (key, extra, form)."""


def build_provider_model(
    provider: str,
    model: str,
    *,
    who: str,
    error: type[ValueError],
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    key_hint: str = "",
    max_tokens: int | None = None,
    timeout_s: float | None = None,
    max_retries: int = 0,
    generation: Mapping[str, Any] | None = None,
    extra_body: Mapping[str, Any] | None = None,
    http_clients: tuple[Any, Any] | None = None,
) -> BaseChatModel:
    """The LangChain client of `provider` ('anthropic', 'openai', 'openai_compatible',
    'ollama').

    `api_key` wins over `api_key_env`; an openai_compatible server gets "not-needed" when
    neither gives one. `generation` goes to the client under the client's own parameter
    names; `extra_body` (OpenAI-style only) goes in every request body. `http_clients`
    (OpenAI-style only) is the (sync, async) pair of httpx2 clients the SDK sends with, e.g.
    the embedded engine's in-process ones. `who` names the setting that asked for the model
    and `error` is raised, for a missing key or extra.
    """
    generation = dict(generation or {})
    if api_key is None and api_key_env:
        api_key = os.environ.get(api_key_env) or None
    if provider in ("openai", "openai_compatible"):
        from langchain_openai import ChatOpenAI

        if provider == "openai":
            api_key = _require_key(api_key, api_key_env, who, key_hint, error)
        if http_clients is not None:
            generation["http_client"], generation["http_async_client"] = http_clients
        return ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=api_key or "not-needed",
            max_tokens=max_tokens,
            timeout=timeout_s,
            max_retries=max_retries,
            stream_usage=True,
            extra_body=dict(extra_body) if extra_body else None,
            **generation,
        )
    if provider == "anthropic":
        try:
            from langchain_anthropic import ChatAnthropic
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise error(_missing_extra(who, "anthropic")) from exc
        api_key = _require_key(api_key, api_key_env, who, key_hint, error)
        if base_url:
            generation["base_url"] = base_url
        return ChatAnthropic(
            model=model,
            api_key=api_key,
            max_tokens=max_tokens,
            timeout=timeout_s,
            max_retries=max_retries,
            **generation,
        )
    if provider == "ollama":
        try:
            from langchain_ollama import ChatOllama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise error(_missing_extra(who, "ollama")) from exc
        # The Ollama client has no retry setting of its own: nothing to turn off.
        return ChatOllama(
            model=model,
            base_url=base_url or None,
            num_predict=max_tokens,
            client_kwargs={"timeout": timeout_s},
            **generation,
        )
    raise error(f"{who}: provider {provider!r} is not known")  # pragma: no cover


def _require_key(
    key: str | None, env: str | None, who: str, hint: str, error: type[ValueError]
) -> str:
    if not key:
        raise error(f"{who} needs an API key: set the environment variable {env}{hint}")
    return key


def _missing_extra(who: str, extra: str) -> str:
    return f"{who} needs the {extra} extra: pip install 'homespun[{extra}]'"


def parse_teacher(name: str) -> tuple[str, str]:
    """'anthropic:claude-opus-4-6' -> ('anthropic', 'claude-opus-4-6').

    For ollama and openai_compatible the model part keeps its '@URL', as written.
    """
    provider, sep, model = (name or "").strip().partition(":")
    if not sep or provider not in PROVIDERS or not model.strip():
        raise ValueError(
            f"learning.teacher = {name!r} is not a teacher id; accepted forms: {_ACCEPTED_FORMS}"
        )
    model = model.strip()
    if provider == "openai_compatible":
        _, url = _split_endpoint(model)
        if not url:
            raise ValueError(
                f"learning.teacher = {name!r}: an openai_compatible teacher needs its endpoint, "
                f"as 'openai_compatible:MODEL@http://host:port/v1'; accepted forms: "
                f"{_ACCEPTED_FORMS}"
            )
    if provider == "ollama" and "@" in model:
        _split_endpoint(model)  # validates the URL part
    return provider, model


def _split_endpoint(model: str) -> tuple[str, str | None]:
    """'qwen@http://host:8000/v1' -> ('qwen', 'http://host:8000/v1')."""
    bare, sep, url = model.rpartition("@")
    if not sep:
        return model, None
    if not bare or not url.startswith(("http://", "https://")):
        raise ValueError(
            f"learning.teacher: {model!r} must be MODEL@http(s)://host[:port]/...; "
            f"accepted forms: {_ACCEPTED_FORMS}"
        )
    return bare, url


# Shown with a teacher's missing key: the way to go on without one.
_NO_TEACHER_HINT = (
    " (or set learning.teacher = '' to use the rule-based diagnoser and the random proposer)"
)


def build_teacher(
    name: str, *, max_tokens: int = 4096, base_url: str | None = None, timeout_s: float = 300.0
) -> BaseChatModel:
    """The LangChain chat model for `learning.teacher`.

    SDK retries are off (max_retries=0): a retry is a call, and the caller that retries does
    so through the cost meter. `base_url` overrides the provider's endpoint (a proxy, or a
    loopback stub in tests); ANTHROPIC_BASE_URL / OPENAI_BASE_URL are honoured as usual.
    """
    provider, model = parse_teacher(name)
    url = base_url
    if provider in ("openai_compatible", "ollama") and "@" in model:
        model, written = _split_endpoint(model)
        url = base_url or written
    key_env = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    return build_provider_model(
        provider,
        model,
        who=f"learning.teacher = {name!r}",
        error=TeacherConfigError,
        base_url=url,
        api_key_env=None if provider == "ollama" else key_env,
        key_hint=_NO_TEACHER_HINT,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        max_retries=0,
    )
