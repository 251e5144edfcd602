"""The teacher: its id, its price, its budgets, and the real client libraries talking to a
loopback stub of the Anthropic and OpenAI HTTP APIs (their SDKs use httpx2, which respx
does not patch)."""

from __future__ import annotations

import json

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from homespun.engines.cost import PRICES_PER_MTOK, BudgetExceeded, CostMeter, Usage, price_for
from homespun.engines.providers import TeacherConfigError, build_teacher, parse_teacher
from homespun.learning import diagnosis as diagnosis_mod
from homespun.learning.diagnosis import FailedRun, teacher_diagnosis
from homespun.learning.tasks import Grade, Task
from homespun.spec import Spec
from homespun.stores.traces import ToolCallRecord, Trace
from tests.stubs import anthropic_tool_use, chat_completion

# --------------------------------------------------------------------------- ids and prices


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("anthropic:claude-opus-4-6", ("anthropic", "claude-opus-4-6")),
        ("openai:gpt-5", ("openai", "gpt-5")),
        ("ollama:qwen2.5:14b", ("ollama", "qwen2.5:14b")),
        (
            "openai_compatible:qwen@http://127.0.0.1:8000/v1",
            ("openai_compatible", "qwen@http://127.0.0.1:8000/v1"),
        ),
    ],
)
def test_parse_teacher(name, expected):
    assert parse_teacher(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "claude-opus-4-6",
        "google:gemini",
        "anthropic:",
        "openai_compatible:qwen",
        "openai_compatible:qwen@localhost",
    ],
)
def test_parse_teacher_rejects_bad_forms_naming_the_field(name):
    with pytest.raises(ValueError, match="learning.teacher") as exc:
        parse_teacher(name)
    assert "openai_compatible:MODEL@" in str(exc.value)  # says what would be accepted


def test_prices_cover_the_teachers_we_support():
    for prefix in (
        "claude-opus-4",
        "claude-sonnet-4",
        "claude-haiku-4",
        "gpt-5",
        "gpt-4.1",
        "gpt-4o",
    ):
        assert prefix in PRICES_PER_MTOK
    assert price_for("anthropic:claude-opus-4-6") == ((5.0, 25.0), True)
    assert price_for("claude-opus-4-20250514") == ((15.0, 75.0), True)
    assert price_for("gpt-4o-mini-2024-07-18") == ((0.15, 0.6), True)
    assert price_for("ollama:qwen2.5:14b") == ((0.0, 0.0), True)
    assert price_for("openai_compatible:gpt-4o@http://127.0.0.1:8000/v1")[0] == (0.0, 0.0)
    # an unknown model is charged like the dearest known one, never as free
    (inp, out), known = price_for("mystery-model")
    assert not known and (inp, out) == max(PRICES_PER_MTOK.values(), key=sum)


# --------------------------------------------------------------------------- cost meter


def test_meter_checks_before_and_records_after():
    meter = CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="claude-opus-4-6")
    meter.check(10_000, 4_096)  # fine: $0.05 + $0.10
    assert meter.record(Usage(10_000, 2_000)) == pytest.approx(0.05 + 0.05)
    assert meter.record({"input_tokens": 1_000_000, "output_tokens": 0}) == pytest.approx(5.0)
    assert meter.calls == 2 and meter.spent_usd == pytest.approx(5.1)
    with pytest.raises(BudgetExceeded) as exc:
        meter.check(0, 0)  # the cap is spent: not even a tiny call may start
    assert exc.value.budget == "session"
    assert "$5.1000" in str(exc.value) and "$1.00" in str(exc.value)
    assert "max_cost_per_session_usd" in str(exc.value)


