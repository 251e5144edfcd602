"""`learning.teacher = "embedded:NAME"`: a local model in this process as the teacher.

llama.cpp itself is not loaded here: the seam is the call that starts a server, which gets an
`EmbeddedStub` answering through the real in-process transport and the real OpenAI client,
so the request bodies are what llama.cpp would receive. The real model runs in
tests/cli/test_learning_cli.py (slow).
"""

from __future__ import annotations

import json

import pytest
from langchain_anthropic import ChatAnthropic

from homespun.engines.cost import CostMeter, max_output_tokens, price_for
from homespun.engines.factory import TEACHER_CONTEXT
from homespun.engines.providers import (
    EMBEDDED_TEACHER_MAX_TOKENS,
    EMBEDDED_TEACHER_TIMEOUT_S,
    TeacherConfigError,
    bound_reply_tokens,
    build_teacher,
    parse_teacher,
)
from homespun.engines.testing import ScriptedChatModel
from homespun.engines.tool_calls import ToolCallingChatModel
from homespun.learning.proposers import LLMProposer
from homespun.learning.proposers.llm import SUBMIT_PROPOSALS, proposals_reply_tokens
from homespun.spec import Settings
from tests.learning.test_proposers import _ctx
from tests.stubs import EmbeddedStub


def reply_tokens(body: dict) -> int | None:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def schema_tools(body: dict) -> set[str]:
    """The tool names the reply schema of a constrained request allows."""
    fmt = body.get("response_format") or {}
    text = json.dumps(fmt.get("json_schema", {}).get("schema", {}))
    return {name for name in ("submit_proposals", "report_diagnosis") if f'"{name}"' in text}


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "teacher.gguf"
    path.write_bytes(b"GGUF")  # enough for a path to resolve; the stub loads nothing
    return path


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    """Settings whose models folder is empty: nothing is pulled."""
    return Settings(home=tmp_path / "home", models_dir=tmp_path / "models")


@pytest.fixture
def engine(monkeypatch):
    """Replaces the server start: `engine.started` lists each start's settings and
    `engine.stub` answers (set `engine.stub.reply` to script the replies)."""

    class Engine:
        started: list[dict] = []
        stub = EmbeddedStub()

    def start(model_path, *, n_ctx, threads, parallel, log_file, adapters=()):
        Engine.started.append(
            {"model": model_path.name, "n_ctx": n_ctx, "threads": threads, "parallel": parallel}
        )
        return Engine.stub

    Engine.started = []
    monkeypatch.setattr("homespun.engines.embedded.get_embedded_server", start)
    return Engine


# --------------------------------------------------------------------------- ids and errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("embedded:smollm2-135m", ("embedded", "smollm2-135m")),
        ("embedded:qwen2.5-coder-1.5b", ("embedded", "qwen2.5-coder-1.5b")),
        ("embedded:/models/Qwen.Q4_K_M.GGUF", ("embedded", "/models/Qwen.Q4_K_M.GGUF")),
    ],
)
def test_parse_teacher_takes_catalog_names_and_gguf_paths(name, expected):
    assert parse_teacher(name) == expected


def test_an_embedded_teacher_that_is_no_model_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="learning.teacher") as exc:
        parse_teacher("embedded:gpt-5")
    message = str(exc.value)
    assert "neither a catalog model" in message and "homespun models list" in message
    with pytest.raises(ValueError) as exc:
        parse_teacher("mistral:7b")
    assert "'embedded:qwen2.5-coder-1.5b'" in str(exc.value)  # the accepted forms say it


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("qwen2.5-coder-1.5b", "run `homespun models pull qwen2.5-coder-1.5b --allow-third-party`"),
        ("smollm2-135m", "run `homespun models pull smollm2-135m`"),
        ("/no/such/teacher.gguf", "does not exist"),
    ],
)
def test_a_teacher_that_is_not_there_is_one_line_naming_the_field_and_the_fix(
    local_settings, model, says
):
    with pytest.raises(TeacherConfigError) as exc:
        build_teacher(f"embedded:{model}", settings=local_settings)
    message = str(exc.value)
    assert message.startswith(f"learning.teacher = 'embedded:{model}': ")
    assert says in message and "\n" not in message


