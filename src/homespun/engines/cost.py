"""What a model call costs: list prices, token usage, and the meter that keeps teacher
spend under its caps.

Every teacher call goes through `metered_call` (or its sync twin), on a `CostMeter`:
`check()` before the call refuses it when it could take the session or the total spend over
its cap, `record()` after it adds what the call cost. Retries and fallbacks are calls like
any other; a call that reports no usage, or fails, is charged at the estimate its `check()`
made, never as free.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from homespun.spec.models import LearningSpec

# List prices in USD per million tokens (input, output), keyed by model-name prefix; the
# longest matching prefix wins. Local providers cost nothing per token.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    # Anthropic
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    # OpenAI
    "gpt-5.4": (2.5, 15.0),
    "gpt-5.2": (1.75, 14.0),
    "gpt-5-pro": (15.0, 120.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5": (1.25, 10.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    # Local providers: the teacher runs on the user's own hardware.
    "ollama:": (0.0, 0.0),
    "openai_compatible:": (0.0, 0.0),
    "embedded:": (0.0, 0.0),
}

# A model we have no price for is charged as the dearest one we know, so an unknown model can
# only make the meter stop early, never let spend run past a cap.
_FALLBACK_PRICE = max(PRICES_PER_MTOK.values(), key=lambda p: p[0] + p[1])

PROVIDERS = ("anthropic", "openai", "ollama", "openai_compatible", "embedded")


def price_for(model: str) -> tuple[tuple[float, float], bool]:
    """((input $, output $) per 1M tokens, known) for a model name, with or without its
    provider prefix ('anthropic:claude-opus-4-6' or 'claude-opus-4-6')."""
    candidates = [model]
    provider, sep, bare = model.partition(":")
    if sep and provider in PROVIDERS:
        candidates.append(bare)
    for name in candidates:
        matches = [p for p in PRICES_PER_MTOK if name.startswith(p)]
        if matches:
            return PRICES_PER_MTOK[max(matches, key=len)], True
    return _FALLBACK_PRICE, False


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int


class BudgetExceeded(RuntimeError):
    """A teacher call was refused because it could take spend over a cap."""

    def __init__(
        self, budget: str, spent_usd: float, cap_usd: float, next_call_usd: float, field: str
    ):
        self.budget = budget  # "session" or "total"
        self.spent_usd = spent_usd
        self.cap_usd = cap_usd
        self.next_call_usd = next_call_usd
        super().__init__(
            f"teacher {budget} budget exceeded: spent ${spent_usd:.4f} of the "
            f"${cap_usd:.2f} {budget} cap (learning.budgets.{field}); the next teacher call "
            f"could cost up to ${next_call_usd:.4f}"
        )


class CostMeter:
    """Spend of one session's teacher calls against the session and total caps."""

    def __init__(
        self,
        *,
        session_cap_usd: float,
        total_cap_usd: float,
        spent_before_usd: float = 0.0,
        model: str,
    ):
        self.session_cap_usd = float(session_cap_usd)
        self.total_cap_usd = float(total_cap_usd)
        self.spent_before_usd = float(spent_before_usd)
        self.model = model
        (self.input_price, self.output_price), self.price_known = price_for(model)
        self.spent_usd = 0.0  # this session
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.estimated_calls = 0  # finished calls that reported no usage
        self.seconds = 0.0  # wall time of this session's calls, failed ones included
        # Told "start" before each metered call and "done" ({"seconds", "ok"}) after it: a
        # local teacher's call can take minutes, and a surface may want to show it moving.
        self.on_call: Callable[[str, dict[str, Any]], None] | None = None
        self._last_estimate_usd = 0.0

    @classmethod
    def from_spec(
        cls, learning: LearningSpec, *, spent_before_usd: float = 0.0, model: str | None = None
    ) -> CostMeter:
        return cls(
            session_cap_usd=learning.budgets.max_cost_per_session_usd,
            total_cap_usd=learning.budgets.max_total_cost_usd,
            spent_before_usd=spent_before_usd,
            model=model or learning.teacher,
        )

    @property
    def total_spent_usd(self) -> float:
        return self.spent_before_usd + self.spent_usd

    @property
    def free(self) -> bool:
        return self.input_price == 0 and self.output_price == 0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6

    def check(self, estimated_input_tokens: int = 0, max_output_tokens: int = 0) -> None:
        """Raise BudgetExceeded if a call of this size could take spend over either cap."""
        estimate = self.cost(estimated_input_tokens, max_output_tokens)
        self._last_estimate_usd = estimate
        # With a priced model any call costs something, so a reached cap refuses every call.
        reached = not self.free
        for budget, spent, cap, field in (
            ("session", self.spent_usd, self.session_cap_usd, "max_cost_per_session_usd"),
            ("total", self.total_spent_usd, self.total_cap_usd, "max_total_cost_usd"),
        ):
            if spent + estimate > cap + 1e-12 or (reached and spent >= cap):
                raise BudgetExceeded(budget, spent, cap, estimate, field)

    def record(self, usage: Usage | dict[str, Any] | AIMessage | None) -> float:
        """Add a finished call; returns its cost. Counts the call even when it reports no
        usage (then the estimate of the last check() is charged)."""
        self.calls += 1
        tokens = _usage_of(usage)
        if tokens is None:
            self.estimated_calls += 1
            cost = self._last_estimate_usd
        else:
            self.input_tokens += tokens.input_tokens
            self.output_tokens += tokens.output_tokens
            cost = self.cost(tokens.input_tokens, tokens.output_tokens)
        self.spent_usd += cost
        return cost

    def __repr__(self) -> str:
        return (
            f"CostMeter(model={self.model!r}, calls={self.calls}, "
            f"spent_usd={self.spent_usd:.6f}, session_cap_usd={self.session_cap_usd}, "
            f"total={self.total_spent_usd:.6f}/{self.total_cap_usd})"
        )


