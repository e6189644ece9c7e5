"""The sink's HTTP client (connector.delivery.http.AiohttpClient) against a real local HTTP server: headers,
keep-alive, timeouts, no answer, unreadable answers, redirects, and OAuth2's one retry after a 401."""

from __future__ import annotations

import asyncio
import gc
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from connector.delivery.auth import OAuth2ClientCredentials
from connector.delivery.http import AiohttpClient, Answer, NoAnswer, join
from connector.delivery.proxy import proxy_for
from connector.errors import ConfigError, DestinationAuthError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def _run(routes: dict[str, Handler], use: Callable[[str], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        runner, url = await _serve(routes)
        try:
            return await use(url)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def _send_once(
    routes: dict[str, Handler], path: str, method: str = "GET", content: bytes = b"", timeout: float = 1.0
) -> Answer:
    """One request through a fresh client to a server with `routes`."""

    async def use(url: str) -> Answer:
        client = AiohttpClient(url, {}, 1, timeout)
        try:
            return await client.send(method, path, content, {})
        finally:
            await client.aclose()

    answer: Answer = _run(routes, use)
    return answer


def test_headers_body_and_one_kept_alive_connection() -> None:
    """http.bulk's own headers were built into each request and never sent."""
    seen: list[tuple[dict[str, str], bytes, object]] = []

    async def records(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read(), request.transport))
        return web.json_response({"ok": True}, status=202, headers={"X-RateLimit-Remaining": "7"})

    async def use(url: str) -> list[Answer]:
        client = AiohttpClient(url + "/api/v1/", {"Authorization": "Bearer t0ken"}, 2, 5.0)
        try:
            return [
                await client.send(
                    "POST", "/records", b'{"a":1}', {"Content-Type": "application/json", "X-Tenant": "t1"}
                )
                for _ in range(5)
            ]
        finally:
            await client.aclose()

    answers = _run({"/api/v1/records": records}, use)
    assert [(a.status, a.body, a.headers["x-ratelimit-remaining"]) for a in answers] == [
        (202, b'{"ok": true}', "7")
    ] * 5
    headers, body, _ = seen[0]
    assert body == b'{"a":1}'
    assert headers["Authorization"] == "Bearer t0ken" and headers["X-Tenant"] == "t1"
    assert headers["User-Agent"] == "activity-connector"
    assert headers["Content-Type"] == "application/json"
    assert len({id(transport) for _, _, transport in seen}) == 1  # one connection, kept alive


@pytest.mark.parametrize(
    ("path", "why"),
    [("/slow", "timeout"), ("/gzip-corrupt", "unreadable_answer"), ("/hang-up", "connection")],
)
def test_no_usable_answer_says_why(path: str, why: str) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def corrupt(request: web.Request) -> web.Response:
        return web.Response(body=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response(text="never read")

    with pytest.raises(NoAnswer) as no_answer:
        _send_once({"/slow": slow, "/gzip-corrupt": corrupt, "/hang-up": hang_up}, path, timeout=0.3)
    assert no_answer.value.why == why


def test_nothing_listening_is_no_answer_and_gzip_is_read() -> None:
    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b'{"z":1}'), headers={"Content-Encoding": "gzip"})

    async def use(url: str) -> tuple[bytes, str]:
        client = AiohttpClient(url, {}, 1, 1.0)
        nowhere = AiohttpClient("http://127.0.0.1:9", {}, 1, 1.0)
        try:
            answer = await client.send("GET", "/z", b"", {})
            try:
                await nowhere.send("GET", "/", b"", {})
            except NoAnswer as exc:
                return answer.body, exc.why
            return answer.body, "answered"
        finally:
            await client.aclose()
            await nowhere.aclose()

    assert _run({"/z": zipped}, use) == (b'{"z":1}', "connection")


def test_redirects_are_not_followed() -> None:
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    assert _send_once({"/r": moved}, "/r", "POST", b"x").status == 302


