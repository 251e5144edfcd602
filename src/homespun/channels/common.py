"""What every chat channel shares: who may talk, one assistant thread per chat, the answer.

A channel (Telegram, Slack) turns an incoming message into `ChannelCore.answer`, which loads
the *current* spec (so an allowlist edit takes effect on the next message, no restart), checks
the sender against `channels.<source>.allowed_users`, and runs the assistant graph on a thread
that is stable for the chat. Strangers get no reply at all (a reply would confirm the bot
exists and is listening); the refusal goes to the log instead. A spec that fails to load
refuses everyone: without it we cannot know who is allowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool

from homespun.graphs.runner import run_assistant
from homespun.spec import Settings, Spec, SpecError, load_spec
from homespun.stores.traces import TraceStore

logger = logging.getLogger("homespun.channels")

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Reply:
    """The assistant's answer to one chat message."""

    text: str
    """What to send back (the answer, or a short note that the run failed)."""
    trace_id: str
    """The trace of the run, for feedback."""
    ok: bool
    """False when the run ended in error (the trace says why)."""


class BoundedMap(Generic[K, V]):
    """A dict that forgets its oldest entries, so a long-running bot does not grow forever."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)


def is_allowed(user_id: Any, allowlist: Sequence[Any]) -> bool:
    """True only if `user_id` is listed; an empty allowlist lets nobody in."""
    if user_id is None:
        return False
    return any(str(user_id) == str(allowed) for allowed in allowlist)


def split_message(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters, at the best boundary available.

    Prefers a paragraph break, then a line break, then a space, in the second half of the
    window (so no piece is needlessly short); a word longer than `limit` is cut hard. The
    separators stay at the end of their piece, so the pieces join back to `text` exactly
    (pieces that would be only whitespace are dropped: chat APIs refuse empty messages).
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = _best_cut(window, limit)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return [p for p in parts if p.strip()]


def _best_cut(window: str, limit: int) -> int:
    for floor in (limit // 2, 1):
        for sep in ("\n\n", "\n", " "):
            i = window.rfind(sep)
            if i >= floor:
                return i + len(sep)
    return limit


class ChannelCore:
    """Turns chat messages from one channel (`source`) into runs of the assistant.

    `model` and `tools` replace the spec's engine and MCP servers (tests); they are passed
    through to `run_assistant` unchanged.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        source: str,
        model: BaseChatModel | None = None,
        tools: list[BaseTool] | None = None,
    ):
        self.settings = settings
        self.source = source
        self.model = model
        self.tools = tools
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_trace: BoundedMap[str, str] = BoundedMap()

    # ------------------------------------------------------------------ who may talk

    def load_spec(self) -> Spec | None:
        """The spec as it is on disk now; None (and an error in the log) if it does not load."""
        try:
            return load_spec(self.settings.spec_path)
        except (SpecError, OSError) as exc:
            logger.error("cannot load the spec, refusing all %s messages: %s", self.source, exc)
            return None

    def allowlist(self, spec: Spec) -> list[Any]:
        channel = getattr(spec.channels, self.source, None)
        return list(channel.allowed_users) if channel is not None else []

    def admit(self, user_id: Any, *, what: str = "message", spec: Spec | None = None) -> bool:
        """Whether `user_id` may use the assistant now; a refusal is logged, never answered."""
        spec = spec or self.load_spec()
        if spec is None:
            return False
        if is_allowed(user_id, self.allowlist(spec)):
            return True
        logger.warning(
            "refused %s from user %s on %s: not in channels.%s.allowed_users",
            what,
            user_id,
            self.source,
            self.source,
        )
        return False

    # ------------------------------------------------------------------ answering

    def thread_id(self, thread_key: str) -> str:
        """The assistant thread for a chat (or chat thread): stable across restarts."""
        return f"{self.source}:{thread_key}"

    async def answer(self, user_id: Any, thread_key: str, text: str) -> Reply | None:
        """Run the assistant on `text` in the chat's thread; None if the sender is refused."""
        spec = self.load_spec()
        if spec is None or not self.admit(user_id, spec=spec):
            return None
        thread_id = self.thread_id(thread_key)
        # One run at a time per thread: two concurrent runs would fork its checkpoint history.
        lock = self._locks.setdefault(thread_id, asyncio.Lock())
        async with lock:
            result = await run_assistant(
                spec,
                self.settings,
                text,
                thread_id=thread_id,
                source=self.source,
                model=self.model,
                tools=self.tools,
            )
        trace = result.trace
        self._last_trace[thread_key] = trace.id
        if trace.status == "ok":
            body = trace.final_answer or ""
            if not body.strip():
                body = "(the assistant gave an empty answer)"
            return Reply(body, trace.id, True)
        logger.error("%s run %s failed: %s", self.source, trace.id, trace.error)
        return Reply(
            f"Sorry, that run failed: {trace.error or 'unknown error'} (trace {trace.id[:8]})",
            trace.id,
            False,
        )

    # ------------------------------------------------------------------ feedback

    def last_trace(self, thread_key: str) -> str | None:
        """The trace of the last answer given in this chat since the bot started."""
        return self._last_trace.get(thread_key)

    def set_feedback(self, trace_id: str, score: float) -> None:
        TraceStore(self.settings.traces_db).set_feedback(trace_id, score)
        logger.info("feedback %.2f on %s trace %s", score, self.source, trace_id)