def test_a_file_that_is_no_gguf_is_one_line_naming_the_field(local_settings, tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model")
    with pytest.raises(TeacherConfigError) as exc:
        build_teacher(f"embedded:{fake}", settings=local_settings)  # refused before loading
    message = str(exc.value)
    assert message.startswith(f"learning.teacher = 'embedded:{fake}': ")
    assert "is not a GGUF file" in message and "\n" not in message


# --------------------------------------------------------------------------- the model


def test_the_embedded_teacher_decodes_under_json_schemas_on_a_server_of_its_own(
    engine, local_settings, gguf
):
    teacher = build_teacher(f"embedded:{gguf}", settings=local_settings)
    assert engine.started == [
        {"model": "teacher.gguf", "n_ctx": TEACHER_CONTEXT, "threads": 0, "parallel": 1}
    ]
    assert isinstance(teacher, ToolCallingChatModel)
    assert teacher.tool_call_format == "constrained_json"
    assert teacher.json_transport == "openai_response_format"
    # Never the 4096 tokens of a remote teacher; a longer timeout for a CPU.
    assert max_output_tokens(teacher) == EMBEDDED_TEACHER_MAX_TOKENS < 4096
    assert teacher.inner.request_timeout == EMBEDDED_TEACHER_TIMEOUT_S
    assert teacher.inner.max_retries == 0  # a retry is a metered call of our own
    assert price_for(f"embedded:{gguf}") == ((0.0, 0.0), True)
    assert CostMeter(session_cap_usd=0.0, total_cap_usd=0.0, model=f"embedded:{gguf}").free


def test_reply_bounds_apply_to_schema_decoded_teachers_only(engine, local_settings, gguf):
    local = build_teacher(f"embedded:{gguf}", settings=local_settings)
    bounded = bound_reply_tokens(local, 300)
    assert max_output_tokens(bounded) == 300
    assert max_output_tokens(local) == EMBEDDED_TEACHER_MAX_TOKENS  # a copy, not a change
    # A remote model may spend its tokens on reasoning first: it keeps its own limit.
    remote = ChatAnthropic(model="claude-opus-4-6", api_key="sk-ant-x", max_tokens=4096)
    assert bound_reply_tokens(remote, 300) is remote
    scripted = ScriptedChatModel()
    assert bound_reply_tokens(scripted, 300) is scripted


async def test_the_embedded_teachers_proposals_are_schema_decoded_bounded_and_free(
    engine, local_settings, gguf
):
    proposal = {
        "target_cluster": "arithmetic-no_tool_call",
        "rationale": "use the calculator",
        "ops": [{"op": "set_agent_param", "param": "tool_policy", "value": "required_first"}],
    }
    engine.stub.reply = lambda body: json.dumps(
        {"tool": SUBMIT_PROPOSALS, "arguments": {"proposals": [proposal]}}
    )
    teacher = build_teacher(f"embedded:{gguf}", settings=local_settings)
    meter = CostMeter(session_cap_usd=0.0, total_cap_usd=0.0, model=f"embedded:{gguf}")
    proposals = await LLMProposer().propose(_ctx(teacher=teacher, meter=meter, max_proposals=2))

    assert [p.ops[0].op for p in proposals] == ["set_agent_param"]
    (body,) = engine.stub.bodies
    assert body["response_format"]["type"] == "json_schema"
    assert schema_tools(body) == {"submit_proposals"}  # the one tool, no free-text answer
    branches = body["response_format"]["json_schema"]["schema"]["anyOf"]
    assert not any("answer" in b.get("properties", {}) for b in branches)
    assert reply_tokens(body) == proposals_reply_tokens(2) < EMBEDDED_TEACHER_MAX_TOKENS
    assert "tools" not in body  # the schema carries the tool, not the provider's tool API
    assert (meter.calls, meter.spent_usd, meter.input_tokens, meter.output_tokens) == (1, 0, 3, 2)
    assert meter.seconds > 0


async def test_an_invalid_embedded_reply_is_asked_once_more_then_recorded(
    engine, local_settings, gguf
):
    bad = {
        "target_cluster": "arithmetic-no_tool_call",
        "rationale": "warmer",
        "ops": [{"op": "set_generation_param", "param": "warmth", "value": 2}],
    }
    engine.stub.reply = lambda body: json.dumps(
        {"tool": SUBMIT_PROPOSALS, "arguments": {"proposals": [bad]}}
    )
    teacher = build_teacher(f"embedded:{gguf}", settings=local_settings)
    proposer = LLMProposer()
    assert await proposer.propose(_ctx(teacher=teacher)) == []
    assert len(engine.stub.bodies) == 2  # one retry, never more
    retry = engine.stub.bodies[1]["messages"]
    assert "warmth" in json.dumps(retry)  # the retry says what failed validation
    assert proposer.last_report.notes[-1] == "no valid proposal in 2 teacher replies"