def test_meter_reads_usage_from_an_ai_message_and_charges_a_missing_one():
    meter = CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="gpt-4o")
    msg = AIMessage(
        content="x",
        usage_metadata={"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100},
    )
    assert meter.record(msg) == pytest.approx((1000 * 2.5 + 100 * 10) / 1e6)
    meter.check(1000, 1000)
    assert meter.record(AIMessage(content="no usage")) == pytest.approx(12.5e-3)  # estimate
    assert meter.record({"prompt_tokens": 1000, "completion_tokens": 0}) == pytest.approx(2.5e-3)
    assert meter.calls == 3 and meter.estimated_calls == 1


def test_total_budget_counts_earlier_sessions():
    spec = Spec()
    spec.learning.teacher = "anthropic:claude-opus-4-6"
    spec.learning.budgets.max_total_cost_usd = 50.0
    meter = CostMeter.from_spec(spec.learning, spent_before_usd=49.99)
    with pytest.raises(BudgetExceeded, match="total budget") as exc:
        meter.check(1_000, 1_000)
    assert "max_total_cost_usd" in str(exc.value) and "$49.99" in str(exc.value)


def test_local_teachers_never_hit_a_budget():
    meter = CostMeter(session_cap_usd=0.0, total_cap_usd=0.0, model="ollama:qwen2.5:14b")
    meter.check(1_000_000, 100_000)
    meter.record(Usage(1_000_000, 100_000))
    meter.check(1_000_000, 100_000)
    assert meter.spent_usd == 0.0 and meter.calls == 1


# --------------------------------------------------------------------------- building


def test_build_teacher_needs_a_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(TeacherConfigError, match="ANTHROPIC_API_KEY"):
        build_teacher("anthropic:claude-opus-4-6")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TeacherConfigError, match="OPENAI_API_KEY"):
        build_teacher("openai:gpt-5")


def test_build_teacher_makes_the_provider_model(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    opus = build_teacher("anthropic:claude-opus-4-6", max_tokens=2048)
    assert isinstance(opus, ChatAnthropic)
    assert (opus.model, opus.max_tokens, opus.max_retries) == ("claude-opus-4-6", 2048, 0)
    assert isinstance(build_teacher("openai:gpt-5"), ChatOpenAI)
    local = build_teacher("openai_compatible:qwen@http://127.0.0.1:8000/v1")
    assert isinstance(local, ChatOpenAI) and local.model_name == "qwen"
    assert str(local.openai_api_base) == "http://127.0.0.1:8000/v1"
    ollama = build_teacher("ollama:qwen2.5:14b@http://127.0.0.1:11434")
    assert isinstance(ollama, ChatOllama)
    assert (ollama.model, ollama.base_url) == ("qwen2.5:14b", "http://127.0.0.1:11434")


# --------------------------------------------------------------------------- HTTP stub


@pytest.fixture
def stub(http_stub):
    """(base URL, the RecordingStub): tests queue `replies` (status, JSON) and read
    `requests` (path, raw body) and `bodies` (parsed JSON)."""
    return http_stub.base_url, http_stub


def _anthropic_tool_use(name: str, args: dict, usage: tuple[int, int]) -> tuple[int, dict]:
    return 200, anthropic_tool_use(name, args, usage)


def _openai_tool_call(name: str, args: dict, usage: tuple[int, int]) -> tuple[int, dict]:
    return 200, chat_completion(
        None,
        model="gpt-5",
        finish_reason="tool_calls",
        usage=usage,
        id="chatcmpl-1",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
        ],
    )


# Private data planted in the failing traces: none of it may reach the teacher.
PRIVATE = [
    "alice.smith@example.com",
    "+1 415 555 0134",
    "(415) 555-0134",
    "+44 20 7946 0958",
    "sk-ant-api03-Zx81Qm4kLw0PqRt7Yv2Na9Hs3Jd6Fb5Gc1Ke-AbCdEfGh",
    "sk-proj-9aK2mQ7xLp4Rt8Vw1Yz3Bc6Dn0Fg5Hj",
    "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
    "xoxb-2048123456-4096123456789-Qw3rTy8UiOp2AsDfGhJkLz1X",
    "4111 1111 1111 1111",
    "DE89370400440532013000",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
]
SENSITIVE_MARKER = "my therapist said"


def _trace(query: str, **kw) -> Trace:
    return Trace(
        id="t",
        created_at=0.0,
        query=query,
        spec_hash="h",
        thread_id="th",
        loop="react",
        model="smollm2",
        backend="embedded",
        status="ok",
        **kw,
    )


