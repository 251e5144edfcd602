"""Turning untrusted markup from the outside world (feeds, mail, calendars) into plain text."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

__all__ = ["clip", "html_to_text", "one_line"]

_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption footer h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table td th tr ul".split()
)
_SKIPPED_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript", "svg"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment: tags, scripts and styles dropped, entities decoded,
    blank runs collapsed. Plain text passes through (entities still decoded)."""
    if "<" not in markup:
        text = html.unescape(markup)
    else:
        parser = _TextExtractor()
        try:
            parser.feed(markup)
            parser.close()
            text = "".join(parser.parts)
        except Exception:  # malformed markup: fall back to dropping anything tag-shaped
            text = html.unescape(re.sub(r"<[^>]*>", " ", markup))
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed to single spaces, control characters dropped."""
    return re.sub(r"\s+", " ", _CONTROL.sub("", text)).strip()


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked with '…' when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"
