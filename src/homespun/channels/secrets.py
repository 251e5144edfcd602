"""Bot tokens: from the environment, else from HOMESPUN_HOME/secrets.env (mode 0600 only).

Tokens never live in the spec: the spec is committed to git on every accepted edit and is
shown in diffs, so a token there would leak into history.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from homespun.spec import Settings


class SecretError(Exception):
    """A secret is missing, or the file that would hold it is not private."""


def secrets_path(settings: Settings) -> Path:
    return settings.home.expanduser() / "secrets.env"


def get_secret(name: str, settings: Settings) -> str:
    """The value of `name` from the environment, else from HOMESPUN_HOME/secrets.env."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    path = secrets_path(settings)
    if path.exists():
        value = read_secrets_file(path).get(name, "")
        if value:
            return value
    raise SecretError(
        f"{name} is not set: export {name}=... or add a line `{name}=...` to {path} "
        f"(then `chmod 600 {path}`)"
    )


def read_secrets_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines, `# comments` and a leading `export ` are allowed).

    Refuses a file that other users can read or write: it holds credentials.
    """
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretError(
                f"{path} is accessible to other users (mode {mode:04o}); it holds tokens, so "
                f"homespun refuses to read it: run `chmod 600 {path}`"
            )
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            # Never echo the line: it may be a token pasted without its name.
            raise SecretError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class RedactingFilter(logging.Filter):
    """Replaces secrets in log records (e.g. a bot token inside an API URL) with ***."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_in_logs(*secrets: str) -> None:
    """Install a `RedactingFilter` on every handler of the root logger."""
    flt = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
