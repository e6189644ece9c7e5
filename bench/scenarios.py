"""`make bench` scenarios that run the connector as its own process (as it is deployed): peak memory with a
backlog waiting, scale-out as a consumer group, and latency under a steady load."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from connector.sandbox.control import SandboxClient
from connector.sandbox.events import Event, produce, uxr_activity
from connector.sandbox.harness import drained
from connector.sandbox.kafka_broker import create_topic

BULK = "http.bulk"


def _config(folder: Path, bootstrap: str, sink: dict[str, Any]) -> Path:
    path = folder / f"{sink['name']}.yaml"
    doc = {"kafka": {"bootstrap.servers": bootstrap}, "metrics": {"listen": "127.0.0.1:0"}, "sinks": [sink]}
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "connector", "run", "-c", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _bulk_sink(name: str, topic: str, sandbox_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "topics": [topic],
        "group_id": f"bench.{name}.{uuid.uuid4().hex[:6]}",
        "destination": {
            "type": BULK,
            "url": f"{sandbox_url}/bulk/v1",
            "auth": {"type": "bearer", "token": "sandbox-token"},
            "path": "/records",
            "body": "ndjson",
        },
        "dead_letter": {"topic": f"{topic}.dlq"},
        **extra,
    }


def peak_memory(bootstrap: str, sandbox_url: str, records: int) -> dict[str, Any]:
    """Peak RSS of one sink's process while `records` wait in Kafka and the API is down (503) for 30 s,
    with the default buffer settings."""
    control = SandboxClient(sandbox_url)
    control.reset()
    topic = f"bench.memory.{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, 8)
    produce(bootstrap, topic, (Event(str(i).encode(), orjson.dumps(uxr_activity(i))) for i in range(records)))
    control.configure(BULK, outage_until=time.time() + 30)
    with tempfile.TemporaryDirectory() as folder:
        config = _config(Path(folder), bootstrap, _bulk_sink("memory", topic, sandbox_url))
        process = _start(config, Path(folder) / "log")
        peak = start_rss = 0.0
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None:
                rss, hwm = _rss_mib(process.pid)
                start_rss = start_rss or rss
                peak = max(peak, hwm)
                time.sleep(0.2)
        finally:
            _stop(process)
    return {"records_waiting": records, "peak_rss_mb": round(peak, 1), "first_rss_mb": round(start_rss, 1)}


def _assignments(bootstrap: str, group: str) -> list[int]:
    """Partitions per member of a consumer group, now."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sorted(len(m.assignment.topic_partitions) for m in description.members)


def scale_out(bootstrap: str, sandbox_url: str, records: int) -> dict[str, Any]:
    """Records/s of 1 process, then of 2 processes of one group, on one topic of 8 partitions."""
    control = SandboxClient(sandbox_url)
    out: dict[str, Any] = {}
    for processes in (1, 2):
        control.reset()
        topic = f"bench.scale{processes}.{uuid.uuid4().hex[:6]}"
        create_topic(bootstrap, topic, 8)
        produce(
            bootstrap,
            topic,
            (Event(str(i).encode(), orjson.dumps({"n": i, "pad": "x" * 150})) for i in range(records)),
        )
        with tempfile.TemporaryDirectory() as folder:
            sink = _bulk_sink("scale", topic, sandbox_url)
            config = _config(Path(folder), bootstrap, sink)
            running = [_start(config, Path(folder) / f"log{i}") for i in range(processes)]
            try:
                deadline = time.monotonic() + 600
                members: list[int] = []
                first = None
                while not drained(bootstrap, sink["group_id"], [topic]):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{processes} processes did not drain {topic}")
                    timeline = control.timeline(BULK)
                    if first is None and timeline:
                        first = timeline[0][0] - 0.05
                    if len(members) < processes:
                        members = _assignments(bootstrap, sink["group_id"])
                    time.sleep(0.1)
                timeline = control.timeline(BULK)
                accepted = {a["n"] for a in control.accepted(BULK)}
            finally:
                for process in running:
                    _stop(process)
        seconds = timeline[-1][0] - (first or timeline[0][0])
        out[f"processes_{processes}"] = {
            "records_per_s": round(records / seconds),
            "partitions_per_process": members,
            "lost": records - len(accepted),
        }
    out["ratio"] = round(out["processes_2"]["records_per_s"] / out["processes_1"]["records_per_s"], 2)
    return out


def latency(bootstrap: str, sandbox_url: str, rate: int = 1000, seconds: float = 30.0) -> dict[str, Any]:
    """Produce `rate` records/s for `seconds`; each record's time from produce to the sandbox's receipt."""
    control = SandboxClient(sandbox_url)
    control.reset()
    topic = f"bench.latency.{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, 4)
    max_wait_ms = 250
    sink = _bulk_sink("latency", topic, sandbox_url, batch={"max_wait": f"{max_wait_ms}ms"})
    total = int(rate * seconds)
    with tempfile.TemporaryDirectory() as folder:
        process = _start(_config(Path(folder), bootstrap, sink), Path(folder) / "log")
        try:
            time.sleep(3)  # joined its group
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
            started = time.time()
            for i in range(total):
                due = started + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                producer.produce(
                    topic, key=str(i).encode(), value=orjson.dumps({"n": i, "sent_at": time.time()})
                )
                producer.poll(0)
            producer.flush(30)
            deadline = time.monotonic() + 60
            while control.stats(BULK)["accepted"] < total and time.monotonic() < deadline:
                time.sleep(0.2)
            accepted = control.accepted(BULK)
            timeline = control.timeline(BULK)
        finally:
            _stop(process)
    # The sandbox records each request's arrival with its count, in the order of the accepted records.
    received: list[float] = []
    for at, count in timeline:
        received += [at] * count
    delays = sorted((r - a["sent_at"]) * 1000 for a, r in zip(accepted, received, strict=False))
    q = statistics.quantiles(delays, n=100)
    return {
        "records": len(delays),
        "rate": rate,
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "max_wait_ms": max_wait_ms,
    }
