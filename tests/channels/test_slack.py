"""The Slack app, driven through slack-bolt itself against a loopback stub of Slack's Web API."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

import pytest

pytest.importorskip("slack_bolt")

from slack_bolt.request.async_request import AsyncBoltRequest  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402

from homespun.channels.common import ChannelCore  # noqa: E402
from homespun.channels.slack import SLACK_LIMIT, build_slack_app  # noqa: E402
from homespun.engines.testing import ScriptedChatModel  # noqa: E402
from homespun.spec import Spec, save_spec  # noqa: E402
from homespun.stores.traces import TraceStore  # noqa: E402
from tests.stubs import RecordedRequest, RecordingStub, Reply  # noqa: E402

BOT_TOKEN = "xoxb-test-token"
BOT_USER = "UBOT"
OWNER = "UOWNER1"
STRANGER = "USTRANGE"
CHANNEL = "C0GENERAL"


class SlackStub:
    """Slack's Web API on 127.0.0.1 (a `RecordingStub`): records every call, answers like
    Slack would."""

    def __init__(self, http: RecordingStub) -> None:
        self.http = http
        self.sent_ts: dict[str, str] = {}  # text of a posted message -> its ts
        self._ts = itertools.count(1)
        http.handler = self._handle

    @staticmethod
    def _call(request: RecordedRequest) -> tuple[str, dict, str | None]:
        """(method, params, auth header) of one Web API request."""
        method = request.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if "json" in request.headers.get("content-type", ""):
            params = json.loads(request.raw or "{}")
        else:
            params = request.form
        return method, params, request.headers.get("authorization")

    def _handle(self, request: RecordedRequest) -> Reply:
        method, params, _ = self._call(request)
        return Reply(self.respond(method, params), content_type="application/json; charset=utf-8")

    @property
    def calls(self) -> list[tuple[str, dict, str | None]]:
        return [self._call(r) for r in self.http.requests]

    def respond(self, method: str, params: dict) -> dict:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://example.slack.com/",
                "team": "Example",
                "user": "homespun",
                "team_id": "T1",
                "user_id": BOT_USER,
                "bot_id": "B1",
            }
        if method == "chat.postMessage":
            ts = f"1700000100.{next(self._ts):06d}"
            self.sent_ts[params.get("text", "")] = ts
            return {
                "ok": True,
                "channel": params["channel"],
                "ts": ts,
                "message": {
                    "type": "message",
                    "text": params.get("text", ""),
                    "user": BOT_USER,
                    "bot_id": "B1",
                    "ts": ts,
                },
            }
        return {"ok": False, "error": "unknown_method"}

    @property
    def url(self) -> str:
        return self.http.url("/api/")

    def posts(self) -> list[dict]:
        """chat.postMessage calls: where and what (Bolt's client also adds team_id)."""
        return [
            {k: p[k] for k in ("channel", "thread_ts", "text") if k in p}
            for m, p, _ in self.calls
            if m == "chat.postMessage"
        ]


@pytest.fixture
def stub(http_stub):
    return SlackStub(http_stub)


@pytest.fixture
def spec_file(settings):
    spec = Spec()
    spec.channels.slack.allowed_users = [OWNER]
    save_spec(spec, settings.spec_path)
    return settings.spec_path


@pytest.fixture
def slack(settings, spec_file, stub):
    """(app, model): a Bolt app whose Web API is the stub and whose assistant replays a script."""
    model = ScriptedChatModel(script=[])
    core = ChannelCore(settings, source="slack", model=model, tools=[])
    client = AsyncWebClient(token=BOT_TOKEN, base_url=stub.url)
    return build_slack_app(settings, BOT_TOKEN, core=core, client=client), model


_event_ids = itertools.count(1)
_ts = itertools.count(1)


def new_ts() -> str:
    return f"1700000000.{next(_ts):06d}"


async def dispatch(app, event: dict) -> None:
    """Deliver an Events API envelope as Socket Mode would, then wait for the listeners."""
    body = {
        "token": "verification",
        "team_id": "T1",
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": f"Ev{next(_event_ids)}",
        "event_time": 1700000000,
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
    }
    response = await app.async_dispatch(AsyncBoltRequest(body=body, mode="socket_mode"))
    assert response.status == 200  # acked, so Slack will not retry
    # Bolt acks first and runs listeners as tasks; wait for them to finish.
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.wait_for(asyncio.gather(*pending), 30)


def mention(
    text: str, *, user: str = OWNER, ts: str | None = None, thread_ts: str | None = None
) -> dict:
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts or new_ts(),
        "channel": CHANNEL,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


async def test_allowed_mention_is_answered_in_its_thread(slack, stub, settings):
    app, model = slack
    model.script.append("It is 42.")
    ts = new_ts()

    await dispatch(app, mention("what is the answer?", ts=ts))

    posts = stub.posts()
    assert len(posts) == 1
    assert posts[0] == {"channel": CHANNEL, "thread_ts": ts, "text": "It is 42."}
    # The bot token authenticates every call; the mention itself is not part of the question.
    assert {auth for _, _, auth in stub.calls} == {f"Bearer {BOT_TOKEN}"}
    assert model.calls[0]["messages"][-1].content == "what is the answer?"
    trace = TraceStore(settings.traces_db).list()[0]
    assert (trace.status, trace.source) == ("ok", "slack")


async def test_reply_in_an_existing_thread_continues_that_assistant_thread(slack, stub, settings):
    app, model = slack
    model.script.extend(["noted", "other thread", "Ann"])
    root, elsewhere = new_ts(), new_ts()

    await dispatch(app, mention("my name is Ann", ts=root))
    await dispatch(app, mention("hi", ts=elsewhere))
    await dispatch(app, mention("what is my name?", thread_ts=root))

    assert [p["thread_ts"] for p in stub.posts()] == [root, elsewhere, root]
    threads = {t.final_answer: t.thread_id for t in TraceStore(settings.traces_db).list()}
    assert threads["noted"] == threads["Ann"] != threads["other thread"]
    assert "my name is Ann" in [m.content for m in model.calls[2]["messages"]]


async def test_direct_message_is_answered(slack, stub):
    app, model = slack
    model.script.append("hello there")
    ts = new_ts()
    await dispatch(
        app,
        {
            "type": "message",
            "channel_type": "im",
            "channel": "D1",
            "user": OWNER,
            "text": "hi",
            "ts": ts,
        },
    )
    assert stub.posts() == [{"channel": "D1", "thread_ts": ts, "text": "hello there"}]


async def test_stranger_gets_nothing_and_is_logged(slack, stub, settings, caplog):
    app, model = slack
    model.script.append("should never be said")

    with caplog.at_level(logging.WARNING, logger="homespun.channels"):
        await dispatch(app, mention("tell me secrets", user=STRANGER))
        await dispatch(
            app,
            {
                "type": "message",
                "channel_type": "im",
                "channel": "D2",
                "user": STRANGER,
                "text": "psst",
                "ts": new_ts(),
            },
        )

    assert stub.posts() == []
    assert model.calls == []
    assert TraceStore(settings.traces_db).count() == 0
    refusals = [r.getMessage() for r in caplog.records]
    expected = f"refused message from user {STRANGER} on slack: not in channels.slack.allowed_users"
    assert refusals.count(expected) == 2


async def test_long_answer_arrives_in_parts(slack, stub):
    app, model = slack
    answer = "\n".join(f"line {i}: " + "x" * 90 for i in range(60))
    assert len(answer) > 5000
    model.script.append(answer)
    ts = new_ts()

    await dispatch(app, mention("long please", ts=ts))

    posts = stub.posts()
    assert len(posts) >= 2
    assert all(len(p["text"]) <= SLACK_LIMIT for p in posts)
    assert {p["thread_ts"] for p in posts} == {ts}
    assert "".join(p["text"] for p in posts) == answer


async def test_thumbs_up_reaction_on_the_reply_sets_feedback(slack, stub, settings, caplog):
    app, model = slack
    model.script.extend(["first answer", "second answer"])
    await dispatch(app, mention("q1"))
    await dispatch(app, mention("q2"))
    store = TraceStore(settings.traces_db)
    traces = {t.final_answer: t.id for t in store.list()}
    first_reply_ts = stub.sent_ts["first answer"]

    def reaction(name: str, user: str = OWNER) -> dict:
        return {
            "type": "reaction_added",
            "user": user,
            "reaction": name,
            "item_user": BOT_USER,
            "event_ts": new_ts(),
            "item": {"type": "message", "channel": CHANNEL, "ts": first_reply_ts},
        }

    with caplog.at_level(logging.WARNING, logger="homespun.channels"):
        await dispatch(app, reaction("+1", user=STRANGER))
    assert store.get(traces["first answer"]).feedback is None
    assert any(f"refused reaction from user {STRANGER}" in r.getMessage() for r in caplog.records)

    await dispatch(app, reaction("+1"))
    assert store.get(traces["first answer"]).feedback == 1.0
    assert store.get(traces["second answer"]).feedback is None

    await dispatch(app, reaction("thumbsdown::skin-tone-3"))
    assert store.get(traces["first answer"]).feedback == 0.0

    await dispatch(app, reaction("tada"))
    assert store.get(traces["first answer"]).feedback == 0.0