def _failures() -> list[FailedRun]:
    no = Grade(success=False, score=0.0, reason="expected 1517")
    q1 = f"What is 37 * 41? Mail the result to {PRIVATE[0]} or call {PRIVATE[1]}"
    q2 = f"Save Bob's numbers {PRIVATE[2]} and {PRIVATE[3]}; my key is {PRIVATE[4]}"
    q3 = "What did I save about the bank?"
    return [
        FailedRun(
            Task("arith-1", q1, "arithmetic"),
            _trace(q1, final_answer=f"1500. Sent to {PRIVATE[0]}."),
            no,
        ),
        FailedRun(
            Task("mem-1", q2, "memory"),
            _trace(
                q2,
                tool_calls=[
                    ToolCallRecord(
                        "memory_save",
                        {"txt": f"Bob {PRIVATE[2]}, token {PRIVATE[5]}"},
                        error="1 validation error: text Field required",
                    )
                ],
                final_answer="Saved.",
            ),
            Grade(False, 0.0, "memory not saved"),
        ),
        FailedRun(
            Task("mem-2", q3, "memory"),
            _trace(
                q3,
                tool_calls=[
                    ToolCallRecord(
                        "memory_search",
                        {"query": "bank"},
                        result=f"card {PRIVATE[8]}, IBAN {PRIVATE[9]}, gh {PRIVATE[6]}, "
                        f"slack {PRIVATE[7]}, session {PRIVATE[10]}",
                    )
                ],
                final_answer=f"Your IBAN is {PRIVATE[9]}",
            ),
            Grade(False, 0.0, "did not mention the note"),
        ),
        FailedRun(
            Task("diary-1", "Summarise my diary", "memory"),
            _trace(
                f"Summarise my diary: {SENSITIVE_MARKER} ...", sensitive=True, final_answer="ok"
            ),
            Grade(False, 0.0, ""),
        ),
    ]


TOTALS = {"arithmetic": 4, "memory": 5, "files": 3}

REPORT = {
    "clusters": [
        {
            "id": "memory-args",
            "name": "memory_save called with the wrong argument name",
            "categories": ["memory"],
            "task_ids": ["mem-1", "mem-2"],
            "skill_gap": "It writes 'txt' instead of 'text' and does not read search results.",
        },
        {
            "id": "arith",
            "name": "Multiplies without the calculator",
            "categories": ["arithmetic", "weather"],
            "task_ids": ["arith-1"],
            "skill_gap": "It multiplies two-digit numbers in its head.",
            "student_failure_rate": 0.9,
        },
    ],
    "summary": "Two failure modes.",
}


async def test_anthropic_teacher_diagnoses_through_the_real_client(stub, monkeypatch):
    url, server = stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    server.replies = [
        _anthropic_tool_use("show_trace", {"task_id": "mem-2"}, (1200, 80)),
        _anthropic_tool_use("report_diagnosis", REPORT, (2000, 300)),
    ]
    teacher = build_teacher("anthropic:claude-opus-4-6", base_url=url)
    meter = CostMeter(session_cap_usd=5.0, total_cap_usd=50.0, model="anthropic:claude-opus-4-6")
    d, md = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter)

    assert [r.path for r in server.requests] == ["/v1/messages", "/v1/messages"]
    assert d.source == "teacher" and d.summary == "Two failure modes."
    memory, arith = d.clusters
    assert (memory.id, memory.task_ids, memory.student_failure_rate) == (
        "memory-args",
        ["mem-1", "mem-2"],
        3 / 5,
    )  # the sensitive failure counts too
    assert (arith.categories, arith.student_failure_rate) == (["arithmetic"], 1 / 4)
    assert "'weather'" in md

    # What went over the wire: the traces, scrubbed, and nothing sensitive.
    sent = "".join(r.raw for r in server.requests)
    for private in PRIVATE:
        assert private not in sent
        assert json.dumps(private)[1:-1] not in sent
    assert SENSITIVE_MARKER not in sent
    assert "37 * 41" in sent and "<EMAIL>" in sent and "<PHONE>" in sent
    assert "<SECRET>" in sent and "<CARD>" in sent and "<IBAN>" in sent
    first, second = server.bodies
    assert {t["name"] for t in first["tools"]} == {
        "show_trace",
        "list_categories",
        "search_traces",
        "report_diagnosis",
    }
    assert first["tool_choice"] == {"type": "any"}
    report_tool = next(t for t in first["tools"] if t["name"] == "report_diagnosis")
    assert "clusters" in json.dumps(report_tool["input_schema"])
    tool_results = [
        block
        for m in second["messages"]
        if isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "tool_result"
    ]
    assert tool_results[0]["tool_use_id"] == "toolu_show_trace"
    assert "memory_search" in json.dumps(tool_results[0]["content"])

    # What it cost: exactly the usage the API reported, at Opus 4.6 prices.
    assert meter.calls == 2
    assert (meter.input_tokens, meter.output_tokens) == (3200, 380)
    assert meter.spent_usd == pytest.approx((3200 * 5 + 380 * 25) / 1e6)
    assert f"${meter.spent_usd:.4f}" in md


