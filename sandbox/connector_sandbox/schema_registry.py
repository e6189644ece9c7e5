"""A real Schema Registry for tests, the demo and the benchmark, without Docker: Apicurio Registry 3.0.9
(its Confluent-compatible API under /apis/ccompat/v7), fetched once from Maven Central into the cache
outside the repository (like the Kafka broker's jars) and run as a `java -jar` child process, in memory,
on a free loopback port. With `basic_auth=(user, password)` it refuses requests without them (401).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from connector_sandbox.kafka_broker import (
    DEPENDENCY_PLUGIN,
    BrokerError,
    cache_dir,
    free_port,
    log_tail,
    stop_process,
)

APICURIO_VERSION = "3.0.9"  # the last 3.x that runs on Java 17 (3.3.x needs Java 21)
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"


def registry_home() -> Path:
    return cache_dir().parent / f"apicurio-{APICURIO_VERSION}"


def ensure_registry() -> Path:
    """The registry's runner jar, fetching and unpacking it from Maven Central on first use."""
    home = registry_home()
    runner = home / f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
    if runner.exists():
        return runner
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise BrokerError(f"`{tool}` is not on PATH; the local Schema Registry needs Java 17 and Maven")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as staging:
        fetched = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                f"{DEPENDENCY_PLUGIN}:copy",
                f"-Dartifact={ARTIFACT}",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
        )
        if fetched.returncode != 0:
            raise BrokerError(f"fetching {ARTIFACT} failed:\n{(fetched.stdout + fetched.stderr)[-2000:]}")
        unpacked = Path(staging) / "unpacked"
        with tarfile.open(next(Path(staging).glob("*.tar.gz"))) as archive:
            archive.extractall(unpacked, filter="data")
        if home.exists():  # another process won the race
            return runner
        os.replace(unpacked, home)  # atomic: a half-unpacked registry is never seen as ready
    return runner


class SchemaRegistry:
    """Apicurio Registry in memory; `url` is its Confluent-compatible API."""

    def __init__(self, basic_auth: tuple[str, str] | None = None) -> None:
        self.basic_auth = basic_auth
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    def start(self, timeout: float = 90.0) -> SchemaRegistry:
        runner = ensure_registry()
        self._dir = self._dir or Path(tempfile.mkdtemp(prefix="activity-connector-registry-"))
        self.port = self.port or free_port()
        auth: list[str] = []
        if self.basic_auth is not None:
            user, password = self.basic_auth
            auth = [
                "-Dquarkus.http.auth.basic=true",
                "-Dquarkus.security.users.embedded.enabled=true",
                "-Dquarkus.security.users.embedded.plain-text=true",
                f"-Dquarkus.security.users.embedded.users.{user}={password}",
            ]
        self._process = subprocess.Popen(
            [
                "java",
                "-Xms32m",
                "-Xmx192m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError",
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.http.port={self.port}",
                "-Dquarkus.http.access-log.enabled=false",
                *auth,
                "-jar",
                str(runner),
            ],
            cwd=self._dir,
            stdout=(self._dir / "registry.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"the Schema Registry exited while starting:\n{self._log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the Schema Registry did not answer within {timeout:.0f}s:\n{self._log_tail()}")

    def pause(self) -> None:
        """Freeze it (SIGSTOP): requests hang until their timeout, as against a registry that is down."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let it go on (SIGCONT), with every schema it had."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _log_tail(self) -> str:
        return log_tail(self._dir / "registry.log") if self._dir is not None else ""

    def __enter__(self) -> SchemaRegistry:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
