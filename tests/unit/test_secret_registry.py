"""One registry of secrets that nothing trims: configured secrets (http.bulk's headers too) outlive any
number of issued tokens, and are masked in every encoding an API may echo them back in, tracebacks too."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import re
from urllib.parse import quote, quote_plus

import httpx
import pytest

from connector.config import DeliverySettings, RetrySettings, parse_settings
from connector.delivery.auth import MIN_TOKEN_REUSE, OAuth2ClientCredentials
from connector.delivery.http import HttpxClient
from connector.delivery.service import DeliveryService
from connector.destinations.http_bulk import HttpBulk
from connector.logs import JsonFormatter, TextFormatter
from connector.metrics import Metrics
from connector.redact import SECRETS, Secrets, install_log_redaction, mask, redact
from connector.sink.pipeline import build_sink
from tests.unit.helpers import record

HEADER_SECRET = "hdr-Secret/Value+42==&<x>!"
CLIENT_SECRET = "cl1ent-s3cret-canary"


def _encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
        quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(b"user:" + raw).decode(),  # a Basic credential: the secret at an offset
        base64.b64encode(b"xy" + raw + b"tail").decode(),
        raw.hex(),
        # Review: other encoders' escapes (Go's \u0026 for &, every character as \uXXXX in upper hex) and
        # JavaScript's encodeURIComponent (leaves ! as it is) passed through unmasked.
        "".join(f"\\u{ord(c):04X}" if c in "&<>+'" else c for c in json.dumps(secret)[1:-1]),  # .NET
        "".join(f"\\u{ord(c):04X}" for c in secret),
        quote(secret, safe="!'()*"),
    ]


def _leaked(text: str, secret: str) -> list[str]:
    """Encodings of `secret` found in `text`, each compared by a core of 8 characters (a part leaking
    is a leak too)."""
    found = []
    for encoded in _encodings(secret):
        core = encoded[len(encoded) // 2 - 4 : len(encoded) // 2 + 4] if len(encoded) > 12 else encoded
        if core in text:
            found.append(encoded)
    return found


def _flow(tokens: list[str]) -> OAuth2ClientCredentials:
    """An OAuth2 flow whose token endpoint issues `tokens` in turn."""
    issued = iter(tokens)
    flow = OAuth2ClientCredentials("http://idp/token", "client", CLIENT_SECRET)

    def endpoint(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": next(issued), "expires_in": 3600})

    flow._client = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
    return flow


def test_a_header_secret_outlives_any_number_of_issued_tokens() -> None:
    """The third token trimmed http.bulk's header value from the sink's list: an API echoing request
    headers in a refusal put it into the dead letter's body and message."""
    settings = parse_settings(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "sinks": [
                {
                    "name": "bulk",
                    "topics": ["t"],
                    "destination": {
                        "type": "http.bulk",
                        "url": "http://api",
                        "headers": {"X-Tenant-Key": HEADER_SECRET},
                        "auth": {
                            "type": "oauth2_client_credentials",
                            "token_url": "http://idp/token",
                            "client_id": "c",
                            "client_secret": CLIENT_SECRET,
                        },
                    },
                    "dead_letter": {"topic": "t.dlq"},
                }
            ],
        }
    )
    build_sink(settings.sinks[0], settings.kafka, Metrics())  # registers the header value
    tokens = [f"issued-token-{i:04d}-abcdef" for i in range(40)]
    flow = _flow(tokens)

    async def fetch_all() -> None:
        stale = None
        for _ in tokens:
            stale = await flow.token(stale=stale)

    asyncio.run(fetch_all())
    assert flow.fetched == 40

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text=f"refused; you sent {dict(request.headers)!r} {HEADER_SECRET}")

    async def deliver() -> list[tuple[bytes, str]]:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(echo)) as client:
            service = DeliveryService(
                HttpBulk({"headers": {"X-Tenant-Key": HEADER_SECRET}}),
                HttpxClient(client),
                DeliverySettings(retry=RetrySettings(max_attempts=2, initial_backoff=0.001)),
                Metrics().sink("s"),
            )
            result = await service.deliver([record({"a": 1})])
            return [(f.http_body, f.message) for _, f in result.failed]

    [(body, message)] = asyncio.run(deliver())
    assert _leaked(body.decode(), HEADER_SECRET) == [] and b"refused" in body
    assert _leaked(message, HEADER_SECRET) == []
    # The newest tokens are masked too; configured secrets never age out.
    assert tokens[-1] in SECRETS and HEADER_SECRET in SECRETS and CLIENT_SECRET in SECRETS
    assert tokens[0] not in SECRETS  # issued tokens age out: they have long expired


