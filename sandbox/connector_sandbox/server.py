"""The sandbox: every API simulator on one port, plus control endpoints for tests, the demo and the bench.

Control endpoints (no auth): `GET /_sandbox/health`, `POST /_sandbox/reset`,
`POST /_sandbox/refuse_connections?seconds=N` (stop listening for N seconds: clients get ECONNREFUSED),
`POST /_sandbox/oauth/token` (client credentials; configured with `POST /_sandbox/oauth/config`
{client_id, client_secret, expires_in}), `POST /_sandbox/oauth/revoke`, `GET /_sandbox/oauth/stats`, and
per API (`rally_uxr.activities`, ...): `POST /_sandbox/{api}/config`, `GET /_sandbox/{api}/accepted`,
`GET /_sandbox/{api}/stats`, `GET /_sandbox/{api}/timeline` ([epoch seconds, records] per accepted
request), `GET /_sandbox/{api}/calls` ([epoch seconds, "METHOD route"] per request that used the
rate-limit budget). In tests and the benchmark it runs as its own process (`SandboxProcess`) so
it never competes with the connector for the interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from aiohttp import web

from connector_sandbox.http_bulk import HttpBulkSimulator
from connector_sandbox.mediarithmics import MediarithmicsSimulator
from connector_sandbox.peopleai import PeopleAiSimulator
from connector_sandbox.rally_crm import RallyCrmSimulator
from connector_sandbox.rally_uxr import RallyUxrPeopleSimulator, RallyUxrSimulator
from connector_sandbox.simulator import ISSUER, REFUSING, Simulator

# Filled by run_sandbox once it listens: how to stop listening for a while.
REFUSE: web.AppKey[dict[str, Callable[[float], Awaitable[None]]]] = web.AppKey("refuse")


def simulators() -> list[Simulator]:
    activities = RallyUxrSimulator()
    return [
        activities,
        RallyUxrPeopleSimulator(activities.window),  # one tenant budget for the whole Rally UXR API
        RallyCrmSimulator(),
        MediarithmicsSimulator(),
        HttpBulkSimulator(),
        PeopleAiSimulator(),
    ]


def build_app() -> web.Application:
    app = web.Application(client_max_size=200 * 1024 * 1024)
    app[REFUSE] = {}
    sims = {s.name: s for s in simulators()}
    for sim in sims.values():
        sim.add_routes(app)

    def find(request: web.Request) -> Simulator:
        sim = sims.get(request.match_info["api"])
        if sim is None:
            raise web.HTTPNotFound(text=f"no simulator {request.match_info['api']!r}; known: {sorted(sims)}")
        return sim

    def json(data: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return json({"status": "ok", "apis": sorted(sims)})

    async def reset(_: web.Request) -> web.Response:
        for sim in sims.values():
            sim.reset()
        ISSUER.reset()
        return json({"reset": True})

    async def configure(request: web.Request) -> web.Response:
        sim = find(request)
        try:
            sim.configure(orjson.loads(await request.read()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return json({"error": str(exc)}, 400)
        return json({**sim.settings, "rate_limit": sim.window.rule})

    async def accepted(request: web.Request) -> web.Response:
        return json(find(request).accepted)

    async def stats(request: web.Request) -> web.Response:
        return json(find(request).stats())

    async def timeline(request: web.Request) -> web.Response:
        return json(find(request).timeline)

    async def calls(request: web.Request) -> web.Response:
        return json(find(request).calls)

    async def oauth_token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json({"error": "unsupported_grant_type"}, 400)
        issued = ISSUER.issue(str(form.get("client_id", "")), str(form.get("client_secret", "")))
        return json(issued) if issued is not None else json({"error": "invalid_client"}, 401)

    async def oauth_config(request: web.Request) -> web.Response:
        changes = orjson.loads(await request.read())
        for key in ("client_id", "client_secret", "expires_in"):
            if key in changes:
                setattr(ISSUER, key, changes[key])
        return json({"client_id": ISSUER.client_id, "expires_in": ISSUER.expires_in})

    async def oauth_revoke(_: web.Request) -> web.Response:
        ISSUER.tokens.clear()
        return json({"revoked": True})

    async def oauth_stats(_: web.Request) -> web.Response:
        return json({"issued": ISSUER.issued, "valid": sum(ISSUER.valid(t) for t in list(ISSUER.tokens))})

    async def refuse_connections(request: web.Request) -> web.Response:
        seconds = float(request.query.get("seconds", "1"))
        refuse = app[REFUSE].get("refuse")
        if refuse is None:
            return json({"error": "only when served by run_sandbox"}, 400)
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(refuse(seconds)))
        return json({"refusing_for": seconds})

    app.router.add_post("/_sandbox/oauth/token", oauth_token)
    app.router.add_post("/_sandbox/oauth/config", oauth_config)
    app.router.add_post("/_sandbox/oauth/revoke", oauth_revoke)
    app.router.add_get("/_sandbox/oauth/stats", oauth_stats)
    app.router.add_get("/_sandbox/health", health)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/{api}/config", configure)
    app.router.add_get("/_sandbox/{api}/accepted", accepted)
    app.router.add_get("/_sandbox/{api}/stats", stats)
    app.router.add_get("/_sandbox/{api}/timeline", timeline)
    app.router.add_get("/_sandbox/{api}/calls", calls)
    app.router.add_post("/_sandbox/refuse_connections", refuse_connections)
    return app


def run_sandbox(host: str, port: int) -> None:
    """Serve until interrupted (the `activity-connector sandbox` command)."""

    async def serve() -> None:
        app = build_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()

        async def refuse(seconds: float) -> None:
            # Stop listening, so new connections are refused (ECONNREFUSED), then listen again.
            nonlocal site
            REFUSING["until"] = time.time() + seconds
            await site.stop()
            await asyncio.sleep(seconds)
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()

        app[REFUSE]["refuse"] = refuse
        print(f"sandbox listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SandboxProcess:
    """The sandbox in a child process on a free loopback port."""

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> SandboxProcess:
        self.port = free_port()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector_sandbox.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the sandbox exited with status {self._process.returncode}")
            try:
                if httpx.get(self.url + "/_sandbox/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the sandbox did not start in time")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve the sandbox API simulators")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    run_sandbox(args.host, args.port)
