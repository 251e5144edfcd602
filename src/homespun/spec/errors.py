"""Errors that name the file, the dotted field and the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError


@dataclass(frozen=True)
class SpecIssue:
    field: str  # dotted, e.g. "intelligence.temperature" or "tools.servers[1].url"
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class SpecError(ValueError):
    """A spec that cannot be loaded or would be invalid. Never written to disk."""

    def __init__(self, issues: list[SpecIssue], source: Path | str | None = None):
        self.issues = issues
        self.source = str(source) if source is not None else None
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.issues) == 1:
            return f"{where}{self.issues[0]}"
        lines = [f"{where}{len(self.issues)} problems:"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)

    @property
    def fields(self) -> list[str]:
        return [i.field for i in self.issues]


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def issues_from_validation(exc: ValidationError) -> list[SpecIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(
            p for p in err["loc"] if p not in ("function-after[_kind_fields(), ToolServerSpec]",)
        )
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key (check the spelling; see `homespun spec show` for valid keys)"
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict)
        ):
            reason = f"{reason} (got {err['input']!r})"
        issues.append(SpecIssue(dotted(loc), reason))
    return issues
