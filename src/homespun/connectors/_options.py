"""Reading a connector's `options` table: typed getters whose errors name the dotted field.

Every string option may hold '${NAME}' references to the environment, so secrets and
machine-specific paths stay out of the spec. A missing variable, a wrong type or an option
the connector does not know is a ConnectorConfigError naming `tools.servers[i].options.KEY`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .registry import ConnectorConfigError

__all__ = ["OptionReader"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


class OptionReader:
    """Typed access to one connector's options; unknown keys are refused up front."""

    def __init__(self, options: Mapping[str, Any], *, where: str, allowed: Iterable[str]) -> None:
        self.options = dict(options or {})
        self.where = where
        self.allowed = tuple(allowed)
        for key in self.options:
            if key not in self.allowed:
                raise self.error(
                    key, f"unknown option; this connector takes: {', '.join(self.allowed)}"
                )

    def error(self, key: str, reason: str) -> ConnectorConfigError:
        return ConnectorConfigError(f"{self.where}.{key}: {reason}")

    def _raw(self, key: str, default: Any) -> Any:
        if key in self.options:
            return self.options[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def _expand(self, key: str, value: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise self.error(key, f"refers to ${{{name}}} but {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)

    def string(self, key: str, default: Any = _MISSING, *, allow_empty: bool = False) -> str:
        value = self._raw(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        value = self._expand(key, value).strip() if key in self.options else value
        if not value and not allow_empty:
            raise self.error(key, "must not be empty")
        return value

    def path(self, key: str, default: Any = _MISSING) -> Path:
        return Path(self.string(key, default)).expanduser()

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def strings(self, key: str, default: Any = _MISSING) -> list[str]:
        """A list of non-empty strings; a single string is taken as a list of one."""
        value = self._raw(key, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {_kind(value)}")
        out = [self._expand(key, v).strip() for v in value]
        if not out or not all(out):
            raise self.error(key, "must list at least one entry, and no empty ones")
        return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
