"""Telegram: a long-polling bot whose text messages become runs of the assistant.

One assistant thread per chat (per topic in forum groups). `/feedback up|down|0..1` rates the
last answer in the chat. Only users in `channels.telegram.allowed_users` get any reply; every
other update stops at a gate in handler group -1 and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from telegram import Update
from telegram.constants import ChatAction, MessageLimit
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from homespun.spec import Settings
from homespun.stores.traces import parse_feedback

from .common import ChannelCore, split_message

logger = logging.getLogger("homespun.channels.telegram")

TELEGRAM_LIMIT = int(MessageLimit.MAX_TEXT_LENGTH)  # 4096

START_TEXT = (
    "Hi! I am your homespun assistant. Send me a message and I will answer it; this chat "
    "keeps its own conversation.\n\n"
    "Rate my last answer with /feedback up, /feedback down, or a number from 0 to 1: "
    "the ratings steer how homespun improves itself."
)


def chat_key(update: Update) -> str:
    """The chat (and forum topic) an update belongs to: one assistant thread each."""
    message = update.effective_message
    chat_id = update.effective_chat.id if update.effective_chat else 0
    if message is not None and message.is_topic_message and message.message_thread_id:
        return f"{chat_id}:{message.message_thread_id}"
    return str(chat_id)


def build_telegram_app(settings: Settings, token: str, *, core: ChannelCore) -> Application:
    """The bot: call `run_polling()` on it, or `initialize()` + `process_update()` in tests."""
    app = ApplicationBuilder().token(token).build()

    async def gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user = update.effective_user
        what = "command" if _is_command(update) else "message"
        if not core.admit(user.id if user else None, what=what):
            raise ApplicationHandlerStop

    async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_message.reply_text(START_TEXT)

    async def on_feedback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        value = " ".join(context.args or [])
        trace_id = core.last_trace(chat_key(update))
        if trace_id is None:
            await message.reply_text("There is no answer in this chat to rate yet.")
            return
        try:
            score = parse_feedback(value) if value else None
        except ValueError as exc:
            score, error = None, str(exc)
        else:
            error = None
        if score is None:
            await message.reply_text(
                (error + "\n" if error else "") + "Usage: /feedback up, /feedback down, "
                "or /feedback 0.7 (a number from 0 to 1)."
            )
            return
        core.set_feedback(trace_id, score)
        await message.reply_text(
            f"Thanks: feedback {score:g} recorded for my last answer (trace {trace_id[:8]})."
        )

    async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        user = update.effective_user
        typing = asyncio.create_task(
            _keep_typing(context, message.chat_id, message.message_thread_id)
        )
        try:
            reply = await core.answer(
                user.id if user else None, chat_key(update), message.text or ""
            )
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing
        if reply is None:
            return
        for i, part in enumerate(split_message(reply.text, TELEGRAM_LIMIT)):
            # Plain text (no parse_mode): model output is not valid Markdown/HTML in general.
            await message.reply_text(part, do_quote=i == 0)

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        logger.error("error while handling a Telegram update", exc_info=context.error)

    app.add_handler(TypeHandler(Update, gate), group=-1)
    app.add_handler(CommandHandler("start", on_start))
    app.add_handler(CommandHandler("help", on_start))
    app.add_handler(CommandHandler("feedback", on_feedback))
    # New messages only: an edited message would otherwise be answered a second time.
    app.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, on_text)
    )
    app.add_error_handler(on_error)
    return app


def _is_command(update: Update) -> bool:
    message = update.effective_message
    return bool(message and message.text and message.text.startswith("/"))


async def _keep_typing(
    context: ContextTypes.DEFAULT_TYPE, chat_id: int, thread_id: int | None
) -> None:
    """Show 'typing…' while the assistant works (Telegram clears it after ~5 s)."""
    while True:
        try:
            await context.bot.send_chat_action(
                chat_id, ChatAction.TYPING, message_thread_id=thread_id
            )
        except Exception as exc:  # cosmetic: never let it break the answer
            logger.debug("send_chat_action failed: %s", exc)
            return
        await asyncio.sleep(4)
