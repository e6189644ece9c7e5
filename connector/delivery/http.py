"""The sink's HTTP client: one keep-alive connection pool per sink; each `send` is one request, read whole.

The send path uses aiohttp's client rather than httpx: against the sandbox it costs about a third of the
CPU per request (0.24 against 0.74 ms for a 60 KB import, 0.17 against 0.55 ms for a status request), and
at full load the send path was a fifth of the connector's time. aiohttp is already here for the metrics and
sandbox servers. httpx stays where requests are few (Schema Registry, token endpoint, People.ai source,
`check`), and in unit tests, whose fake APIs are httpx MockTransports (`HttpxClient`).

Both keep HTTP/1.1 connections alive, time out connecting, waiting for a connection and reading (each
`delivery.timeout`); this one also bounds sending until the answer begins and reading the answer (each
within a `deadline`: an upload the other end stopped reading, an answer that trickles for ever), verify
TLS against the same trust store (httpx's), go through the proxy the environment names (looked up once:
connector.delivery.proxy; ~/.netrc is never read), join the base URL and a path as httpx did,
and follow no redirects. `send` either returns an `Answer` or raises `NoAnswer` saying why; a token
endpoint that refuses our client credentials raises DestinationAuthError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

from connector.delivery.auth import OAuth2ClientCredentials, TokenEndpointError
from connector.errors import NoAnswer as NoAnswer
from connector.errors import NoAnswerWhy as NoAnswerWhy

USER_AGENT = "activity-connector"
MIN_RATE = 64 * 1024  # bytes/s below which a transfer counts as stalled (see `deadline`)
ANSWER_ALLOWANCE = 16 * 1024 * 1024  # bytes an answer of unknown length is given time for
MAX_HEADER = 65536  # bytes of an answer's header line or field (aiohttp's default, 8190, refused some)


def deadline(timeout: float, size: int) -> float:
    """Seconds to send a request of `size` bytes until its answer begins, or to read an answer of `size`
    bytes: four timeouts plus the bytes' time at MIN_RATE. Reading has `timeout` per read, but sending has
    no such bound (a peer that accepts a connection and never reads would hold the lane for ever), and an
    answer trickling in just within each read's timeout would never end."""
    return 4 * timeout + size / MIN_RATE


def join(base: str, path: str) -> str:
    """`path` under `base`: `https://api/v1` with `/imports` or `imports` is `https://api/v1/imports`; an
    empty path is the base URL itself."""
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]  # looked up case-insensitively


class HttpClient(Protocol):
    async def send(self, method: str, path: str, content: bytes, headers: Mapping[str, str]) -> Answer:
        """One request to `path` under the client's base URL (one more after a 401 with OAuth2)."""
        ...

    async def aclose(self) -> None: ...


class AiohttpClient:
    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        concurrency: int,
        timeout: float,
        auth: OAuth2ClientCredentials | None = None,
        proxy: str | None = None,
    ) -> None:
        self._base = base_url
        self._headers = {"User-Agent": USER_AGENT, **headers}
        self._concurrency = concurrency
        self._timeout = timeout
        self._auth = auth
        self._proxy = proxy  # connector.delivery.proxy: every request goes to the base URL's host
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop it is made in.
        # As many connections as lanes, and as many again for the imports' status requests.
        connector = aiohttp.TCPConnector(
            limit=2 * self._concurrency, ssl=httpx.create_ssl_context(), enable_cleanup_closed=True
        )
        t = self._timeout
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t),
            proxy=self._proxy,
            trust_env=False,  # True would read ~/.netrc into requests, and look the proxy up on each
            skip_auto_headers=("User-Agent",),
            max_line_size=MAX_HEADER,
            max_field_size=MAX_HEADER,
        )
        return self._session

    async def send(self, method: str, path: str, content: bytes, headers: Mapping[str, str]) -> Answer:
        session = self._session or self._open()
        url = join(self._base, path)
        sent = {**self._headers, **headers}
        if self._auth is None:
            return await self._once(session, method, url, content, sent)
        token = await self._token()
        sent["Authorization"] = f"Bearer {token}"
        answer = await self._once(session, method, url, content, sent)
        if answer.status == 401:  # the token may have been revoked early: one more with a new one
            sent["Authorization"] = f"Bearer {await self._token(stale=token)}"
            answer = await self._once(session, method, url, content, sent)
        return answer

    async def _token(self, stale: str | None = None) -> str:
        assert self._auth is not None
        try:
            return await self._auth.token(stale)
        except TokenEndpointError as exc:
            raise NoAnswer("connection", str(exc)) from None

    async def _once(
        self, session: aiohttp.ClientSession, method: str, url: str, content: bytes, headers: dict[str, str]
    ) -> Answer:
        try:
            async with asyncio.timeout(deadline(self._timeout, len(content))) as limit:
                async with session.request(
                    method, url, data=content or None, headers=headers, allow_redirects=False
                ) as response:
                    # The answer has begun: from now, the time to read it (a large error file may be slow).
                    size = max(response.content_length or 0, ANSWER_ALLOWANCE)
                    limit.reschedule(asyncio.get_running_loop().time() + deadline(self._timeout, size))
                    return Answer(response.status, await response.read(), response.headers)
        except TimeoutError:
            raise NoAnswer("timeout") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            # An answer that could not be read (a corrupt compressed body, a malformed status line).
            raise NoAnswer("unreadable_answer", type(exc).__name__) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise NoAnswer("connection", type(exc).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_READ = httpx.ByteStream(b"")  # what a read response's stream is replaced by


class HttpxClient:
    """An httpx client as the send path's client: unit tests' fake APIs (httpx.MockTransport)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(self, method: str, path: str, content: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            response = await self._client.request(method, path, content=content, headers=dict(headers))
        except httpx.TimeoutException:
            raise NoAnswer("timeout") from None
        except httpx.TransportError as exc:
            raise NoAnswer("connection", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise NoAnswer("unreadable_answer", type(exc).__name__) from None
        # httpx's response and its stream refer to each other, and the response holds the request and its
        # body: only the cyclic collector (run seldom here: connector.app) would free that body.
        for answered in (*response.history, response):  # history: a 401 answered before a new token
            answered.stream = _READ
        return Answer(response.status_code, response.content, response.headers)

    async def aclose(self) -> None:
        await self._client.aclose()
