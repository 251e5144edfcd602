"""The notes connector over a real folder and a real SQLite FTS5 index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from homespun.connectors.notes import (
    DESCRIPTIONS,
    NoteIndex,
    create_notes_server,
    default_index_db,
    parse_note,
)
from homespun.connectors.registry import ConnectorConfigError
from homespun.mcp_servers.loader import ToolLoadError, open_tools
from homespun.spec import Spec, ToolServerSpec
from tests.mcp_helpers import assert_descriptions, call, open_builtin, refused

WHERE = "tools.servers[0].options"

GARDEN = """---
title: "Garden plan"
tags: [home, outdoors]
aliases:
  - Allotment
---
# Plants
Plant tomatoes in May. Buy seeds first, see [[Seed catalogue|the catalogue]].
"""


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    root = tmp_path / "vault"
    (root / "projects").mkdir(parents=True)
    (root / ".obsidian").mkdir()
    (root / "garden.md").write_text(GARDEN)
    (root / "projects" / "homespun.markdown").write_text(
        "# Homespun ideas\nConnectors for notes and the calendar. #idea\n"
    )
    (root / "todo.txt").write_text("Call the plumber about the leaking tap\n")
    (root / ".obsidian" / "workspace.md").write_text("hiddenword lives in the app settings\n")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n hiddenword")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.md"
    secret.write_text("bank pin is 1234 — outsideword\n")
    return secret


def make_server(vault: Path, settings, **extra):
    return create_notes_server({"path": str(vault), **extra}, where=WHERE, settings=settings)


def touch_changed(path: Path, text: str) -> None:
    """Rewrite a file and move its mtime clearly forward (some filesystems tick coarsely)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


async def test_search_matches_body_title_tags_and_wikilinks(vault, settings):
    server = make_server(vault, settings)
    hit = await call(server, "search_notes", query="tomatoes")
    assert hit.startswith("garden.md: Garden plan — ")
    assert "tomatoes" in hit
    assert (await call(server, "search_notes", query="outdoors")).startswith("garden.md:")
    assert (await call(server, "search_notes", query="catalogue")).startswith("garden.md:")
    assert (await call(server, "search_notes", query="allotment")).startswith("garden.md:")
    ideas = await call(server, "search_notes", query="what are my ideas about connectors?")
    assert ideas.startswith("projects/homespun.markdown: Homespun ideas — ")
    assert (await call(server, "search_notes", query="plumber")).startswith("todo.txt: todo — ")


async def test_hidden_folders_binaries_and_symlinks_are_not_indexed(vault, outside, settings):
    (vault / "link.md").symlink_to(outside)
    server = make_server(vault, settings)
    assert (await call(server, "search_notes", query="hiddenword")).startswith("No notes")
    assert (await call(server, "search_notes", query="outsideword")).startswith("No notes")


async def test_index_is_incremental_and_follows_edits_and_deletions(vault, settings, tmp_path):
    db = tmp_path / "index" / "notes.db"
    server = make_server(vault, settings, index_db=str(db))
    index = NoteIndex(vault, db)
    assert index.count() == 3
    first = index.sync()
    assert not first.changed  # the server indexed everything when it was created

    touch_changed(vault / "todo.txt", "Call the electrician about the lights\n")
    result = index.sync()
    assert (result.added, result.updated, result.removed) == ([], ["todo.txt"], [])

    touch_changed(vault / "todo.txt", "Call the roofer\n")
    # the server syncs before every search: the edit is found without a restart
    assert (await call(server, "search_notes", query="roofer")).startswith("todo.txt:")
    assert (await call(server, "search_notes", query="electrician")).startswith("No notes")

    (vault / "garden.md").unlink()
    (vault / "projects" / "new.md").write_text("Book the piano tuner\n")
    result = index.sync()
    assert result.removed == ["garden.md"]
    assert result.added == ["projects/new.md"]
    assert result.updated == []
    assert (await call(server, "search_notes", query="tomatoes")).startswith("No notes")
    assert (await call(server, "search_notes", query="piano")).startswith("projects/new.md:")
    assert index.count() == 3


async def test_default_index_lives_under_homespun_home(vault, settings):
    make_server(vault, settings)
    db = default_index_db(settings, vault.resolve())
    assert db.exists() and db.is_relative_to(settings.home)
    assert db.parent.name == "connectors" and db.name.startswith("notes-")


