"""Privacy scrubbing: what leaves the machine for a cloud teacher.

Traces marked sensitive never leave (`eligible_traces`); everything else is scrubbed before it
is sent (`scrub_text`, `scrub_obj`). Each finding becomes a typed placeholder, so the teacher
still sees *that* the student handled an e-mail address or a key, but not which one:
``<EMAIL>``, ``<PHONE>``, ``<SECRET>``, ``<CARD>``, ``<IBAN>``.

The patterns lean towards scrubbing (a lost detail costs a little diagnosis quality, a leaked
key costs more), but ordinary numbers must survive: arithmetic ("37 * 41 = 1517"), dates and
times ("2026-11-22 04:25"), amounts and short ids are what the teacher needs to see. Card
numbers are Luhn-checked and IBANs mod-97-checked for that reason; phone numbers need a
leading "+", a leading trunk "0", or the North-American 3-3-4 grouping.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from homespun.stores.traces import Trace

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
SECRET = "<SECRET>"
CARD = "<CARD>"
IBAN = "<IBAN>"

T = TypeVar("T")

# --------------------------------------------------------------------------- secrets

# Provider keys and tokens with a recognisable prefix. Order matters only for overlap:
# the JWT and the prefixed keys go before the generic long-token rule.
_KEY_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # JSON Web Tokens: header.payload[.signature], header and payload are base64url JSON.
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.?[A-Za-z0-9_-]*",
        # Anthropic (sk-ant-api03-...), OpenAI project/service/user keys (sk-proj-..., sk-...).
        r"\bsk-(?:ant|proj|svcacct|admin)-[A-Za-z0-9_-]{8,}",
        r"\bsk-[A-Za-z0-9_-]{16,}",
        # GitHub classic and fine-grained tokens.
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",
        r"\bgithub_pat_[A-Za-z0-9_]{20,}",
        # Slack bot/user/app/refresh tokens.
        r"\bxox[bpasr]-[A-Za-z0-9-]{10,}",
        # AWS access key ids.
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        # Google API keys, Stripe secret/restricted keys.
        r"\bAIza[0-9A-Za-z_-]{35}\b",
        r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",
    )
)

# "Authorization: Bearer <token>": keep the word, drop the token.
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)

# key = value / key: value pairs whose name says the value is a secret.
_NAMED_SECRET = re.compile(
    r"(?i)\b(password|passwd|passphrase|pwd|secret|client_secret|api[_-]?key|"
    r"access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key)"
    r"(\"?\s*[:=]\s*\"?)"
    r"([^\s\"',;]{4,})"
)

# Long hex strings (keys, HMACs, session ids).
_LONG_HEX = re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])")

# Long base64/base64url runs; checked by `_looks_random` so that long identifiers and
# paths survive.
_LONG_B64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")


def _looks_random(token: str) -> bool:
    body = token.rstrip("=")
    if not (re.search(r"\d", body) and re.search(r"[a-z]", body) and re.search(r"[A-Z]", body)):
        return False
    # Paths and identifiers are made of words: in random base64 lower-case runs of 4+
    # letters cover under 40% of the token (99% of random 32-char tokens), in
    # "/home/alice/Documents/..." or "ToolCallingChatModel_..." about two thirds.
    wordy = sum(len(run) for run in re.findall(r"[a-z]{4,}", body))
    return wordy / len(body) < 0.4


def _scrub_secrets(text: str) -> str:
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(SECRET, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {SECRET}", text)
    text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
    text = _LONG_HEX.sub(SECRET, text)
    text = _LONG_B64.sub(lambda m: SECRET if _looks_random(m.group(0)) else m.group(0), text)
    return text


# --------------------------------------------------------------------------- e-mail

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)

# --------------------------------------------------------------------------- IBAN

_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")


def _iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def _replace_iban(m: re.Match[str]) -> str:
    text = m.group(0)
    # The pattern may run into a following upper-case word ("... 3000 TO BOB"): trim
    # space-separated groups from the right until the checksum holds.
    parts = text.split(" ")
    for end in range(len(parts), 0, -1):
        candidate = " ".join(parts[:end])
        if _iban_ok(candidate):
            rest = " ".join(parts[end:])
            return IBAN + (" " + rest if rest else "")
    return text


# --------------------------------------------------------------------------- cards

# Contiguous 13-19 digits, or the printed groupings (4-4-4-4[-3], Amex 4-6-5).
_CARD = re.compile(
    r"(?<![\d-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\d-])"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _replace_card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    # Issuer ranges start with 2-6 (Mastercard 2-series, Amex, Visa, Mastercard, Discover);
    # this keeps millisecond timestamps and most order numbers intact.
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits):
        return CARD
    return m.group(0)


# --------------------------------------------------------------------------- phones

# International: +CC then 2-5 groups ("+1 415 555 0134", "+44 20 7946 0958",
# "+44 (0)20 7946 0958", "+14155550134").
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,6}(?!\w)")
# North American national: "(415) 555-0134", "415-555-0134", "415.555.0134", "415 555 0134".
_PHONE_NANP = re.compile(r"(?<![\w(])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w])")
# Other national numbers with a trunk 0: "020 7946 0958", "06 12 34 56 78", "030 12345678".
_PHONE_TRUNK = re.compile(r"(?<![\w.,:/-])0\d{1,4}(?:[ -]\d{2,8}){1,4}(?![\w.:/-]|,\d)")


def _phone_if(min_digits: int, max_digits: int) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        n = sum(ch.isdigit() for ch in m.group(0))
        return PHONE if min_digits <= n <= max_digits else m.group(0)

    return replace


def _scrub_phones(text: str) -> str:
    text = _PHONE_INTL.sub(_phone_if(8, 15), text)
    text = _PHONE_NANP.sub(PHONE, text)
    text = _PHONE_TRUNK.sub(_phone_if(9, 12), text)
    return text


# --------------------------------------------------------------------------- public API


def scrub_text(text: str) -> str:
    """`text` with e-mail addresses, phone numbers, keys/tokens, card numbers and IBANs
    replaced by typed placeholders. Idempotent."""
    if not text:
        return text
    text = _scrub_secrets(text)
    text = _EMAIL.sub(EMAIL, text)
    text = _IBAN.sub(_replace_iban, text)
    text = _CARD.sub(_replace_card, text)
    text = _scrub_phones(text)
    return text


def scrub_obj(obj: T) -> T:
    """A copy of `obj` with every string in it scrubbed: dict keys and values, lists,
    tuples, sets, dataclass instances (a `Trace`) and pydantic models. Other values are
    returned as they are."""
    if isinstance(obj, str):
        return scrub_text(obj)  # type: ignore[return-value]
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            new_key = scrub_obj(key)
            # Two keys that scrub to the same placeholder must not overwrite each other.
            n = 2
            base = new_key
            while new_key in out:
                new_key = f"{base}#{n}"
                n += 1
            out[new_key] = scrub_obj(value)
        return out  # type: ignore[return-value]
    if isinstance(obj, list):
        return [scrub_obj(v) for v in obj]  # type: ignore[return-value]
    if isinstance(obj, tuple):
        items = [scrub_obj(v) for v in obj]
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*items)  # type: ignore[return-value]
        return tuple(items)  # type: ignore[return-value]
    if isinstance(obj, (set, frozenset)):
        return type(obj)(scrub_obj(v) for v in obj)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: scrub_obj(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    if isinstance(obj, BaseModel):
        update = {name: scrub_obj(getattr(obj, name)) for name in type(obj).model_fields}
        return obj.model_copy(update=update)  # type: ignore[return-value]
    return obj


def eligible_traces(traces: list[Trace]) -> list[Trace]:
    """The traces that may be shown to a cloud teacher: all but those marked sensitive."""
    return [t for t in traces if not t.sensitive]
