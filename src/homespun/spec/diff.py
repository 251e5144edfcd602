"""A readable field-by-field diff between two specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import Spec

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    field: str  # dotted path, list items as [i]
    before: Any
    after: Any

    def render(self) -> str:
        if self.before is _MISSING:
            return f"+ {self.field} = {self.after!r}"
        if self.after is _MISSING:
            return f"- {self.field} (was {self.before!r})"
        return f"~ {self.field}: {self.before!r} -> {self.after!r}"


def _flatten(data: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _flatten(value, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            _flatten(value, f"{prefix}[{i}]", out)
    else:
        out[prefix] = data


def diff_specs(before: Spec, after: Spec) -> list[FieldChange]:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(before.to_data(), "", a)
    _flatten(after.to_data(), "", b)
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            changes.append(FieldChange(key, va, vb))
    return changes


def render_diff(changes: list[FieldChange]) -> str:
    return "\n".join(c.render() for c in changes) if changes else "(no differences)"
