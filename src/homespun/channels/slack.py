"""Slack: a Socket Mode app whose mentions and direct messages become runs of the assistant.

The answer goes into the Slack thread of the message (a new thread under a top-level message),
and each Slack thread is one assistant thread. A :+1: or :-1: reaction on one of the bot's
replies rates the run behind it. Only users in `channels.slack.allowed_users` get any reply;
other events are logged and dropped (after Bolt's automatic ack, so Slack does not retry).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from homespun.spec import Settings

from .common import BoundedMap, ChannelCore, split_message

logger = logging.getLogger("homespun.channels.slack")

# A section block holds 3,000 characters and Slack advises keeping `text` under 4,000;
# 3,500 stays readable and well inside the 40,000 hard limit.
SLACK_LIMIT = 3500

THUMBS_UP = {"+1", "thumbsup"}
THUMBS_DOWN = {"-1", "thumbsdown"}


def reaction_score(reaction: str) -> float | None:
    """1.0 for a thumbs up, 0.0 for a thumbs down (any skin tone), None for anything else."""
    name = reaction.split("::", 1)[0]
    if name in THUMBS_UP:
        return 1.0
    if name in THUMBS_DOWN:
        return 0.0
    return None


def _question(text: str, bot_user_id: str | None) -> str:
    if bot_user_id:
        text = text.replace(f"<@{bot_user_id}>", " ")
    return re.sub(r"\s+", " ", text).strip()


def build_slack_app(
    settings: Settings,
    bot_token: str,
    *,
    core: ChannelCore,
    client: AsyncWebClient | None = None,
) -> AsyncApp:
    """The Bolt app; run it with `AsyncSocketModeHandler(app, app_token).start_async()`.

    `client` replaces the Web API client (tests pass one whose base_url is a local stub).
    """
    app = AsyncApp(
        name="homespun",
        token=None if client is not None else bot_token,
        client=client,
    )
    # (channel, message ts) of each reply we sent -> the trace it came from.
    reply_traces: BoundedMap[tuple[str, str], str] = BoundedMap()

    async def respond(event: dict[str, Any], client: AsyncWebClient, text: str) -> None:
        channel = event["channel"]
        thread_ts = event.get("thread_ts") or event["ts"]
        reply = await core.answer(event.get("user"), f"{channel}:{thread_ts}", text)
        if reply is None:
            return
        for part in split_message(reply.text, SLACK_LIMIT):
            sent = await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=part)
            if sent.get("ts"):
                reply_traces[(channel, sent["ts"])] = reply.trace_id

    @app.event("app_mention")
    async def on_mention(
        event: dict[str, Any], client: AsyncWebClient, context: dict[str, Any]
    ) -> None:
        question = _question(event.get("text", ""), context.get("bot_user_id"))
        if not question:
            if core.admit(event.get("user")):
                await client.chat_postMessage(
                    channel=event["channel"],
                    thread_ts=event.get("thread_ts") or event["ts"],
                    text="Ask me something after the mention.",
                )
            return
        await respond(event, client, question)

    @app.event("message")
    async def on_message(
        event: dict[str, Any], client: AsyncWebClient, context: dict[str, Any]
    ) -> None:
        # Direct messages only: in channels the bot answers mentions (app_mention), and
        # edits, deletions and bot posts arrive as subtypes that are not questions.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        question = _question(event.get("text", ""), context.get("bot_user_id"))
        if question:
            await respond(event, client, question)

    @app.event("reaction_added")
    async def on_reaction(event: dict[str, Any]) -> None:
        score = reaction_score(event.get("reaction", ""))
        item = event.get("item") or {}
        if score is None or item.get("type") != "message":
            return
        trace_id = reply_traces.get((item.get("channel", ""), item.get("ts", "")))
        if trace_id is None:
            return  # not one of our answers (or one from before a restart)
        if not core.admit(event.get("user"), what="reaction"):
            return
        core.set_feedback(trace_id, score)

    @app.error
    async def on_error(error: Exception, body: dict[str, Any]) -> None:
        logger.error("error while handling a Slack event: %s", error, exc_info=error)

    return app
