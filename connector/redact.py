"""Keeping secrets out of everything the connector writes: logs, tracebacks, dead letters, exceptions.

One registry per process (`SECRETS`) holds every configured secret (credentials, http.bulk's header
values, registry passwords, secret files) for the life of the process, and the access tokens it was
issued, of which the newest KEEP_TOKENS of each issuer are kept: a token older than that has long
expired. Nothing else keeps a list of secrets, so nothing can trim one away.

A secret is masked in every form an answer or a library may echo it in: as it is, JSON-escaped,
percent-encoded, base64 (standard and URL-safe, at any alignment inside a longer base64 text) and hex.

Secrets are replaced before anything is cut to length: cutting first could split a secret at the cut,
leave its first part behind, and no longer match it whole. An API's answer is masked once, as it
arrives (`mask`), before any reader, message or dead letter takes a piece of it; dead letters and log
lines (tracebacks included) are masked again as they are written.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import traceback
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 4  # characters: a shorter value would mask ordinary text everywhere
KEEP_TOKENS = 16  # issued access tokens kept: the one in use and those still answering in flight
_MIN_FORM = 4  # a base64 core shorter than this is too likely to occur by chance


def _base64_cores(raw: bytes, encode: Any) -> list[bytes]:
    """The part of `raw`'s base64 that is the same wherever it stands in a longer text, for each of the
    three alignments: the characters made only of `raw`'s bits."""
    cores = []
    for shift in range(3):
        text = encode(b"\0" * shift + raw)
        start = -(-8 * shift // 6)
        end = 8 * (shift + len(raw)) // 6
        core = text[start:end]
        if len(core) >= _MIN_FORM:
            cores.append(core)
    return cores


def _upper_hex(match: re.Match[str]) -> str:
    return "\\u" + match.group(0)[2:].upper()


def forms(secret: str) -> set[bytes]:
    """Every form of `secret` that is masked."""
    raw = secret.encode()
    found = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    found.add(json.dumps(secret)[1:-1].encode())  # non-ASCII as \\uXXXX
    found.add(json.dumps(secret, ensure_ascii=False)[1:-1].encode())
    found.add(secret.replace("/", "\\/").encode())
    # Other JSON encoders: Go's escapes & < > as \u00XX, .NET's also + and '; some escape every character;
    # hex in either case.
    plain = json.dumps(secret)[1:-1]
    go = "".join(f"\\u{ord(c):04x}" if c in "&<>" else c for c in plain)
    dotnet = "".join(f"\\u{ord(c):04x}" if c in "&<>+'" else c for c in plain)
    every = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in secret)
    for escaped in (go, dotnet, every, plain):
        found.add(escaped.encode())
        found.add(re.sub(r"\\u[0-9a-f]{4}", _upper_hex, escaped).encode())
    # JavaScript's encodeURIComponent leaves !'()* as they are.
    for quoted in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe="!'()*")):
        found.add(quoted.encode())
        found.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted).encode())
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found.update(_base64_cores(raw, encode))
    return {f for f in found if len(f) >= _MIN_FORM}


class Secrets:
    """The process's secrets and every form of them, masked in bytes and text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # librdkafka's callbacks log from its own threads
        self._configured: dict[str, None] = {}  # never removed
        # Per issuer (one OAuth2 flow): one flow refreshing often must not age out another's live token.
        self._tokens: dict[str, deque[str]] = {}
        self._bytes: tuple[bytes, ...] = ()
        self._text: tuple[str, ...] = ()

    def add(self, secret: str) -> None:
        """A configured secret, masked for the life of the process."""
        if len(secret) >= MIN_SECRET and secret not in self._configured:
            with self._lock:
                self._configured[secret] = None
                self._rebuild()

    def add_token(self, token: str, issuer: str = "") -> None:
        """An access token `issuer` (one OAuth2 flow) was issued; its oldest ages out past KEEP_TOKENS."""
        if len(token) < MIN_SECRET or token in self:
            return
        with self._lock:
            self._tokens.setdefault(issuer, deque(maxlen=KEEP_TOKENS)).append(token)
            self._rebuild()

    def __contains__(self, secret: object) -> bool:
        return secret in self._configured or any(secret in t for t in self._tokens.values())

    def _rebuild(self) -> None:
        every: set[bytes] = set()
        for secret in [*self._configured, *(t for tokens in self._tokens.values() for t in tokens)]:
            every |= forms(secret)
        # Longest first: a form that contains another is masked whole.
        ordered = sorted(every, key=len, reverse=True)
        self._bytes = tuple(ordered)
        self._text = tuple(f.decode("utf-8", "replace") for f in ordered)

    def mask(self, body: bytes, extra: Iterable[str] = ()) -> bytes:
        """`body` with every form of every secret replaced by as many `*`: lengths and positions stay, so
        text cut from it later can never end inside a secret that was masked whole, and JSON stays JSON."""
        for form in (*_extra_bytes(extra), *self._bytes):
            if form in body:
                body = body.replace(form, b"*" * len(form))
        return body

    def redact(self, text: str, extra: Iterable[str] = ()) -> str:
        for form in (*_extra_text(extra), *self._text):
            if form in text:
                text = text.replace(form, MASK)
        return text


def _extra_bytes(extra: Iterable[str]) -> list[bytes]:
    return sorted({f for s in extra if len(s) >= MIN_SECRET for f in forms(s)}, key=len, reverse=True)


def _extra_text(extra: Iterable[str]) -> list[str]:
    return [f.decode("utf-8", "replace") for f in _extra_bytes(extra)]


SECRETS = Secrets()


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and those in `extra`) replaced by ***."""
    return SECRETS.redact(text, extra)


def mask(body: bytes, extra: Iterable[str] = ()) -> bytes:
    """`body` with every registered secret (and those in `extra`) replaced by as many `*`."""
    return SECRETS.mask(body, extra)


def register(secrets: Iterable[str]) -> None:
    """Keep these configured secrets out of everything the process writes from now on."""
    for secret in secrets:
        SECRETS.add(secret)


def cut(body: bytes, limit: int) -> bytes:
    """At most `limit` bytes of `body`, never ending inside a UTF-8 character."""
    if len(body) <= limit:
        return body
    return body[:limit].decode("utf-8", "ignore").encode()


def format_exception(exc_info: Any) -> str:
    """A traceback as text, secrets masked (an exception's message may quote an answer or a URL)."""
    return SECRETS.redact("".join(traceback.format_exception(*exc_info)).rstrip("\n"))


_installed = False


def install_log_redaction() -> None:
    """Redact secrets from each log record as it is made, whichever handler then writes it: its message
    and its traceback (formatted here, once, so no handler formats the raw one).

    A safety net under the redaction done where messages are built: an exception quoting an answer, or a
    library's own log line, cannot carry a credential into the logs.
    """
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: logging reports it itself when it formats the line
            return record
        clean = SECRETS.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = format_exception(record.exc_info)
        return record

    logging.setLogRecordFactory(factory)