def test_oauth2_a_401_fetches_a_new_token_once_and_resends() -> None:
    issued: list[str] = []
    used: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_secret") != "s3cret":
            return web.json_response({"error": "invalid_client"}, status=401)
        issued.append(f"tok{len(issued)}")
        return web.json_response({"access_token": issued[-1], "expires_in": 3600})

    async def api(request: web.Request) -> web.Response:
        used.append(request.headers["Authorization"])
        # The first token is revoked early; any later one works.
        return web.Response(status=401 if request.headers["Authorization"] == "Bearer tok0" else 202)

    async def use(url: str) -> list[int]:
        auth = OAuth2ClientCredentials(url + "/token", "id", "s3cret")
        client = AiohttpClient(url, {}, 1, 1.0, auth)
        try:
            return [(await client.send("POST", "/api", b"{}", {})).status for _ in range(3)]
        finally:
            await client.aclose()
            await auth.aclose()

    assert _run({"/token": token, "/api": api}, use) == [202, 202, 202]
    assert issued == ["tok0", "tok1"]
    assert used == ["Bearer tok0", "Bearer tok1", "Bearer tok1", "Bearer tok1"]


@pytest.mark.parametrize(("status", "raised"), [(503, NoAnswer), (401, DestinationAuthError)])
def test_oauth2_token_endpoint_failures(status: int, raised: type[Exception]) -> None:
    """A token endpoint that fails is no answer (retried); one that refuses the credentials stops the sink."""

    async def token(request: web.Request) -> web.Response:
        return web.Response(status=status)

    async def api(request: web.Request) -> web.Response:
        raise AssertionError("no request without a token")

    async def use(url: str) -> None:
        auth = OAuth2ClientCredentials(url + "/token", "id", "s3cret")
        client = AiohttpClient(url, {}, 1, 1.0, auth)
        try:
            await client.send("POST", "/api", b"{}", {})
        finally:
            await client.aclose()
            await auth.aclose()

    with pytest.raises(raised):
        _run({"/token": token, "/api": api}, use)


def test_sends_leave_nothing_for_the_cyclic_collector() -> None:
    """The process runs the cyclic GC seldom (connector.app): what a send leaves in reference cycles (httpx's
    response and stream held each request body) piles up until it runs."""
    body = b"x" * 100_000

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, text="{}")

    async def use(url: str) -> int:
        client = AiohttpClient(url, {}, 2, 5.0)
        try:
            await client.send("POST", "/r", body, {})  # the session and its pool exist from here on
            gc.collect()
            gc.disable()
            try:
                for _ in range(50):
                    await client.send("POST", "/r", body, {})
                return gc.collect()
            finally:
                gc.enable()
        finally:
            await client.aclose()

    left = _run({"/r": ok}, use)
    assert left < 50  # fewer objects in cycles than sends: none left per send


