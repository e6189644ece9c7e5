"""Keeping secrets out of everything the connector writes: dead-letter headers, logs and exceptions.

Secrets are replaced before anything is cut to length: cutting first could split a secret at the cut,
leave its first part behind, and no longer match it whole.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def redact_and_cut(body: bytes, secrets: Iterable[str], limit: int) -> bytes:
    """At most `limit` bytes of `body`, secrets replaced first, never ending inside a UTF-8 character."""
    secrets = [s for s in secrets if s]
    # Only the head is kept, but a secret may start inside it and end past it: read that far too.
    reach = limit + max((len(s.encode()) for s in secrets), default=0)
    text = redact(body[:reach].decode("utf-8", "replace"), secrets)
    return text.encode()[:limit].decode("utf-8", "ignore").encode()
