"""The sandbox: every API simulator on one port, plus control endpoints for tests, the demo and the bench.

Control endpoints (no auth): `GET /_sandbox/health`, `POST /_sandbox/reset`, and per API
(`rally_uxr.activities`, ...): `POST /_sandbox/{api}/config`, `GET /_sandbox/{api}/accepted`,
`GET /_sandbox/{api}/stats`. In tests and the benchmark it runs as its own process (`SandboxProcess`) so
it never competes with the connector for the interpreter.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
from aiohttp import web

from connector.sandbox.rally_uxr import RallyUxrSimulator
from connector.sandbox.simulator import Simulator


def simulators() -> list[Simulator]:
    return [RallyUxrSimulator()]


def build_app() -> web.Application:
    app = web.Application(client_max_size=200 * 1024 * 1024)
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
        return json({"reset": True})

    async def configure(request: web.Request) -> web.Response:
        sim = find(request)
        try:
            sim.configure(orjson.loads(await request.read()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return json({"error": str(exc)}, 400)
        return json(sim.settings)

    async def accepted(request: web.Request) -> web.Response:
        return json(find(request).accepted)

    async def stats(request: web.Request) -> web.Response:
        return json(find(request).stats())

    app.router.add_get("/_sandbox/health", health)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/{api}/config", configure)
    app.router.add_get("/_sandbox/{api}/accepted", accepted)
    app.router.add_get("/_sandbox/{api}/stats", stats)
    return app


def run_sandbox(host: str, port: int) -> None:
    """Serve until interrupted (the `activity-connector sandbox` command)."""
    print(f"sandbox listening on http://{host}:{port}", flush=True)
    web.run_app(build_app(), host=host, port=port, access_log=None, print=None)


def _free_port() -> int:
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
        self.port = _free_port()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector.sandbox.server",
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
