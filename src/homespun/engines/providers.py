"""Building the teacher's chat model from `learning.teacher` ('provider:model[@url]')."""

from __future__ import annotations

import os
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


def _key(env: str, name: str) -> str:
    key = os.environ.get(env)
    if not key:
        raise TeacherConfigError(
            f"learning.teacher = {name!r} needs an API key: set the environment variable {env} "
            f"(or set learning.teacher = '' to use the rule-based diagnoser and the random "
            f"proposer)"
        )
    return key


def build_teacher(name: str, *, max_tokens: int = 4096, base_url: str | None = None,
                  timeout_s: float = 300.0) -> BaseChatModel:
    """The LangChain chat model for `learning.teacher`.

    SDK retries are off (max_retries=0): a retry is a call, and the caller that retries does
    so through the cost meter. `base_url` overrides the provider's endpoint (a proxy, or a
    loopback stub in tests); ANTHROPIC_BASE_URL / OPENAI_BASE_URL are honoured as usual.
    """
    provider, model = parse_teacher(name)
    if provider == "anthropic":
        try:
            from langchain_anthropic import ChatAnthropic
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TeacherConfigError(
                f"learning.teacher = {name!r} needs the anthropic extra: "
                "pip install 'homespun[anthropic]'"
            ) from exc
        kwargs: dict[str, Any] = {"base_url": base_url} if base_url else {}
        return ChatAnthropic(
            model=model, api_key=_key("ANTHROPIC_API_KEY", name), max_tokens=max_tokens,
            timeout=timeout_s, max_retries=0, **kwargs,
        )
    if provider in ("openai", "openai_compatible"):
        from langchain_openai import ChatOpenAI

        if provider == "openai":
            key, url = _key("OPENAI_API_KEY", name), base_url
        else:
            model, url = _split_endpoint(model)
            url = base_url or url
            key = os.environ.get("OPENAI_API_KEY") or "not-needed"
        return ChatOpenAI(
            model=model, api_key=key, base_url=url, max_tokens=max_tokens, timeout=timeout_s,
            max_retries=0, stream_usage=True,
        )
    if provider == "ollama":
        try:
            from langchain_ollama import ChatOllama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TeacherConfigError(
                f"learning.teacher = {name!r} needs the ollama extra: "
                "pip install 'homespun[ollama]'"
            ) from exc
        model, url = _split_endpoint(model) if "@" in model else (model, None)
        return ChatOllama(
            model=model, base_url=base_url or url, num_predict=max_tokens,
            client_kwargs={"timeout": timeout_s},
        )
    raise AssertionError(provider)  # pragma: no cover - parse_teacher admits only PROVIDERS
