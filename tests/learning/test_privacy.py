"""What leaves the machine for a teacher: scrubbed text, and no sensitive trace at all."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from homespun.learning.privacy import eligible_traces, scrub_obj, scrub_text
from homespun.stores.traces import ToolCallRecord, Trace

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFsaWNlIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
ANTHROPIC_KEY = "sk-ant-api03-Zx81Qm4kLw0PqRt7Yv2Na9Hs3Jd6Fb5Gc1Ke-AbCdEfGh_IjKlMn"
OPENAI_KEY = "sk-proj-9aK2mQ7xLp4Rt8Vw1Yz3Bc6Dn0Fg5Hj"
GITHUB_TOKEN = "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R"
SLACK_TOKEN = "xoxb-2048123456-4096123456789-Qw3rTy8UiOp2AsDfGhJkLz1X"


@pytest.mark.parametrize(
    ("text", "secret", "placeholder"),
    [
        (
            "Write to alice.smith+work@example.co.uk today",
            "alice.smith+work@example.co.uk",
            "<EMAIL>",
        ),
        ("Call Bob on +1 415 555 0134 tonight", "+1 415 555 0134", "<PHONE>"),
        ("his office is (415) 555-0134.", "(415) 555-0134", "<PHONE>"),
        ("London office: +44 20 7946 0958", "+44 20 7946 0958", "<PHONE>"),
        ("or 415-555-0134", "415-555-0134", "<PHONE>"),
        ("national form 020 7946 0958", "020 7946 0958", "<PHONE>"),
        ("compact +14155550134", "+14155550134", "<PHONE>"),
        (f"key={ANTHROPIC_KEY}", ANTHROPIC_KEY, "<SECRET>"),
        (f"OPENAI_API_KEY {OPENAI_KEY} in .env", OPENAI_KEY, "<SECRET>"),
        (f"token {GITHUB_TOKEN}", GITHUB_TOKEN, "<SECRET>"),
        (f"slack {SLACK_TOKEN}", SLACK_TOKEN, "<SECRET>"),
        ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "<SECRET>"),
        ("Authorization: Bearer abc123.DEF456-ghi789", "abc123.DEF456-ghi789", "<SECRET>"),
        (f"session {JWT}", JWT, "<SECRET>"),
        (
            "hmac 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "9f86d081884c7d659a2feaa0c55ad015",
            "<SECRET>",
        ),
        (
            "blob Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1u",
            "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1u",
            "<SECRET>",
        ),
        ("password: hunter2hunter2", "hunter2hunter2", "<SECRET>"),
        ("pay with 4111 1111 1111 1111 please", "4111 1111 1111 1111", "<CARD>"),
        ("card 5500005555555559", "5500005555555559", "<CARD>"),
        ("IBAN DE89370400440532013000", "DE89370400440532013000", "<IBAN>"),
        ("to DE89 3704 0044 0532 0130 00 TODAY", "3704 0044 0532", "<IBAN>"),
    ],
)
def test_private_values_are_replaced_by_typed_placeholders(text, secret, placeholder):
    out = scrub_text(text)
    assert secret not in out
    assert placeholder in out
    assert scrub_text(out) == out  # idempotent: scrubbing twice changes nothing more


def test_context_around_a_finding_survives():
    assert scrub_text("mail bob@example.com now") == "mail <EMAIL> now"
    assert scrub_text("to DE89 3704 0044 0532 0130 00 TODAY") == "to <IBAN> TODAY"


@pytest.mark.parametrize(
    "text",
    [
        "37 * 41 = 1517",
        "2026-11-22 04:25",
        "May 3",
        "at 12:30 on 03/05/2026, 2026-11-22T04:25:00Z",
        "1,000,000 dollars, 3.14159, 42 and 0.25",
        "order #123456789, ISBN 978-3-16-148410-0",
        "timestamp 1768312345678",
        "not a card: 4111 1111 1111 1112",  # fails the Luhn check
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "/home/alice/Documents/Projects/2024/report_final.txt",
        "ToolCallingChatModel_openai_response_format_v2",
        "numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14",
        "v1.2.3 on http://127.0.0.1:8000/v1",
    ],
)
def test_ordinary_numbers_dates_and_names_survive(text):
    assert scrub_text(text) == text


@dataclass
class _Note:
    text: str
    tags: tuple[str, ...]


def test_scrub_obj_reaches_every_string_and_leaves_the_input_alone():
    data = {
        "query": "mail carol@example.org",
        "calls": [{"args": {"to": "+44 20 7946 0958", "n": 3}, "ok": True}],
        "bob@example.com": "key as dict key",
        "note": _Note("card 4111111111111111", ("x", "dave@example.net")),
    }
    out = scrub_obj(data)
    assert out["query"] == "mail <EMAIL>"
    assert out["calls"][0]["args"] == {"to": "<PHONE>", "n": 3}
    assert out["calls"][0]["ok"] is True
    assert "<EMAIL>" in out and "bob@example.com" not in out
    assert out["note"] == _Note("card <CARD>", ("x", "<EMAIL>"))
    assert data["query"] == "mail carol@example.org"  # a copy, not an in-place edit


def test_scrub_obj_keeps_colliding_keys_apart():
    out = scrub_obj({"a@example.com": 1, "b@example.com": 2})
    assert sorted(out.values()) == [1, 2]


def _trace(i: int, sensitive: bool) -> Trace:
    return Trace(
        id=f"t{i}",
        created_at=0.0,
        query=f"q{i}",
        spec_hash="h",
        thread_id="th",
        loop="react",
        model="m",
        backend="embedded",
        sensitive=sensitive,
    )


def test_sensitive_traces_are_not_eligible():
    traces = [_trace(1, False), _trace(2, True), _trace(3, False)]
    assert [t.id for t in eligible_traces(traces)] == ["t1", "t3"]


def test_scrub_obj_on_a_trace_scrubs_its_tool_calls():
    t = _trace(1, False)
    t.query = "ask erin@example.com"
    t.tool_calls = [
        ToolCallRecord(
            name="send", arguments={"to": "erin@example.com"}, result=f"sent with {OPENAI_KEY}"
        )
    ]
    out = scrub_obj(t)
    assert out.query == "ask <EMAIL>"
    assert out.tool_calls[0].arguments == {"to": "<EMAIL>"}
    assert out.tool_calls[0].result == "sent with <SECRET>"
    assert t.query == "ask erin@example.com"
