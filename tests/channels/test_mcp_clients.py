"""Installing the homespun server into MCP clients' config files."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import fastmcp
import pytest
from fastmcp.client.transports import StdioTransport
from typer.testing import CliRunner

from homespun.channels.mcp_clients import (
    ClientConfigError,
    default_config_path,
    install_entry,
    server_entry,
)
from homespun.cli._mcp import mcp_app
from homespun.home import init_home
from homespun.spec import Settings
from homespun.stores.memory import MemoryStore
from tests.mcp_helpers import text

runner = CliRunner()


def _unwrapped(text: str) -> str:
    return "".join(text.split())  # rich folds long paths at the terminal width


OTHER = {
    "command": "npx",
    "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
    "env": {"API_KEY": "secret"},
}


def _write(path: Path, document) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) if not isinstance(document, str) else document
    path.write_text(text)
    return text


def test_install_keeps_other_servers_and_keys_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOMESPUN_HOME", "rel-home")  # relative on purpose
    monkeypatch.delenv("HOMESPUN_SPEC", raising=False)
    monkeypatch.delenv("HOMESPUN_MODELS_DIR", raising=False)
    config = tmp_path / "claude" / "claude_desktop_config.json"
    before = _write(config, {"mcpServers": {"files": OTHER}, "globalShortcut": "Ctrl+Space"})
    config.chmod(0o600)

    res = runner.invoke(mcp_app, ["install", "claude-desktop", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert str(config) in res.output

    doc = json.loads(config.read_text())
    assert doc["globalShortcut"] == "Ctrl+Space"
    assert doc["mcpServers"]["files"] == OTHER
    ours = doc["mcpServers"]["homespun"]
    assert Path(ours["command"]).is_absolute() and Path(ours["command"]).exists()
    assert ours["command"] == os.path.abspath(sys.executable)
    assert ours["args"] == ["-m", "homespun.cli", "mcp", "serve"]
    assert ours["env"] == {"HOMESPUN_HOME": str(tmp_path / "rel-home")}
    assert "type" not in ours
    assert (config.parent / "claude_desktop_config.json.bak").read_text() == before
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # may hold other servers' keys
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".")] == []


def test_installing_again_updates_our_entry_only(tmp_path):
    config = tmp_path / "mcp.json"
    _write(config, {"mcpServers": {"files": OTHER, "homespun": {"command": "old"}}})
    path, doc = install_entry("cursor", config_path=config, home=tmp_path / "h")
    path2, doc2 = install_entry("cursor", config_path=config, home=tmp_path / "h")
    assert path == path2 == config
    assert doc == doc2 == json.loads(config.read_text())
    assert set(doc["mcpServers"]) == {"files", "homespun"}
    assert doc["mcpServers"]["homespun"]["command"] == os.path.abspath(sys.executable)


def test_vscode_uses_servers_with_a_type_and_keeps_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / ".vscode" / "mcp.json"
    inputs = [{"type": "promptString", "id": "key", "description": "API key", "password": True}]
    _write(config, {"inputs": inputs, "servers": {"gh": {"type": "http", "url": "https://x"}}})
    path, doc = install_entry("vscode", home=tmp_path / "h")
    assert path == config
    written = json.loads(config.read_text())
    assert written == doc
    assert written["inputs"] == inputs
    assert written["servers"]["gh"] == {"type": "http", "url": "https://x"}
    ours = written["servers"]["homespun"]
    assert ours["type"] == "stdio" and Path(ours["command"]).is_absolute()
    assert "mcpServers" not in written


def test_print_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMESPUN_HOME", str(tmp_path / "h"))
    config = tmp_path / "cfg" / "mcp.json"
    before = _write(config, {"mcpServers": {"files": OTHER}})
    res = runner.invoke(mcp_app, ["install", "cursor", "--config", str(config), "--print"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert set(shown["mcpServers"]) == {"files", "homespun"}
    assert config.read_text() == before
    assert sorted(p.name for p in config.parent.iterdir()) == ["mcp.json"]

    fresh = tmp_path / "none" / "mcp.json"
    res = runner.invoke(mcp_app, ["install", "cursor", "--config", str(fresh), "--print"])
    assert res.exit_code == 0, res.output
    assert not fresh.parent.exists()


@pytest.mark.parametrize(
    "content", ['{"mcpServers": {"files": ', "[1, 2]", '{"mcpServers": ["x"]}']
)
def test_invalid_config_is_refused_and_left_alone(tmp_path, monkeypatch, content):
    monkeypatch.setenv("HOMESPUN_HOME", str(tmp_path / "h"))
    config = tmp_path / "claude_desktop_config.json"
    config.write_text(content)
    res = runner.invoke(mcp_app, ["install", "claude-desktop", "--config", str(config)])
    assert res.exit_code == 1
    assert str(config) in _unwrapped(res.output)
    assert config.read_text() == content
    assert not (tmp_path / "claude_desktop_config.json.bak").exists()
    with pytest.raises(ClientConfigError, match="left unchanged"):
        install_entry("claude-desktop", config_path=config, home=tmp_path)


def test_an_empty_file_or_none_becomes_a_fresh_config(tmp_path):
    empty = tmp_path / "a" / "mcp.json"
    _write(empty, "")
    _, doc = install_entry("cursor", config_path=empty, home=tmp_path)
    assert list(doc) == ["mcpServers"]
    _, doc = install_entry("cursor", config_path=tmp_path / "b" / "mcp.json", home=tmp_path)
    assert json.loads((tmp_path / "b" / "mcp.json").read_text()) == doc


def test_default_locations_per_client_and_os(tmp_path):
    u = tmp_path / "user"
    assert default_config_path("claude-desktop", platform="darwin", user_home=u) == (
        u / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    )
    assert default_config_path("claude-desktop", platform="linux", user_home=u, environ={}) == (
        u / ".config" / "Claude" / "claude_desktop_config.json"
    )
    assert default_config_path(
        "claude-desktop",
        platform="win32",
        user_home=u,
        environ={"APPDATA": str(tmp_path / "Roaming")},
    ) == (tmp_path / "Roaming" / "Claude" / "claude_desktop_config.json")
    assert default_config_path("cursor", user_home=u) == u / ".cursor" / "mcp.json"
    assert default_config_path("vscode", cwd=tmp_path) == tmp_path / ".vscode" / "mcp.json"


def test_explicit_settings_travel_with_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMESPUN_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("HOMESPUN_SPEC", raising=False)
    res = runner.invoke(
        mcp_app, ["install", "cursor", "--config", str(tmp_path / "m.json"), "--print"]
    )
    env = json.loads(res.stdout)["mcpServers"]["homespun"]["env"]
    assert env == {
        "HOMESPUN_HOME": str(tmp_path / "h"),
        "HOMESPUN_MODELS_DIR": str(tmp_path / "models"),
    }


async def test_the_installed_entry_starts_a_working_server(tmp_path):
    # What the client does: run the entry as written, from an unrelated directory.
    home = tmp_path / "home"
    init_home(Settings(home=home))
    MemoryStore(Settings(home=home).memory_db).add("Anna's birthday is May 3")
    entry = server_entry("claude-desktop", home=home)
    env = dict(entry["env"])
    if "PYTHONPATH" in os.environ:  # only when the suite itself runs from a source tree
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    transport = StdioTransport(
        command=entry["command"], args=entry["args"], env=env, cwd=str(elsewhere)
    )
    async with fastmcp.Client(transport, timeout=120) as client:
        names = {t.name for t in await client.list_tools()}
        found = await client.call_tool("search_memory", {"query": "birthday"})
    assert names == {"ask", "search_memory", "give_feedback"}
    assert "Anna's birthday is May 3" in text(found)