def _usage_of(usage: Usage | dict[str, Any] | AIMessage | None) -> Usage | None:
    if usage is None:
        return None
    if isinstance(usage, Usage):
        return usage
    if isinstance(usage, AIMessage):
        meta = usage.usage_metadata
        if not meta:
            return None
        return Usage(int(meta.get("input_tokens") or 0), int(meta.get("output_tokens") or 0))
    if isinstance(usage, dict):
        if "input_tokens" in usage or "output_tokens" in usage:
            return Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
        if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI's names
            return Usage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        return None
    raise TypeError(f"cannot read token usage from {type(usage).__name__}")


def max_output_tokens(model: Any, default: int = 4096) -> int:
    """The most tokens one reply of `model` may have (for budget estimates)."""
    for attr in ("max_tokens", "max_completion_tokens", "num_predict"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    # A RunnableBinding from bind_tools, or a wrapper (tool-call handling, metering) whose
    # inner model is the one that generates.
    for attr in ("bound", "inner"):
        wrapped = getattr(model, attr, None)
        if wrapped is not None and wrapped is not model:
            return max_output_tokens(wrapped, default)
    return default


# --------------------------------------------------------------------------- estimates


def estimate_tokens(messages: Sequence[BaseMessage], tools: Sequence[Any] = ()) -> int:
    """Input tokens of a call, for the meter's check: the characters of the messages (text and
    tool calls) plus those of the tool schemas (JSON), at 4 characters a token, rounded up.

    `tools` may be OpenAI-format dicts or anything `convert_to_openai_tool` takes.
    """
    chars = sum(_message_chars(m) for m in messages)
    chars += sum(
        len(json.dumps(t if isinstance(t, dict) else convert_to_openai_tool(t), default=str))
        for t in tools
    )
    return -(-chars // 4)


def _message_chars(m: BaseMessage) -> int:
    content = m.content if isinstance(m.content, str) else json.dumps(m.content, default=str)
    calls = getattr(m, "tool_calls", None)
    return len(content) + (len(json.dumps(calls, default=str)) if calls else 0)


# --------------------------------------------------------------------------- metered calls


async def metered_call(
    meter: CostMeter | None,
    model: Any,
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[Any] = (),
    max_output_tokens: int | None = None,
    **kwargs: Any,
) -> AIMessage:
    """`model.ainvoke(messages)` on `meter`: checked before (BudgetExceeded propagates and the
    model is not called), recorded after. A failed call may still be billed, so it is charged
    at the estimate, then its exception propagates.

    `tools` are the schemas bound to `model`, counted in the estimate; `max_output_tokens`
    defaults to the model's own limit. With no meter the call is just made.
    """
    _check(meter, model, messages, tools, max_output_tokens)
    started = _call_started(meter)
    try:
        reply = await model.ainvoke(messages, **kwargs)
    except BaseException:
        _call_ended(meter, started, ok=False)
        if meter is not None:
            meter.record(None)
        raise
    _call_ended(meter, started, ok=True)
    if meter is not None:
        meter.record(reply)
    return reply


def metered_call_sync(
    meter: CostMeter | None,
    model: Any,
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[Any] = (),
    max_output_tokens: int | None = None,
    **kwargs: Any,
) -> AIMessage:
    """`metered_call` for a synchronous caller."""
    _check(meter, model, messages, tools, max_output_tokens)
    started = _call_started(meter)
    try:
        reply = model.invoke(messages, **kwargs)
    except BaseException:
        _call_ended(meter, started, ok=False)
        if meter is not None:
            meter.record(None)
        raise
    _call_ended(meter, started, ok=True)
    if meter is not None:
        meter.record(reply)
    return reply


# Meters in tests may be stand-ins with check() and record() only: the timing is optional.
def _call_started(meter: Any) -> float:
    notify = getattr(meter, "on_call", None)
    if notify is not None:
        notify("start", {})
    return time.perf_counter()


def _call_ended(meter: Any, started: float, *, ok: bool) -> None:
    seconds = time.perf_counter() - started
    if isinstance(getattr(meter, "seconds", None), float):
        meter.seconds += seconds
    notify = getattr(meter, "on_call", None)
    if notify is not None:
        notify("done", {"seconds": seconds, "ok": ok})


def _check(
    meter: CostMeter | None,
    model: Any,
    messages: Sequence[BaseMessage],
    tools: Sequence[Any],
    max_out: int | None,
) -> None:
    if meter is not None:
        meter.check(
            estimated_input_tokens=estimate_tokens(messages, tools),
            max_output_tokens=max_output_tokens(model) if max_out is None else max_out,
        )