async def test_session_cap_below_one_call_stops_before_any_request(stub, monkeypatch):
    url, server = stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    server.replies = [_anthropic_tool_use("report_diagnosis", REPORT, (10, 10))]
    teacher = build_teacher("anthropic:claude-opus-4-6", base_url=url)
    # One call may write 4096 tokens: $0.10 at $25/M, more than the $0.01 cap.
    meter = CostMeter(session_cap_usd=0.01, total_cap_usd=50.0, model="claude-opus-4-6")
    with pytest.raises(BudgetExceeded, match="session budget") as exc:
        await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter)
    assert server.bodies == []
    assert exc.value.cap_usd == 0.01 and exc.value.next_call_usd > 0.1
    assert meter.calls == 0 and meter.spent_usd == 0.0


async def test_total_cap_stops_before_any_request(stub, monkeypatch):
    url, server = stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    teacher = build_teacher("anthropic:claude-opus-4-6", base_url=url)
    meter = CostMeter(
        session_cap_usd=5.0, total_cap_usd=50.0, spent_before_usd=49.95, model="claude-opus-4-6"
    )
    with pytest.raises(BudgetExceeded, match="total budget"):
        await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter)
    assert server.bodies == []


async def test_an_overloaded_api_is_retried_and_every_attempt_counted(stub, monkeypatch):
    url, server = stub
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setattr(diagnosis_mod, "RETRY_DELAYS_S", (0.0, 0.0))
    server.replies = [
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        _anthropic_tool_use("report_diagnosis", REPORT, (2000, 300)),
    ]
    teacher = build_teacher("anthropic:claude-opus-4-6", base_url=url)
    meter = CostMeter(session_cap_usd=5.0, total_cap_usd=50.0, model="claude-opus-4-6")
    d, _ = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter)
    assert len(server.bodies) == 2 and d.source == "teacher"
    assert meter.calls == 2  # the failed attempt is a call too ...
    # ... and may still be billed, so it is charged at its estimate (never as free).
    assert meter.estimated_calls == 1
    assert meter.spent_usd - (2000 * 5 + 300 * 25) / 1e6 >= meter.cost(0, 4096)


async def test_openai_teacher_diagnoses_through_the_real_client(stub, monkeypatch):
    url, server = stub
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server.replies = [_openai_tool_call("report_diagnosis", REPORT, (3000, 400))]
    teacher = build_teacher("openai:gpt-5", base_url=url + "/v1")
    meter = CostMeter(session_cap_usd=5.0, total_cap_usd=50.0, model="openai:gpt-5")
    d, md = await teacher_diagnosis(_failures(), TOTALS, teacher=teacher, meter=meter)
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]
    body = server.bodies[0]
    assert body["model"] == "gpt-5" and body["tool_choice"] == "required"
    assert [c.id for c in d.clusters] == ["memory-args", "arith"]
    sent = server.requests[0].raw
    for private in PRIVATE:
        assert private not in sent and json.dumps(private)[1:-1] not in sent
    assert SENSITIVE_MARKER not in sent and "<EMAIL>" in sent
    assert meter.spent_usd == pytest.approx((3000 * 1.25 + 400 * 10) / 1e6)


# --------------------------------------------------------------------------- metered calls


