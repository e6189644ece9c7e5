"""Running a connector, in a thread or as a child process, until a topic is drained (tests, demo, bench)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from connector.app import App
from connector.config import Settings
from connector_sandbox.kafka_broker import committed_offsets, end_offsets


def drained(bootstrap: str, group: str, topics: list[str]) -> bool:
    """True when the group's committed offsets have reached every partition's end."""
    for topic in topics:
        ends = end_offsets(bootstrap, topic)
        committed = committed_offsets(bootstrap, group, topic)
        if any(committed.get(p, -1) < end for p, end in ends.items() if end > 0):
            return False
    return True


class ConnectorThread:
    """An App on its own event loop in a thread; `stop()` shuts it down as SIGTERM would."""

    def __init__(self, settings: Settings) -> None:
        self.app = App(settings)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="connector", daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        async def main() -> None:
            task = asyncio.create_task(self.app.run())
            await self.app.started.wait()
            self._started.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> ConnectorThread:
        self._thread.start()
        self._started.wait(30)
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        self.app.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the connector did not stop in time")

    def wait_drained(self, bootstrap: str, topics: list[str], timeout: float = 120.0) -> float:
        """Wait until each sink's group has committed to the end of those of `topics` it consumes."""
        started = time.monotonic()
        work = [(s.group_id, [t for t in s.topics if t in topics]) for s in self.app.settings.sinks]
        while time.monotonic() - started < timeout:
            if self.error is not None:
                raise RuntimeError(f"the connector failed: {self.error!r}") from self.error
            if all(drained(bootstrap, g, ts) for g, ts in work if ts):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"not drained after {timeout:.0f}s")

    def __enter__(self) -> ConnectorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.running:
            self.stop()


class ConnectorProcess:
    """`activity-connector run` as a child process, for crash, memory and rebalance tests."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = workdir / f"connector-{uuid.uuid4().hex[:6]}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.config_path.with_suffix(".log")
        self._env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectorProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector", "run", "-c", str(self.config_path)],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=self._env,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_bytes(self) -> int:
        """The process's resident set now."""
        return self._memory()["VmRSS"]

    def peak_rss_bytes(self) -> int:
        """The most the process's resident set has been (the kernel's high-water mark)."""
        return self._memory()["VmHWM"]

    def _memory(self) -> dict[str, int]:
        assert self.process is not None
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as Kubernetes would; returns the exit status. Past `timeout` it is killed, and
        subprocess.TimeoutExpired raised."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)
