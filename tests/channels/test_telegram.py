"""The Telegram bot, driven through python-telegram-bot itself against a respx-mocked Bot API."""

from __future__ import annotations

import itertools
import json
import logging
from urllib.parse import parse_qs

import httpx
import pytest
import respx

pytest.importorskip("telegram")

from telegram import Update  # noqa: E402

from homespun.channels.common import ChannelCore  # noqa: E402
from homespun.channels.telegram import TELEGRAM_LIMIT, build_telegram_app  # noqa: E402
from homespun.engines.testing import ScriptedChatModel  # noqa: E402
from homespun.spec import Spec, save_spec  # noqa: E402
from homespun.stores.traces import TraceStore  # noqa: E402

TOKEN = "123456:TEST-telegram-token"
API = f"https://api.telegram.org/bot{TOKEN}"
OWNER = 111
STRANGER = 999
BOT = {"id": 42, "is_bot": True, "first_name": "homespun", "username": "homespun_bot"}


def _body(request: httpx.Request) -> dict:
    """The parameters of a Bot API call, whichever encoding python-telegram-bot chose."""
    ctype = request.headers.get("content-type", "")
    raw = request.content.decode()
    if "json" in ctype:
        return json.loads(raw)
    return {k: v[0] for k, v in parse_qs(raw).items()}


class BotAPI:
    """Records the bot's calls and answers them the way Telegram would."""

    def __init__(self, router: respx.Router):
        self.sent: list[dict] = []
        self.actions: list[dict] = []
        ids = itertools.count(1000)

        def send_message(request: httpx.Request) -> httpx.Response:
            body = _body(request)
            self.sent.append(body)
            result = {
                "message_id": next(ids),
                "date": 1700000000,
                "from": BOT,
                "chat": {"id": int(body["chat_id"]), "type": "private"},
                "text": body["text"],
            }
            return httpx.Response(200, json={"ok": True, "result": result})

        def chat_action(request: httpx.Request) -> httpx.Response:
            self.actions.append(_body(request))
            return httpx.Response(200, json={"ok": True, "result": True})

        router.post(f"{API}/getMe").respond(json={"ok": True, "result": BOT})
        router.post(f"{API}/sendMessage").mock(side_effect=send_message)
        router.post(f"{API}/sendChatAction").mock(side_effect=chat_action)

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent]


_update_ids = itertools.count(1)


def update(text: str, *, user: int = OWNER, chat: int | None = None) -> dict:
    chat_id = user if chat is None else chat
    message = {
        "message_id": next(_update_ids) + 10,
        "date": 1700000000,
        "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
        "from": {"id": user, "is_bot": False, "first_name": "Ann"},
        "text": text,
    }
    if text.startswith("/"):
        command = text.split()[0]
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    return {"update_id": next(_update_ids), "message": message}


@pytest.fixture
def spec_file(settings):
    spec = Spec()
    spec.channels.telegram.allowed_users = [OWNER]
    save_spec(spec, settings.spec_path)
    return settings.spec_path


@pytest.fixture
async def bot(settings, spec_file):
    """(app, api, model): an initialized Application whose assistant replays `model.script`."""
    model = ScriptedChatModel(script=[])
    core = ChannelCore(settings, source="telegram", model=model, tools=[])
    with respx.mock(assert_all_called=False) as router:
        api = BotAPI(router)
        app = build_telegram_app(settings, TOKEN, core=core)
        await app.initialize()
        try:
            yield app, api, model
        finally:
            await app.shutdown()


async def feed(app, data: dict) -> None:
    await app.process_update(Update.de_json(data, app.bot))


async def test_allowed_user_gets_the_answer_in_the_same_chat(bot, settings):
    app, api, model = bot
    model.script.append("Paris is the capital of France.")

    await feed(app, update("What is the capital of France?"))

    assert len(api.sent) == 1
    assert int(api.sent[0]["chat_id"]) == OWNER
    assert api.sent[0]["text"] == "Paris is the capital of France."
    # It replies to the user's message, and the question reached the assistant.
    assert "reply_parameters" in api.sent[0]
    asked = model.calls[0]["messages"][-1].content
    assert asked == "What is the capital of France?"
    trace = TraceStore(settings.traces_db).list()[0]
    assert (trace.status, trace.source) == ("ok", "telegram")


async def test_stranger_gets_nothing_and_is_logged(bot, settings, caplog):
    app, api, model = bot
    model.script.append("should never be said")

    with caplog.at_level(logging.WARNING, logger="homespun.channels"):
        await feed(app, update("hello?", user=STRANGER))
        await feed(app, update("/start", user=STRANGER))

    assert api.sent == [] and api.actions == []
    assert model.calls == []
    assert TraceStore(settings.traces_db).count() == 0
    refusals = [r.getMessage() for r in caplog.records]
    assert (
        f"refused message from user {STRANGER} on telegram: not in channels.telegram.allowed_users"
    ) in refusals
    assert any(f"refused command from user {STRANGER}" in m for m in refusals)