def test_estimate_tokens_is_chars_over_four_with_tool_calls_and_schemas():
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool as make_tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from homespun.engines.cost import estimate_tokens

    assert estimate_tokens([HumanMessage("x" * 8)]) == 2
    assert estimate_tokens([HumanMessage("x" * 9)]) == 3  # rounded up, never under
    call = AIMessage(
        content="", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]
    )
    assert estimate_tokens([call]) > 0  # a reply of tool calls only still has a size

    @make_tool
    def lookup(query: str) -> str:
        """Look something up."""
        return query

    schema = convert_to_openai_tool(lookup)
    with_tool = estimate_tokens([HumanMessage("x" * 8)], tools=[lookup])
    assert with_tool == -(-(8 + len(json.dumps(schema))) // 4)
    assert estimate_tokens([HumanMessage("x" * 8)], tools=[schema]) == with_tool


def _meter() -> CostMeter:
    return CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="claude-opus-4-6")


async def test_metered_call_checks_before_and_records_the_reply_after():
    from langchain_core.messages import HumanMessage

    from homespun.engines.cost import metered_call
    from homespun.engines.testing import ScriptedChatModel

    model = ScriptedChatModel(script=["hi"], usage={"input_tokens": 1000, "output_tokens": 100})
    meter = _meter()
    reply = await metered_call(meter, model, [HumanMessage("hello")], max_output_tokens=50)
    assert reply.content == "hi" and len(model.calls) == 1
    assert meter.calls == 1 and meter.estimated_calls == 0
    assert meter.spent_usd == pytest.approx((1000 * 5 + 100 * 25) / 1e6)


async def test_metered_call_charges_a_failed_call_at_the_estimate_and_reraises():
    from langchain_core.messages import HumanMessage

    from homespun.engines.cost import estimate_tokens, metered_call, metered_call_sync
    from homespun.engines.testing import ScriptedChatModel

    def boom(_messages):
        raise ConnectionError("reset by peer")

    messages = [HumanMessage("x" * 400)]
    expected = _meter().cost(estimate_tokens(messages), 2048)
    model = ScriptedChatModel(script=[boom, boom])
    meter = _meter()
    with pytest.raises(ConnectionError, match="reset by peer"):
        await metered_call(meter, model, messages, max_output_tokens=2048)
    assert len(model.calls) == 1  # it was called ...
    assert meter.calls == meter.estimated_calls == 1  # ... and is never free
    assert meter.spent_usd == pytest.approx(expected)
    with pytest.raises(ConnectionError):
        metered_call_sync(meter, model, messages, max_output_tokens=2048)
    assert meter.calls == 2 and meter.spent_usd == pytest.approx(2 * expected)


async def test_metered_call_over_budget_never_invokes_the_model():
    from langchain_core.messages import HumanMessage

    from homespun.engines.cost import metered_call
    from homespun.engines.testing import ScriptedChatModel

    model = ScriptedChatModel(script=["hi"])
    # The model's default 4096 output tokens at $25/M: $0.10, over the $0.01 cap.
    meter = CostMeter(session_cap_usd=0.01, total_cap_usd=10.0, model="claude-opus-4-6")
    with pytest.raises(BudgetExceeded, match="session budget"):
        await metered_call(meter, model, [HumanMessage("hello")])
    assert model.calls == [] and meter.calls == 0 and meter.spent_usd == 0.0


async def test_teacher_reruns_meter_every_call_including_bound_tools_and_failures():
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool as make_tool

    from homespun.engines.cost import estimate_tokens
    from homespun.engines.testing import ScriptedChatModel
    from homespun.learning.teacher_runs import MeteredChatModel

    @make_tool
    def lookup(query: str) -> str:
        """Look something up."""
        return query

    def boom(_messages):
        raise TimeoutError("slow teacher")

    inner = ScriptedChatModel(script=["ok", boom])
    meter = _meter()
    model = MeteredChatModel(inner=inner, meter=meter).bind_tools([lookup])
    messages = [HumanMessage("hello")]
    assert (await model.ainvoke(messages)).content == "ok"
    assert inner.calls[0]["tools"] == ["lookup"] and meter.calls == 1
    spent = meter.spent_usd
    with pytest.raises(TimeoutError):
        model.invoke(messages)
    assert meter.calls == 2 and meter.estimated_calls == 1
    assert meter.spent_usd - spent == pytest.approx(
        meter.cost(estimate_tokens(messages, [lookup]), 1024)
    )
