"""Running a connector in a background thread until a topic is drained: for tests, the demo and the bench."""

from __future__ import annotations

import asyncio
import threading
import time

from connector.app import App
from connector.config import Settings
from connector.sandbox.kafka_broker import committed_offsets, end_offsets


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
        """Wait until every sink's group has committed to the end of `topics`; returns the seconds it took."""
        started = time.monotonic()
        groups = [s.group_id for s in self.app.settings.sinks]
        while time.monotonic() - started < timeout:
            if self.error is not None:
                raise RuntimeError(f"the connector failed: {self.error!r}") from self.error
            if all(drained(bootstrap, g, topics) for g in groups):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"not drained after {timeout:.0f}s")

    def __enter__(self) -> ConnectorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.running:
            self.stop()
