"""The spec: validation errors a user can act on, TOML that round-trips and keeps comments."""

from __future__ import annotations

import pytest

from homespun.mcp_servers.core import CORE_TOOL_DESCRIPTIONS
from homespun.spec import (
    Spec,
    SpecError,
    ToolServerSpec,
    diff_specs,
    load_spec,
    parse_spec,
    render_spec,
    save_spec,
)
from homespun.spec.defaults import default_spec, default_spec_text


@pytest.fixture
def default_text() -> str:
    return default_spec_text(CORE_TOOL_DESCRIPTIONS)


def test_default_spec_is_valid_and_lists_the_core_descriptions(default_text):
    spec = parse_spec(default_text)
    core = spec.tools.server("core")
    assert core.descriptions == CORE_TOOL_DESCRIPTIONS
    assert spec.engine.backend == "embedded"
    assert spec.agent.loop == "react"


def test_bad_type_names_file_and_dotted_field(tmp_path, default_text):
    path = tmp_path / "spec.toml"
    bad = default_text.replace("temperature = 0.0", 'temperature = "hot"')
    path.write_text(bad)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message
    assert "intelligence.temperature" in message
    assert "'hot'" in message
    assert path.read_text() == bad  # a failed load never rewrites the file


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("top_p = 0.95", "top_p = 1.5"), "intelligence.top_p"),
        (("max_turns = 6", "max_turns = 0"), "agent.max_turns"),
        (('loop = "react"', 'loop = "dfs"'), "agent.loop"),
        (("top_k = 5 ", "top_k = 5\ncolour = 1 "), "memory.colour"),
        (('backend = "embedded"', 'backend = "openai_compatible"'), "engine"),
        (('kind = "builtin"', 'kind = "http"'), "tools.servers[0]"),
    ],
)
def test_invalid_values_are_errors_naming_the_field(default_text, edit, field):
    old, new = edit
    assert old in default_text
    with pytest.raises(SpecError) as err:
        parse_spec(default_text.replace(old, new, 1), "spec.toml")
    assert any(f.startswith(field) for f in err.value.fields), err.value.fields


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text("[intelligence\nmodel = 'x'\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(path)


def test_missing_file_says_to_run_init(tmp_path):
    with pytest.raises(SpecError, match="homespun init"):
        load_spec(tmp_path / "nope.toml")


def test_save_keeps_comments_and_touches_only_changed_keys(tmp_path, default_text):
    path = tmp_path / "spec.toml"
    path.write_text(default_text)
    spec = load_spec(path)
    spec.intelligence.temperature = 0.7
    save_spec(spec, path)
    after = path.read_text()
    assert "temperature = 0.7      # 0..2" in after
    changed = [
        (a, b)
        for a, b in zip(default_text.splitlines(), after.splitlines(), strict=False)
        if a != b
    ]
    assert len(changed) == 1
    assert load_spec(path).intelligence.temperature == 0.7


def test_values_with_quotes_and_newlines_round_trip(tmp_path, default_text):
    path = tmp_path / "spec.toml"
    path.write_text(default_text)
    spec = load_spec(path)
    spec.agent.system_prompt = 'Say "hi" \\ then\nanswer with """triple""" quotes'
    spec.tools.servers.append(
        ToolServerSpec(
            name="ext",
            kind="stdio",
            command="python",
            args=["-c", "print('x')"],
            descriptions={"t": "a 'quoted' \"thing\""},
        )
    )
    spec.agent.few_shot = [{"user": "2+2?", "assistant": "4"}]
    save_spec(spec, path)
    back = load_spec(path)
    assert back == spec
    assert back.content_hash() == spec.content_hash()
    # removing the added server removes its table again
    back.tools.servers.pop()
    save_spec(back, path)
    assert 'name = "ext"' not in path.read_text()
    assert load_spec(path) == back


def test_hash_is_stable_and_sensitive():
    a, b = Spec(), Spec()
    assert a.content_hash() == b.content_hash()
    b.intelligence.top_k = 41
    assert a.content_hash() != b.content_hash()
    # the hash does not depend on dict insertion order
    c = Spec.model_validate(dict(reversed(list(Spec().to_data().items()))))
    assert c.content_hash() == a.content_hash()


def test_fresh_render_writes_every_field():
    text = render_spec(Spec())
    for key in ("repeat_penalty", "tool_call_format", "max_turns", "stagnation_k", "alpha"):
        assert key in text


def test_secrets_cannot_be_put_in_api_key_env():
    with pytest.raises(SpecError, match="engine"):
        parse_spec('[engine]\nbackend = "openai"\napi_key_env = "sk-live-123-abc"\n')


def test_anthropic_needs_native_tool_calls():
    with pytest.raises(SpecError, match="tool_call_format"):
        parse_spec('[engine]\nbackend = "anthropic"\n')
    spec = parse_spec('[engine]\nbackend = "anthropic"\ntool_call_format = "native"\n')
    assert spec.engine.backend == "anthropic"


def test_diff_lists_changed_fields(default_text):
    a = default_spec(CORE_TOOL_DESCRIPTIONS)
    b = a.model_copy(deep=True)
    b.intelligence.temperature = 0.5
    b.tools.servers[0].descriptions["calculator"] = "Adds things."
    changes = {c.field: (c.before, c.after) for c in diff_specs(a, b)}
    assert changes["intelligence.temperature"] == (0.0, 0.5)
    assert changes["tools.servers[0].descriptions.calculator"][1] == "Adds things."
    assert len(changes) == 2


def test_rendering_defaults_are_the_original_rendering(default_text):
    rendering = Spec().agent.rendering
    assert rendering.model_dump() == {
        "catalog_arguments": "names_types",
        "reply_protocol": "brief",
        "parallel_calls": False,
        "calls_as_list": False,
        "result_framing": "auto",
        "result_template": "Tool {name} returned:\n{result}",
        "error_template": "Tool {name} returned an error:\n{result}",
        "continuation": "",
        "no_tool_rule": "",
        "few_shot_style": "turns",
    }
    # the commented default spec writes the table out, with the same values
    assert "[agent.rendering]" in default_text
    assert parse_spec(default_text).agent.rendering == rendering


def test_rendering_edits_save_in_place_and_round_trip(tmp_path, default_text):
    path = tmp_path / "spec.toml"
    path.write_text(default_text)
    spec = load_spec(path)
    spec.agent.rendering.result_template = '<tool_result name="{name}">\n{result}\n</tool_result>'
    spec.agent.rendering.few_shot_style = "system_block"
    save_spec(spec, path)
    after = path.read_text()
    assert 'few_shot_style = "system_block"' in after
    assert "# names_types | descriptions | full_schema" in after  # comments kept
    assert load_spec(path) == spec


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('result_template = "Result: {output}"', "{output}"),
        ('error_template = "Tool {name} failed"', "must contain {result}"),
        ('few_shot_style = "inline"', "few_shot_style"),
        ("parallel_calls = 2", "parallel_calls"),
    ],
)
def test_bad_rendering_values_name_the_field(line, reason):
    with pytest.raises(SpecError) as err:
        parse_spec(f"[agent.rendering]\n{line}\n")
    assert "agent.rendering" in str(err.value) and reason in str(err.value)