@pytest.mark.parametrize("encoded", _encodings(HEADER_SECRET))
def test_a_secret_is_masked_in_every_encoding_an_api_may_echo(encoded: str) -> None:
    secrets = Secrets()
    secrets.add(HEADER_SECRET)
    body = f'{{"error": "bad header", "echo": "{encoded}"}}'.encode()
    masked = secrets.mask(body)
    assert len(masked) == len(body)  # positions kept: a later cut cannot end inside a secret
    assert _leaked(masked.decode(), HEADER_SECRET) == [], masked
    assert _leaked(secrets.redact(body.decode()), HEADER_SECRET) == []


def test_ordinary_text_is_left_alone() -> None:
    secrets = Secrets()
    secrets.add(HEADER_SECRET)
    text = "the import i-123 failed: personId p-7 is unknown (line 3)"
    assert secrets.redact(text) == text and mask(text.encode()) == text.encode()


def test_tracebacks_are_redacted_in_every_log_format() -> None:
    """`log.exception` printed the exception's message raw: the record factory redacted only the line."""
    install_log_redaction()
    SECRETS.add("tb-canary-Secret-99")
    logger = logging.getLogger("connector.test.tb")
    outputs = []
    for formatter in (JsonFormatter(), TextFormatter()):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        try:
            raise RuntimeError("the API said: token tb-canary-Secret-99 is wrong")
        except RuntimeError:
            logger.exception("delivery failed unexpectedly")
        finally:
            logger.removeHandler(handler)
        outputs.append(stream.getvalue())
    for output in outputs:
        assert "RuntimeError" in output and "Traceback" in output
        assert "tb-canary" not in output and "Secret-99" not in output


def test_redact_takes_extra_secrets_for_one_call() -> None:
    assert redact("x extra-secret-1 y", ["extra-secret-1"]) == "x *** y"


@pytest.mark.parametrize("expires_in", [0, -5, 1, 0.001, "nan", "-inf"])
def test_a_token_is_reused_for_a_floor_of_seconds_whatever_expires_in_says(expires_in: object) -> None:
    """`expires_in: 0` (or negative) fetched a token before every request."""
    fetched = 0

    def endpoint(request: httpx.Request) -> httpx.Response:
        nonlocal fetched
        fetched += 1
        value = float(expires_in) if isinstance(expires_in, str) else expires_in
        body = json.dumps({"access_token": f"tok-{fetched}-xyzw", "expires_in": value}, allow_nan=True)
        return httpx.Response(200, content=body.encode())

    flow = OAuth2ClientCredentials("http://idp/token", "client", CLIENT_SECRET)
    flow._client = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))

    async def many() -> set[str]:
        return {await flow.token() for _ in range(50)}

    assert asyncio.run(many()) == {"tok-1-xyzw"} and fetched == 1
    assert MIN_TOKEN_REUSE >= 30 and not math.isnan(flow._refresh_at)


def test_one_flows_refreshes_never_age_out_another_flows_live_token() -> None:
    """Review: issued tokens were kept in one deque of 16 for the process: a sink refreshing every
    minute pushed another sink's live one-hour token out, and it was no longer masked."""
    slow = _flow(["slow-sink-live-token-1"])
    fast = _flow([f"fast-sink-token-{i:03d}-abc" for i in range(40)])

    async def go() -> None:
        await slow.token()
        stale = None
        for _ in range(40):
            stale = await fast.token(stale=stale)

    asyncio.run(go())
    assert "slow-sink-live-token-1" in SECRETS
    assert b"slow-sink-live-token-1" not in mask(b'{"error": "bad token slow-sink-live-token-1"}')