async def test_read_note_returns_the_file(vault, settings):
    server = make_server(vault, settings)
    assert await call(server, "read_note", path="garden.md") == GARDEN
    assert "plumber" in await call(server, "read_note", path="todo.txt")
    assert "Homespun" in await call(server, "read_note", path="projects/homespun.markdown")


async def test_read_note_never_leaves_the_vault(vault, outside, settings):
    (vault / "escape.md").symlink_to(outside)
    (vault / "alias.md").symlink_to(vault / "garden.md")
    (vault / "elsewhere").symlink_to(outside.parent, target_is_directory=True)
    server = make_server(vault, settings)
    for path in ("../secret.md", str(outside), "projects/../../secret.md"):
        message = await refused(server, "read_note", path=path)
        assert "outside the notes folder" in message
        assert "1234" not in message
    for path in ("escape.md", "alias.md", "elsewhere/secret.md"):
        assert "link" in await refused(server, "read_note", path=path)
    assert "hidden folder" in await refused(server, "read_note", path=".obsidian/workspace.md")
    assert "not a note" in await refused(server, "read_note", path="photo.png")
    assert "No note" in await refused(server, "read_note", path="missing.md")


def test_front_matter_title_tags_and_fallbacks():
    note = parse_note(GARDEN, fallback_title="garden")
    assert note.title == "Garden plan"
    assert note.tags == "home, outdoors"
    assert "[[Seed catalogue|the catalogue]]" in note.body  # wikilinks stay as text
    assert parse_note("# Heading here\ntext #inline", "x").title == "Heading here"
    assert parse_note("# Heading here\ntext #inline", "x").tags == "inline"
    assert parse_note("no heading", "file-stem").title == "file-stem"
    block = parse_note("---\ntitle: Trip\ntags:\n  - travel\n  - '#japan'\n---\nbody", "t")
    assert (block.title, block.tags) == ("Trip", "travel, japan")


def test_option_errors_name_the_field(tmp_path, settings):
    with pytest.raises(
        ConnectorConfigError, match=r"tools\.servers\[0\]\.options\.path: is required"
    ):
        create_notes_server({}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.path: .* not an existing folder"):
        create_notes_server({"path": str(tmp_path / "nope")}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.paht: unknown option"):
        create_notes_server({"paht": str(tmp_path)}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.path: must be a string"):
        create_notes_server({"path": 3}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.path: refers to \$\{NO_SUCH_VAR_"):
        create_notes_server({"path": "${NO_SUCH_VAR_HS}/notes"}, where=WHERE, settings=settings)


def test_env_and_home_are_expanded_in_the_path(vault, settings, monkeypatch):
    monkeypatch.setenv("HS_TEST_VAULT", str(vault))
    create_notes_server({"path": "${HS_TEST_VAULT}"}, where=WHERE, settings=settings)
    monkeypatch.setenv("HOME", str(vault.parent))
    create_notes_server({"path": "~/vault"}, where=WHERE, settings=settings)


async def test_loads_through_the_spec_with_a_description_override(vault, settings):
    overrides = {"read_note": "Open a note from the vault."}
    async with open_builtin(
        settings, "notes", "notes", options={"path": str(vault)}, descriptions=overrides
    ) as loaded:
        tools = loaded.by_name()
        assert set(tools) == {"search_notes", "read_note"}
        assert tools["read_note"].description == "Open a note from the vault."
        assert_descriptions(tools, DESCRIPTIONS, overrides)
        result = await tools["search_notes"].ainvoke({"query": "plumber"})
        assert "todo.txt" in str(result)


async def test_bad_options_in_the_spec_fail_the_load_with_the_dotted_name(tmp_path, settings):
    spec = Spec(
        tools={
            "servers": [
                ToolServerSpec(name="core", kind="builtin", builtin="core"),
                ToolServerSpec(
                    name="notes",
                    kind="builtin",
                    builtin="notes",
                    options={"path": str(tmp_path / "missing")},
                ),
            ]
        }
    )
    with pytest.raises(ToolLoadError, match=r"tools\.servers\[1\]\.options\.path"):
        async with open_tools(spec, settings):
            pass
