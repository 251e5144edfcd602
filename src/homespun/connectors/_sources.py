"""Reading a connector source that is either a local file or an http(s) URL, with a size cap,
a timeout and a short cache for URLs (calendars and feeds change slowly; models ask often)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

__all__ = ["SourceError", "SourceReader", "is_url", "source_label"]

USER_AGENT = "homespun-connector/0.1 (+https://github.com/homespun)"


class SourceError(RuntimeError):
    """A source could not be read; the message names it and says why."""


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://", "webcal://"))


def source_label(source: str) -> str:
    """How a source is named in messages: a URL loses its query and the middle of its path,
    where private calendar and feed URLs keep their secret tokens."""
    if not is_url(source):
        return source
    parsed = urlsplit(source)
    segments = [s for s in parsed.path.split("/") if s]
    tail = segments[-1] if segments else ""
    path = "/" if not segments else ("/" + tail if len(segments) == 1 else "/…/" + tail)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{path}" + ("?…" if parsed.query else "")


def _http_url(source: str) -> str:
    # webcal:// is how calendar apps spell a subscription; it is served over https
    return (
        "https://" + source[len("webcal://") :]
        if source.lower().startswith("webcal://")
        else source
    )


@dataclass(slots=True)
class _Cached:
    fetched_at: float
    data: bytes


class SourceReader:
    """Reads sources; URL bodies are kept for `cache_seconds`, files are read every time."""

    def __init__(self, *, max_bytes: int, timeout: float, cache_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def read(self, source: str) -> bytes:
        if is_url(source):
            return self._read_url(source)
        return self._read_file(source)

    def _read_file(self, source: str) -> bytes:
        path = Path(source).expanduser()
        try:
            with path.open("rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise SourceError(f"{source}: no such file") from None
        except OSError as exc:
            raise SourceError(f"{source}: cannot read it ({exc.strerror or exc})") from None
        if len(data) > self.max_bytes:
            raise SourceError(f"{source}: larger than {self.max_bytes} bytes")
        return data

    def _read_url(self, source: str) -> bytes:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(source)
        if cached and now - cached.fetched_at < self.cache_seconds:
            return cached.data
        data = self._download(source)
        with self._lock:
            self._cache[source] = _Cached(fetched_at=time.monotonic(), data=data)
        return data

    def _download(self, source: str) -> bytes:
        url = _http_url(source)
        label = source_label(source)
        try:
            with httpx.Client(
                timeout=self.timeout,
                follow_redirects=True,
                max_redirects=5,
                headers={"User-Agent": USER_AGENT},
            ) as client:
                with client.stream("GET", url) as response:
                    if response.status_code >= 400:
                        raise SourceError(f"{label}: HTTP {response.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise SourceError(f"{label}: larger than {self.max_bytes} bytes")
                        chunks.append(chunk)
        except httpx.TimeoutException:
            raise SourceError(f"{label}: timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            reason = str(exc).replace(url, label).replace(source, label)
            raise SourceError(f"{label}: {type(exc).__name__}: {reason}") from None
        return b"".join(chunks)
