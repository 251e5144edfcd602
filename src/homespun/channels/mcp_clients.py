"""Install the homespun MCP server into the config file of an MCP client.

The entry starts `python -m homespun.cli mcp serve` over stdio with absolute paths (the client
does not run it from a shell, so neither PATH nor the user's environment can be relied on),
with HOMESPUN_HOME set. An existing config is merged into, never replaced: every other server
and top-level key stays, the previous file is kept as `<name>.bak`, the new one is written
atomically, and a file that is not valid JSON is refused and left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "CLIENTS",
    "SERVER_NAME",
    "ClientConfigError",
    "ClientName",
    "default_config_path",
    "install_entry",
    "server_entry",
]

ClientName = Literal["claude-desktop", "cursor", "vscode"]
CLIENTS: tuple[str, ...] = get_args(ClientName)
SERVER_NAME = "homespun"

# Claude Desktop and Cursor list servers under "mcpServers"; VS Code under "servers", with a
# "type" on each entry.
_SERVERS_KEY: dict[str, str] = {
    "claude-desktop": "mcpServers",
    "cursor": "mcpServers",
    "vscode": "servers",
}


class ClientConfigError(ValueError):
    """The client's config file cannot be merged into (unreadable, not JSON, wrong shape)."""


def default_config_path(
    client: ClientName,
    *,
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    user_home: Path | None = None,
    cwd: Path | None = None,
) -> Path:
    """Where `client` reads its MCP servers on this OS (VS Code: the current workspace)."""
    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    user_home = user_home or Path.home()
    if client == "claude-desktop":
        name = "claude_desktop_config.json"
        if platform == "darwin":
            return user_home / "Library" / "Application Support" / "Claude" / name
        if platform.startswith("win"):
            appdata = environ.get("APPDATA")
            base = Path(appdata) if appdata else user_home / "AppData" / "Roaming"
            return base / "Claude" / name
        xdg = environ.get("XDG_CONFIG_HOME")
        return (Path(xdg) if xdg else user_home / ".config") / "Claude" / name
    if client == "cursor":
        return user_home / ".cursor" / "mcp.json"
    if client == "vscode":
        return (cwd or Path.cwd()) / ".vscode" / "mcp.json"
    raise ValueError(f"unknown MCP client {client!r}; choose one of {', '.join(CLIENTS)}")


def server_entry(
    client: ClientName, *, home: Path, extra_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The config entry that runs our server over stdio, with absolute paths only."""
    # abspath, not resolve(): a venv's python is a symlink whose target lacks the venv.
    python = os.path.abspath(sys.executable)
    env = {"HOMESPUN_HOME": os.path.abspath(Path(home).expanduser())}
    env.update(extra_env or {})
    entry: dict[str, Any] = {}
    if client == "vscode":
        entry["type"] = "stdio"
    entry.update(command=python, args=["-m", "homespun.cli", "mcp", "serve"], env=env)
    return entry


def install_entry(
    client: ClientName,
    *,
    config_path: Path | None = None,
    print_only: bool = False,
    home: Path,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Add (or update) the "homespun" server in `client`'s config; returns (path, document).

    The document is the whole config as written (or, with `print_only`, as it would be
    written; then nothing is touched). Raises ClientConfigError for a file that exists but
    is not a JSON object, naming the file; such a file is never overwritten.
    """
    if client not in _SERVERS_KEY:
        raise ValueError(f"unknown MCP client {client!r}; choose one of {', '.join(CLIENTS)}")
    path = Path(config_path).expanduser() if config_path else default_config_path(client)
    path = Path(os.path.abspath(path))
    if path.is_symlink():  # dotfile managers link configs: update the file, keep the link
        path = path.resolve()
    key = _SERVERS_KEY[client]
    entry = server_entry(client, home=home, extra_env=extra_env)
    document = _read_config(path, key, client, entry)
    servers = document.setdefault(key, {})
    servers[SERVER_NAME] = entry
    if not print_only:
        _write_with_backup(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path, document


def _read_config(path: Path, key: str, client: str, entry: dict[str, Any]) -> dict[str, Any]:
    by_hand = json.dumps({key: {SERVER_NAME: entry}}, indent=2)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"it was left unchanged. Fix it, or add this to it by hand:\n{by_hand}"
        ) from None
    if not isinstance(document, dict):
        raise ClientConfigError(
            f"{path} holds a JSON {type(document).__name__}, not an object; it was left unchanged"
        )
    if not isinstance(document.get(key, {}), dict):
        raise ClientConfigError(
            f"{path}: {key!r} is not an object as {client} expects; it was left unchanged"
        )
    return document


def _write_with_backup(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    if existed:
        # copy2 keeps the mode: these files may hold other servers' API keys.
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if existed:
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