async def test_empty_allowlist_lets_nobody_in(bot, settings, spec_file, caplog):
    app, api, model = bot
    spec = Spec()  # the default: allowed_users = []
    save_spec(spec, spec_file)  # the spec is re-read on every message
    model.script.append("should never be said")

    with caplog.at_level(logging.WARNING, logger="homespun.channels"):
        await feed(app, update("hi"))

    assert api.sent == []
    assert any(f"refused message from user {OWNER}" in r.getMessage() for r in caplog.records)


async def test_long_answer_arrives_in_parts_that_reassemble(bot):
    app, api, model = bot
    paragraphs = [
        f"Paragraph {i}: " + ("lorem ipsum dolor sit amet " * 18).strip() for i in range(11)
    ]
    answer = "\n\n".join(paragraphs)
    assert len(answer) > 5000
    model.script.append(answer)

    await feed(app, update("Tell me a long story"))

    texts = api.texts
    assert len(texts) >= 2
    assert all(0 < len(t) <= TELEGRAM_LIMIT for t in texts)
    assert "".join(texts) == answer
    # Split at paragraph boundaries, not mid-word.
    assert texts[0].endswith("\n\n")
    assert {int(m["chat_id"]) for m in api.sent} == {OWNER}


async def test_feedback_up_rates_the_last_answer_in_that_chat(bot, settings):
    app, api, model = bot
    model.script.extend(["first", "second", "in the group"])
    group = -500

    await feed(app, update("q1"))
    await feed(app, update("q2"))
    await feed(app, update("q3", chat=group))
    await feed(app, update("/feedback up"))

    store = TraceStore(settings.traces_db)
    by_answer = {t.final_answer: t for t in store.list()}
    assert by_answer["second"].feedback == 1.0
    assert by_answer["first"].feedback is None
    assert by_answer["in the group"].feedback is None
    confirmation = api.sent[-1]
    assert int(confirmation["chat_id"]) == OWNER
    assert "feedback 1 recorded" in confirmation["text"]
    assert by_answer["second"].id[:8] in confirmation["text"]

    await feed(app, update("/feedback 0.25", chat=group))
    assert store.get(by_answer["in the group"].id).feedback == 0.25


async def test_feedback_with_a_bad_value_explains_and_changes_nothing(bot, settings):
    app, api, model = bot
    await feed(app, update("/feedback up"))
    assert "no answer in this chat" in api.texts[-1]

    model.script.append("an answer")
    await feed(app, update("q"))
    await feed(app, update("/feedback great"))
    assert "Usage: /feedback up" in api.texts[-1]
    assert TraceStore(settings.traces_db).list()[0].feedback is None


async def test_each_chat_is_its_own_stable_thread(bot, settings):
    app, api, model = bot
    model.script.extend(["a1", "b1", "a2"])
    group = -500

    await feed(app, update("my name is Ann"))
    await feed(app, update("hello group", chat=group))
    await feed(app, update("what is my name?"))

    store = TraceStore(settings.traces_db)
    threads = {t.final_answer: t.thread_id for t in store.list()}
    assert threads["a1"] == threads["a2"]
    assert threads["a1"] != threads["b1"]
    # The conversation really continues in the chat's thread, and not in the other chat's.
    third_call = [m.content for m in model.calls[2]["messages"]]
    assert "my name is Ann" in third_call
    assert "hello group" not in third_call
    assert [int(m["chat_id"]) for m in api.sent] == [OWNER, group, OWNER]


async def test_start_explains_to_allowed_users(bot):
    app, api, _ = bot
    await feed(app, update("/start"))
    assert "/feedback up" in api.texts[-1]


def test_split_message_prefers_boundaries_and_cuts_long_words():
    from homespun.channels.common import split_message

    assert split_message("short", 10) == ["short"]
    assert split_message("", 10) == []
    assert split_message("aaaa bbbb cccc", 10) == ["aaaa bbbb ", "cccc"]
    assert split_message("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    text = "one two\nthree four five six"
    parts = split_message(text, 12)
    assert parts[0] == "one two\n" and "".join(parts) == text


def test_cli_names_the_missing_token_and_warns_about_an_empty_allowlist(settings, monkeypatch):
    from telegram.ext import Application
    from typer.testing import CliRunner

    from homespun.cli._channels import channel_app

    save_spec(Spec(), settings.spec_path)  # allowed_users = []
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(channel_app, ["telegram"])
    assert result.exit_code == 1
    assert "TELEGRAM_BOT_TOKEN" in result.output

    polled = []
    monkeypatch.setattr(Application, "run_polling", lambda self, **kw: polled.append(self))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    result = runner.invoke(channel_app, ["telegram"])
    assert result.exit_code == 0, result.output
    assert "NOBODY can talk to this bot" in " ".join(result.output.split())
    assert len(polled) == 1 and polled[0].bot.token == TOKEN


async def test_a_failed_run_is_reported_not_swallowed(bot, settings):
    app, api, model = bot  # an empty script: the model raises, the run ends in error
    await feed(app, update("hello"))
    trace = TraceStore(settings.traces_db).list()[0]
    assert trace.status == "error"
    assert api.texts == [f"Sorry, that run failed: {trace.error} (trace {trace.id[:8]})"]