def test_a_stalled_upload_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading has a timeout per read, sending had none: a peer that accepts and never reads held the lane
    (and the commit point) for ever."""
    import connector.delivery.http as http

    monkeypatch.setattr(http, "MIN_RATE", 1 << 40)  # the deadline is then 4 timeouts

    async def go() -> str:
        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AiohttpClient(f"http://127.0.0.1:{port}", {}, 1, 0.2)
        try:
            async with asyncio.timeout(10):
                await client.send("POST", "/r", b"x" * 64_000_000, {})
        except NoAnswer as exc:
            return exc.why
        finally:
            await client.aclose()
            server.close()
        return "answered"

    assert asyncio.run(go()) == "timeout"


def test_urls_join_as_with_httpx_and_long_headers_are_read() -> None:
    assert (
        join("https://api/v1", "/imports") == join("https://api/v1/", "imports") == "https://api/v1/imports"
    )
    assert join("https://api", "ingest") == "https://api/ingest"
    assert join("https://api/v2/bulk", "") == "https://api/v2/bulk"

    async def ingest(request: web.Request) -> web.Response:
        return web.Response(status=202, headers={"Link": "x" * 9000})  # aiohttp's default cap is 8190

    answer = _send_once({"/ingest": ingest}, "ingest", "POST", b"{}")
    assert answer.status == 202 and len(answer.headers["link"]) == 9000


def test_netrc_is_never_read_and_the_proxy_is_the_environments(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With aiohttp's trust_env, ~/.netrc's password went to the API as Basic auth (or clashed with ours)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password netrc-secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    seen: list[str | None] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=202)

    async def use(url: str) -> int:
        client = AiohttpClient(url, {"Authorization": "Bearer ours"}, 1, 1.0)
        bare = AiohttpClient(url, {}, 1, 1.0)
        try:
            return (await client.send("POST", "/a", b"{}", {})).status + (
                await bare.send("POST", "/a", b"{}", {})
            ).status
        finally:
            await client.aclose()
            await bare.aclose()

    assert _run({"/a": api}, use) == 404
    assert seen == ["Bearer ours", None]


def test_the_proxy_is_the_environments_as_curl_and_httpx_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    key = "sinks[0].destination.url"
    assert proxy_for("https://api.example", key) is None
    monkeypatch.setenv("ALL_PROXY", "http://proxy:3128")
    assert proxy_for("https://api.example", key) == "http://proxy:3128"
    monkeypatch.setenv("HTTPS_PROXY", "tls-proxy:3128")  # no scheme: http, as curl and httpx read it
    assert proxy_for("https://api.example", key) == "http://tls-proxy:3128"
    assert proxy_for("http://api.example", key) == "http://proxy:3128"
    direct = {
        "api.example": ["https://api.example", "https://eu.api.example"],
        ".example": ["https://api.example"],
        "localhost,*": ["https://anything"],
        "api.example:8443": ["https://api.example:8443"],
        "10.0.0.0/8": ["http://10.1.2.3:9000"],
        "[::1]:8080": ["http://[::1]:8080"],
        "::1": ["http://[::1]:8080"],
    }
    proxied = {
        "api.example": ["https://notapi.example", "https://example"],
        "api.example:8443": ["https://api.example"],
        "10.0.0.0/8": ["http://11.0.0.1"],
        "[::1]:8080": ["http://[::1]:9090"],
    }
    for no_proxy, urls in direct.items():
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert [proxy_for(u, key) for u in urls] == [None] * len(urls), no_proxy
    for no_proxy, urls in proxied.items():
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert None not in [proxy_for(u, key) for u in urls], no_proxy
    monkeypatch.delenv("NO_PROXY")
    # Not http(s), or not a URL: refused at start, naming the setting and no part of the value.
    for value in ("socks5://alice:s3cret@proxy:1080", "http://[fe80::1:3128", "http://alice:s3cret@:3128"):
        monkeypatch.setenv("HTTPS_PROXY", value)
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.destination\.url: .*not an http") as refused:
            proxy_for("https://api.example", key)
        assert "alice" not in str(refused.value) and "s3cret" not in str(refused.value)


def test_a_slow_answer_is_read_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-request deadline cut off an answer arriving steadily, each part within the read timeout
    (a large error file): it now runs from the answer's start and allows for its length."""
    import connector.delivery.http as http

    monkeypatch.setattr(http, "ANSWER_ALLOWANCE", 0)
    monkeypatch.setattr(http, "MIN_RATE", 1 << 40)  # 4 timeouts (1.2 s) to send, 4 to read

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.25)  # within the read timeout (0.3 s)
        response = web.StreamResponse(headers={"Content-Length": "20"})
        await response.prepare(request)
        for _ in range(10):  # 1 s of answer, 1.25 s in all: past 1.2 s from the start
            await asyncio.sleep(0.1)
            await response.write(b"ab")
        return response

    assert _send_once({"/e": slow}, "/e", timeout=0.3).body == b"ab" * 10
