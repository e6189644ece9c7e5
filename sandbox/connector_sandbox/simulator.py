"""What every API simulator shares: settings tests can change, auth, faults, rate limits and stats.

Settings (changed through `POST /_sandbox/{api}/config`, merged into the current ones):
- `token`: the credential the API accepts; `forbidden_tokens`: credentials answered with 403.
- `rate_limit`: `{mode: none}`; `{mode: fixed_window, limit, window_seconds}` answers every request with
  `X-RateLimit-Limit/Remaining/Reset` and, past the limit, 429 with `Retry-After`;
  `{mode: retry_after_only, ...}` the same window but 429s carry only `Retry-After`;
  `{mode: no_headers, ...}` 429s with no hint at all. Simulators of one API share one window, rule and
  count (a tenant's budget: Rally UXR's activities and people imports and import status polls count
  together), so setting `rate_limit` on either sets it for both.
- `burst_429`: `{every_seconds, duration_seconds}`: for the first `duration_seconds` of every
  `every_seconds`, every request gets 429 with `Retry-After`.
- `latency_ms`: added to every answer; `fail_rate`: share of requests answered with one of
  `fail_statuses` (default [500]); `timeout_rate`: share of requests answered only after
  `timeout_seconds` (the request is still processed, as a real API would: a client that gave up will send
  a duplicate); `reset_rate`: share of connections reset before an answer; `outage_until`: epoch seconds
  until which every request gets 503; `seed`: for reproducible fault injection.
- `import_seconds`: how long an asynchronous import takes to reach its terminal status;
  `status_endpoint`: false answers every import status request 404, as an API without that endpoint
  (it is our assumption where the public docs are silent); `echo_headers`: refusals (400) carry the
  request's headers in their body, credentials included, as some APIs' error pages do.
- OAuth2: besides `token`, any unexpired token issued by `POST /_sandbox/oauth/token` is accepted.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from typing import Any

from aiohttp import web

DEFAULTS: dict[str, Any] = {
    "token": "sandbox-token",
    "forbidden_tokens": ["forbidden-token"],
    "burst_429": None,
    "latency_ms": 0,
    "fail_rate": 0.0,
    "fail_statuses": [500],
    "timeout_rate": 0.0,
    "timeout_seconds": 5.0,
    "reset_rate": 0.0,
    "outage_until": 0,
    "import_seconds": 0.3,
    "status_endpoint": True,
    "echo_headers": False,
    "seed": 1,
}


class TokenIssuer:
    """OAuth2 client-credentials tokens for every simulator (`POST /_sandbox/oauth/token`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.client_id = "sandbox-client"
        self.client_secret = "sandbox-secret"
        self.expires_in = 3600.0
        self.tokens: dict[str, float] = {}  # token -> epoch seconds it expires
        self.issued = 0

    def issue(self, client_id: str, client_secret: str) -> dict[str, Any] | None:
        if client_id != self.client_id or client_secret != self.client_secret:
            return None
        self.issued += 1
        token = f"oauth-{self.issued}-{random.getrandbits(48):012x}"
        self.tokens[token] = time.time() + self.expires_in
        return {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}

    def valid(self, token: str | None) -> bool:
        return token is not None and self.tokens.get(token, 0.0) > time.time()


ISSUER = TokenIssuer()
# While refusing connections, connections already open are reset too (a real outage drops them).
REFUSING = {"until": 0.0}


NO_LIMIT: dict[str, Any] = {"mode": "none"}


class RateWindow:
    """A tenant's rate limit: its rule and the requests counted in the current fixed window."""

    def __init__(self) -> None:
        self.rule = NO_LIMIT
        self.start = 0.0
        self.count = 0


class Simulator:
    """Base of one API's simulator: `name` is its key under /_sandbox/, `prefix` its path prefix."""

    name = ""
    prefix = ""

    def __init__(self, window: RateWindow | None = None) -> None:
        self.window = window or RateWindow()
        self.reset()

    def add_routes(self, app: web.Application) -> None:
        """Mount this API's endpoints."""
        raise NotImplementedError

    def reset(self) -> None:
        self.settings: dict[str, Any] = {
            k: (v.copy() if isinstance(v, list | dict) else v) for k, v in DEFAULTS.items()
        }
        self.rng = random.Random(self.settings["seed"])
        self.accepted: list[dict[str, Any]] = []
        self.statuses: Counter[int] = Counter()
        self.refused = 0
        self.max_batch = 0
        self.window.rule, self.window.start, self.window.count = NO_LIMIT, 0.0, 0
        self.resets = 0
        self.timeline: list[tuple[float, int]] = []  # (epoch seconds, records accepted) per accepted request
        # (epoch seconds, "METHOD route") per request that used the rate-limit budget: imports, status polls
        self.calls: list[tuple[float, str]] = []

    def configure(self, changes: dict[str, Any]) -> None:
        unknown = set(changes) - set(DEFAULTS) - {"rate_limit"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        changes = dict(changes)
        if "rate_limit" in changes:
            self.window.rule = changes.pop("rate_limit")
        self.settings.update(changes)
        if "seed" in changes:
            self.rng = random.Random(changes["seed"])

    def stats(self) -> dict[str, Any]:
        return {
            "requests": {str(k): v for k, v in sorted(self.statuses.items())},
            "accepted": len(self.accepted),
            "refused": self.refused,
            "max_batch": self.max_batch,
            "rate_limited": self.statuses[429],
            "resets": self.resets,
        }

    def answer(
        self,
        status: int,
        body: Any = None,
        text: str | None = None,
        headers: dict[str, str] | None = None,
        request: web.Request | None = None,
    ) -> web.Response:
        self.statuses[status] += 1
        if request is not None and self.settings["echo_headers"] and isinstance(body, dict):
            body = {"request_headers": {str(k): str(v) for k, v in request.headers.items()}, **body}
        if text is not None:
            return web.Response(status=status, text=text, headers=headers)
        return web.json_response(body, status=status, headers=headers, dumps=_dumps)

    def credential(self, request: web.Request) -> str | None:
        """The credential the request carries; each API says where (bearer by default)."""
        value = request.headers.get("Authorization", "")
        return value[7:] if value.startswith("Bearer ") else None

    async def gate(self, request: web.Request) -> tuple[web.Response | None, dict[str, str]]:
        """Latency, outage, auth, rate limit and random faults, in that order.

        Returns an answer to send instead of the real one, or None and the headers to add to it.
        """
        s = self.settings
        if s["latency_ms"]:
            await asyncio.sleep(s["latency_ms"] / 1000)
        if time.time() < s["outage_until"]:
            return self.answer(503, text="Service Unavailable", headers={"Retry-After": "1"}), {}
        if time.time() < REFUSING["until"] or (s["reset_rate"] and self.rng.random() < s["reset_rate"]):
            if request.transport is not None:
                request.transport.abort()  # the client sees the connection reset, no answer
            self.resets += 1
            return web.Response(status=500), {}  # never reaches the client
        token = self.credential(request)
        if token in s["forbidden_tokens"]:
            return self.answer(403, text="Forbidden"), {}
        if token != s["token"] and not ISSUER.valid(token):
            return self.answer(401, text="Unauthorized"), {}
        burst = s["burst_429"]
        if burst:
            phase = time.time() % float(burst["every_seconds"])
            if phase < float(burst["duration_seconds"]):
                wait = str(max(1, math.ceil(float(burst["duration_seconds"]) - phase)))
                return self.answer(429, text="Too Many Requests", headers={"Retry-After": wait}), {}
        headers: dict[str, str] = {}
        limit = self.window.rule
        if limit.get("mode", "none") != "none":
            refusal = self._rate_limit(limit, headers)
            if refusal is not None:
                return refusal, {}
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        self.calls.append((time.time(), f"{request.method} {route.removeprefix(self.prefix)}"))
        if s["fail_rate"] and self.rng.random() < s["fail_rate"]:
            status = self.rng.choice(s["fail_statuses"])
            return self.answer(status, text="Injected failure", headers=headers), {}
        if s["timeout_rate"] and self.rng.random() < s["timeout_rate"]:
            await asyncio.sleep(float(s["timeout_seconds"]))
        return None, headers

    def accepted_now(self, count: int) -> None:
        """Note a request whose records were accepted, for tests that time recoveries."""
        self.timeline.append((time.time(), count))

    def _rate_limit(self, limit: dict[str, Any], headers: dict[str, str]) -> web.Response | None:
        now = time.time()
        window = float(limit.get("window_seconds", 60))
        # Fixed windows aligned to the epoch, like an API counting per calendar minute.
        start = math.floor(now / window) * window
        counted = self.window
        if start != counted.start:
            counted.start, counted.count = start, 0
        reset = start + window
        allowed = int(limit.get("limit", 1000))
        mode = limit["mode"]
        if counted.count >= allowed:
            wait = str(max(1, math.ceil(reset - now)))
            if mode == "fixed_window":
                h = {"Retry-After": wait, **_limit_headers(allowed, 0, reset)}
            elif mode == "retry_after_only":
                h = {"Retry-After": wait}
            else:
                h = {}
            return self.answer(429, text="Too Many Requests", headers=h)
        counted.count += 1
        if mode == "fixed_window":
            headers.update(_limit_headers(allowed, allowed - counted.count, reset))
        return None


def _limit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.ceil(reset)),
    }


def _dumps(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()
