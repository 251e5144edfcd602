"""The command line as a user meets it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from homespun.cli import app
from homespun.stores.traces import TraceStore

runner = CliRunner()


def test_init_writes_a_commented_spec_under_git(home):
    res = runner.invoke(app, ["init"])
    assert res.exit_code == 0, res.output
    text = (home / "spec.toml").read_text()
    assert text.startswith("# homespun spec")
    assert (home / ".git").is_dir()
    again = runner.invoke(app, ["init"])
    assert "Kept the existing spec" in again.output


def test_init_with_a_model_writes_that_model_and_its_measured_defaults(home):
    from homespun.spec import load_spec
    from homespun.spec.defaults import MODEL_DEFAULTS

    res = runner.invoke(app, ["init", "--model", "qwen2.5-coder-1.5b"])
    assert res.exit_code == 0, res.output
    assert "models pull qwen2.5-coder-1.5b --allow-third-party" in res.output
    text = (home / "spec.toml").read_text()
    assert text.startswith("# homespun spec") and "# completion cap per model call" in text
    spec = load_spec(home / "spec.toml")
    assert spec.intelligence.model == "qwen2.5-coder-1.5b"
    for dotted, values in MODEL_DEFAULTS["qwen2.5-coder-1.5b"].items():
        table = spec
        for part in dotted.split("."):
            table = getattr(table, part)
        for key, value in values.items():
            assert getattr(table, key) == value, f"{dotted}.{key}"
    bad = runner.invoke(app, ["init", "--force", "--model", "gpt-99"])
    assert bad.exit_code == 1 and "neither a catalog model" in bad.output
    assert load_spec(home / "spec.toml").intelligence.model == "qwen2.5-coder-1.5b"


def test_spec_validate_names_the_bad_field_and_leaves_the_file(home):
    runner.invoke(app, ["init"])
    path = home / "spec.toml"
    bad = path.read_text().replace("temperature = 0.0", 'temperature = "hot"')
    path.write_text(bad)
    res = runner.invoke(app, ["spec", "validate"])
    assert res.exit_code == 1
    assert "intelligence.temperature" in res.output
    assert path.read_text() == bad


def test_spec_show_and_diff(home, tmp_path):
    runner.invoke(app, ["init"])
    shown = runner.invoke(app, ["spec", "show"])
    assert shown.exit_code == 0 and "tool_call_format" in shown.output
    other = tmp_path / "other.toml"
    other.write_text(
        (home / "spec.toml").read_text().replace('loop = "react"', 'loop = "plan_execute"')
    )
    res = runner.invoke(app, ["spec", "diff", str(home / "spec.toml"), str(other)])
    assert res.exit_code == 0
    assert "agent.loop: 'react' -> 'plan_execute'" in res.output


def test_ask_without_a_spec_says_what_to_do(home):
    res = runner.invoke(app, ["ask", "hi"])
    assert res.exit_code == 1 and "homespun init" in res.output


def test_models_list_shows_the_catalog(home):
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0
    assert "smollm2-135m" in res.output and "default" in res.output


def test_feedback_and_traces_show(home, settings):
    store = TraceStore(settings.traces_db)
    t = store.start(
        query="what is up",
        spec_hash="h",
        thread_id="t",
        loop="react",
        model="m",
        backend="embedded",
    )
    t.status, t.final_answer = "ok", "not much"
    store.finish(t)
    assert runner.invoke(app, ["feedback", t.id, "up"]).exit_code == 0
    assert store.get(t.id).feedback == 1.0
    bad = runner.invoke(app, ["feedback", t.id, "7"])
    assert bad.exit_code == 1 and "between 0 and 1" in bad.output
    shown = runner.invoke(app, ["traces", "show", t.id[:5]])
    assert shown.exit_code == 0 and "not much" in shown.output
    listed = runner.invoke(app, ["traces", "list"])
    assert t.id in listed.output


@pytest.mark.slow
def test_ask_with_embedded_engine_records_a_real_calculator_call(home, model_path):
    assert runner.invoke(app, ["init"]).exit_code == 0
    spec_text = (home / "spec.toml").read_text()
    assert 'tool_call_format = "constrained_json"' in spec_text
    res = runner.invoke(app, ["ask", "What is 37 * 41? Use the calculator."])
    store = TraceStore(home / "traces.db")
    trace = store.list(limit=1)[0]
    calls = [c for c in trace.tool_calls if c.name == "calculator"]
    assert calls, (res.output, trace.messages)
    call = calls[0]
    assert call.server == "core"  # it went through the MCP server
    assert isinstance(call.arguments.get("expression"), str)
    assert (call.result is None) != (call.error is None)  # the tool really answered
    assert trace.prompt_tokens > 0 and trace.model_calls >= 1
    assert json.dumps(trace.messages)  # the conversation is stored
