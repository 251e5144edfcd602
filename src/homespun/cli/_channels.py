"""`homespun channel telegram|slack`: talk to the assistant from a chat app."""

from __future__ import annotations

import logging
from typing import Any

import typer
from rich.markup import escape

from ._common import console, current_spec, err_console, fail, quiet_libraries, run_async, settings

channel_app = typer.Typer(
    help="Chat channels: talk to the assistant from Telegram or Slack.", no_args_is_help=True
)


def _secret(name: str, st: Any) -> str:
    from homespun.channels.secrets import SecretError, get_secret

    try:
        return get_secret(name, st)
    except SecretError as exc:
        fail(str(exc))


def _show_allowlist(source: str, users: list[Any], example: str) -> None:
    if users:
        listed = ", ".join(escape(str(u)) for u in users)
        console.print(
            f"Allowed {source} users: [bold]{listed}[/] (everyone else is ignored and logged)."
        )
        return
    err_console.print(
        f"[bold red]WARNING: channels.{source}.allowed_users is empty: NOBODY can talk to "
        f"this bot.[/] Every message will be refused and logged. Add your user id to the "
        f"spec, e.g. [bold]allowed_users = {escape(example)}[/] under "
        f"[bold]\\[channels.{source}][/].",
        highlight=False,
    )


def _setup_logging(*secrets: str) -> None:
    from homespun.channels.secrets import redact_in_logs

    quiet_libraries()  # also keeps httpx from logging API URLs, which carry the bot token
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_in_logs(*secrets)


def _missing_extra(extra: str, exc: ImportError) -> None:
    fail(
        f"the {extra} channel needs extra packages ({exc.name} is missing): "
        f"pip install 'homespun[{extra}]'"
    )


@channel_app.command("telegram")
def telegram() -> None:
    """Run the Telegram bot (long polling) until Ctrl-C."""
    try:
        from telegram import Update

        from homespun.channels.telegram import build_telegram_app
    except ImportError as exc:
        _missing_extra("telegram", exc)
    from homespun.channels.common import ChannelCore

    st = settings()
    spec = current_spec(st)
    cfg = spec.channels.telegram
    token = _secret(cfg.token_env, st)
    _show_allowlist("telegram", cfg.allowed_users, "[123456789]")
    console.print(
        "The allowlist is re-read from the spec on every message. Polling Telegram; Ctrl-C stops."
    )
    _setup_logging(token)
    app = build_telegram_app(st, token, core=ChannelCore(st, source="telegram"))
    app.run_polling(allowed_updates=Update.ALL_TYPES)


@channel_app.command("slack")
def slack() -> None:
    """Run the Slack app (Socket Mode) until Ctrl-C."""
    try:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        from homespun.channels.slack import build_slack_app
    except ImportError as exc:
        _missing_extra("slack", exc)
    from homespun.channels.common import ChannelCore

    st = settings()
    spec = current_spec(st)
    cfg = spec.channels.slack
    bot_token = _secret(cfg.bot_token_env, st)
    app_token = _secret(cfg.app_token_env, st)
    _show_allowlist("slack", cfg.allowed_users, '["U012ABCDEF"]')
    console.print(
        "The allowlist is re-read from the spec on every message. "
        "Connecting to Slack (Socket Mode); Ctrl-C stops."
    )
    _setup_logging(bot_token, app_token)

    async def serve() -> None:
        app = build_slack_app(st, bot_token, core=ChannelCore(st, source="slack"))
        handler = AsyncSocketModeHandler(app, app_token)
        try:
            await handler.start_async()
        finally:
            await handler.close_async()

    try:
        run_async(serve())
    except KeyboardInterrupt:
        console.print("stopped")
