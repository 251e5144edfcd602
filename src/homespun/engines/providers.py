"""Chat clients per provider, for the student (engines.factory) and the teacher
(`learning.teacher` = 'provider:model[@url]') alike."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from .cost import PROVIDERS
from .tool_calls import ToolCallingChatModel

if TYPE_CHECKING:
    from homespun.spec import Settings

_ACCEPTED_FORMS = (
    "'anthropic:MODEL' (e.g. 'anthropic:claude-opus-4-6'), 'openai:MODEL' (e.g. "
    "'openai:gpt-5'), 'ollama:MODEL[@URL]' (e.g. 'ollama:qwen2.5:14b'), "
    "'openai_compatible:MODEL@URL' (e.g. 'openai_compatible:qwen@http://127.0.0.1:8000/v1'), "
    "'embedded:CATALOG_NAME' or 'embedded:/path/to/model.gguf' (e.g. "
    "'embedded:qwen2.5-coder-1.5b': a local model run in this process, pulled first with "
    "`homespun models pull NAME`)"
)

# What a local embedded teacher may write in one reply where a call site sets no bound of its
# own. Its structured replies are decoded under a JSON schema, so they hold JSON and nothing
# else, and every call site sizes its bound to its JSON (`bound_reply_tokens`). A CPU
# decodes slowly: Qwen2.5-Coder-1.5B Q4_K_M writes ~10 tokens/s on 2 cores, so 1024 tokens
# is under two minutes where the 4096 of a remote teacher would be seven.
EMBEDDED_TEACHER_MAX_TOKENS = 1024
# Per call: the prompt of a diagnosis (a digest of failing runs) or of the LLM proposer (the
# spec, the clusters and the edit-op schemas, ~4k tokens) must be read on the CPU first, at
# tens of tokens a second for a 1.5B model on 2 cores, before the reply is written.
EMBEDDED_TEACHER_TIMEOUT_S = 600.0


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

    For ollama and openai_compatible the model part keeps its '@URL', as written; for
    embedded it is a catalog name or a .gguf path (whether it is there is checked when the
    teacher is built).
    """
    provider, sep, model = (name or "").strip().partition(":")
    if not sep or provider not in PROVIDERS or not model.strip():
        raise TeacherConfigError(
            f"learning.teacher = {name!r} is not a teacher id; accepted forms: {_ACCEPTED_FORMS}"
        )
    model = model.strip()
    if provider == "embedded":
        from .catalog import CATALOG

        if model not in CATALOG and not model.lower().endswith(".gguf"):
            raise TeacherConfigError(
                f"learning.teacher = {name!r}: {model!r} is neither a catalog model "
                f"({', '.join(CATALOG)}; see `homespun models list`) nor a path to a .gguf file"
            )
    if provider == "openai_compatible":
        _, url = _split_endpoint(model)
        if not url:
            raise TeacherConfigError(
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
        raise TeacherConfigError(
            f"learning.teacher: {model!r} must be MODEL@http(s)://host[:port]/...; "
            f"accepted forms: {_ACCEPTED_FORMS}"
        )
    return bare, url


# Shown with a teacher's missing key: the way to go on without one.
_NO_TEACHER_HINT = (
    " (or set learning.teacher = '' to use the rule-based diagnoser and the random proposer)"
)


def build_teacher(
    name: str,
    *,
    max_tokens: int | None = None,
    base_url: str | None = None,
    timeout_s: float | None = None,
    settings: Settings | None = None,
) -> BaseChatModel:
    """The LangChain chat model for `learning.teacher`.

    SDK retries are off (max_retries=0): a retry is a call, and the caller that retries does
    so through the cost meter. `base_url` overrides the provider's endpoint (a proxy, or a
    loopback stub in tests); ANTHROPIC_BASE_URL / OPENAI_BASE_URL are honoured as usual.

    'embedded:NAME' loads the model into this process (`engines.factory.
    build_embedded_teacher`) from `settings.models_path` (default: Settings()). Its reply
    bound defaults to EMBEDDED_TEACHER_MAX_TOKENS and its timeout to
    EMBEDDED_TEACHER_TIMEOUT_S; a remote teacher's to 4096 tokens and 300 s. A model that is
    unknown, not pulled, missing or that does not load is a TeacherConfigError naming
    learning.teacher and the fix.
    """
    provider, model = parse_teacher(name)
    if provider == "embedded":
        return _embedded_teacher(
            name,
            model,
            max_tokens=max_tokens or EMBEDDED_TEACHER_MAX_TOKENS,
            timeout_s=timeout_s or EMBEDDED_TEACHER_TIMEOUT_S,
            settings=settings,
        )
    max_tokens = max_tokens or 4096
    timeout_s = timeout_s or 300.0
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


def _embedded_teacher(
    name: str, model: str, *, max_tokens: int, timeout_s: float, settings: Settings | None
) -> BaseChatModel:
    from homespun.spec import Settings

    from .catalog import ModelNotAvailable
    from .embedded import EngineError
    from .factory import build_embedded_teacher

    try:
        return build_embedded_teacher(
            model, settings or Settings(), max_tokens=max_tokens, timeout_s=timeout_s
        )
    except ModelNotAvailable as exc:
        raise TeacherConfigError(f"learning.teacher = {name!r}: {exc}") from exc
    except EngineError as exc:
        # llama.cpp's reasons follow on further lines, and the log file is named there.
        first = str(exc).splitlines()[0].rstrip(":")
        raise TeacherConfigError(
            f"learning.teacher = {name!r}: {first}; pull the model again or name another one"
        ) from exc


def bound_reply_tokens(model: BaseChatModel, max_tokens: int) -> BaseChatModel:
    """`model` with each reply cut at `max_tokens` tokens, where that is safe; else `model`.

    Safe means a teacher whose replies are decoded under a JSON schema (the embedded teacher,
    a ToolCallingChatModel in constrained_json mode): what it writes is the JSON a call site
    asked for and nothing else, so the call site can size the bound to that JSON. A remote
    provider's model keeps the limit it was built with: a reasoning model spends part of its
    completion tokens on thinking that a bound sized to the JSON would cut off.
    """
    if not isinstance(model, ToolCallingChatModel) or model.tool_call_format != "constrained_json":
        return model
    inner = model.inner
    for field in ("max_tokens", "num_predict"):  # OpenAI-style and Anthropic; Ollama
        if field in type(inner).model_fields:
            capped = inner.model_copy(update={field: int(max_tokens)})
            return model.model_copy(update={"inner": capped})
    return model


# Where the failures of a model call itself come from: the providers' SDKs and the HTTP
# clients under them (the embedded teacher's errors reach its client as error responses).
_CALL_ERROR_PACKAGES = frozenset({"openai", "anthropic", "ollama", "httpx", "httpx2", "httpcore"})


def is_model_call_error(exc: BaseException) -> bool:
    """Whether `exc` is a model call that failed (a timeout, a connection refused or lost, an
    error response of a provider or of the embedded engine), not a fault of the caller."""
    from .embedded import EngineError

    if isinstance(exc, TimeoutError | ConnectionError | EngineError):
        return True
    return type(exc).__module__.split(".")[0] in _CALL_ERROR_PACKAGES


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'Type: first line of the message', at most `limit` characters: for a user's terminal
    and a session's note."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
