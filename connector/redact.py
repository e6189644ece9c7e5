"""Keeping secrets out of everything the connector writes: dead-letter headers, logs and exceptions.

Secrets are replaced before anything is cut to length: cutting first could split a secret at the cut,
leave its first part behind, and no longer match it whole. An API's answer is masked once, as it
arrives (`mask`), before any reader, message or dead letter takes a piece of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

MASK = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def mask(body: bytes, secrets: Iterable[str]) -> bytes:
    """`body` with every secret replaced by as many `*`: lengths and positions stay, so text cut from it
    later can never end inside a secret that was masked whole, and JSON stays JSON."""
    for secret in secrets:
        if secret:
            raw = secret.encode()
            body = body.replace(raw, b"*" * len(raw))
    return body


def cut(body: bytes, limit: int) -> bytes:
    """At most `limit` bytes of `body`, never ending inside a UTF-8 character."""
    if len(body) <= limit:
        return body
    return body[:limit].decode("utf-8", "ignore").encode()


# The secrets of every sink of this process, each a live list (an OAuth2 flow adds the tokens it fetches).
_KNOWN: dict[int, Sequence[str]] = {}
_installed = False


def register(secrets: Sequence[str]) -> None:
    """Keep these secrets out of every log line of the process from now on."""
    _KNOWN[id(secrets)] = secrets


def install_log_redaction() -> None:
    """Redact known secrets from each log record as it is made, whichever handler then writes it.

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
        if _KNOWN:
            message = record.getMessage()
            clean = redact(message, (s for secrets in list(_KNOWN.values()) for s in secrets))
            if clean != message:
                record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)
