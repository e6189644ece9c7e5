"""Avro through a real Schema Registry (Apicurio, its Confluent-compatible API), produced with
confluent-kafka's AvroSerializer as a user's services would: writer schema versions resolved against the
reader schema, bad framing dead-lettered once each, a registry that stops for 30 s waited out while the
process's other sinks deliver, and a registry that requires basic auth."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connector.codec import load_schema
from connector.config import parse_settings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic
from connector_sandbox.schema_registry import SchemaRegistry
from tests.integration.support import API, destination, figure, headers_of, read_topic, settings_of, sink

pytestmark = pytest.mark.integration

READER = load_schema("rally_uxr_activity.avsc")
# v1: a writer without participantId (the reader's default fills it); v2: a field the reader does not know.
V1 = {**READER, "fields": [f for f in READER["fields"] if f["name"] != "participantId"]}
V2 = {**READER, "fields": [*READER["fields"], {"name": "channel", "type": "string", "default": "web"}]}


def _serializer(registry_url: str, schema: dict[str, Any], auth: str | None = None) -> AvroSerializer:
    conf: dict[str, Any] = {"url": registry_url, "timeout": 10}
    if auth is not None:
        conf["basic.auth.user.info"] = auth
    client = SchemaRegistryClient(conf)
    serializer: AvroSerializer = AvroSerializer(
        client, json.dumps(schema), conf={"subject.name.strategy.type": "TOPIC"}
    )
    return serializer


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in values:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0


def _topic(bootstrap: str, name: str) -> str:
    topic = f"it.sr.{name}.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    return topic


def _registry_sink(name: str, topic: str, sandbox_url: str, registry: dict[str, str]) -> dict[str, Any]:
    return sink(
        name,
        topic,
        destination(API, sandbox_url),
        format="avro-confluent",
        schema_registry=registry,
        batch={"max_records": 200, "max_wait": "100ms"},
    )


def test_two_writer_versions_interleaved_resolve_against_the_reader_and_bad_framing_is_dead_lettered_once(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, schema_registry: SchemaRegistry
) -> None:
    topic = _topic(kafka_bootstrap, "versions")
    ctx = SerializationContext(topic, MessageField.VALUE)
    v1, v2 = _serializer(schema_registry.url, V1), _serializer(schema_registry.url, V2)
    values: list[tuple[bytes, bytes]] = []
    for i in range(3000):
        activity = {**uxr_activity(i), "participantId": f"seq-{i}"}
        if i % 2:
            value = v2({**activity, "channel": "app"}, ctx)
        else:
            value = v1({k: v for k, v in activity.items() if k != "participantId"}, ctx)
        assert value is not None
        values.append((activity["personId"].encode(), value))
    good = values[1][1]
    bad = [
        (b"unknown-id", b"\0" + (987654).to_bytes(4, "big") + good[5:]),  # an id the registry does not know
        (b"truncated", good[: len(good) - 3]),
        (b"wrong-magic", b"\x01" + good[1:]),
    ]
    _produce(kafka_bootstrap, topic, values + bad)
    settings = settings_of(
        kafka_bootstrap, _registry_sink("avro", topic, sandbox_url, {"url": schema_registry.url})
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    accepted = sandbox.accepted(API)
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 3, timeout=20)
    by_person_time = {(a["personId"], a["activityAt"]): a for a in accepted}
    figure(
        f"\nschema registry: 3000 records of two writer versions interleaved -> {len(accepted)} delivered; "
        f"{len(letters)} dead letters for 3 badly framed records"
    )
    assert len(accepted) == 3000
    for i in range(3000):
        a = by_person_time[(uxr_activity(i)["personId"], uxr_activity(i)["activityAt"])]
        # v2 carried participantId; v1 did not, so the reader's default (null) leaves it out
        assert a.get("participantId") == (f"seq-{i}" if i % 2 else None)
        assert "channel" not in a  # a writer-only field is not in the reader's record
    assert sorted(m.key() or b"" for m in letters) == [b"truncated", b"unknown-id", b"wrong-magic"]
    assert {headers_of(m)["__activity.error.reason"] for m in letters} == {b"decode_error"}


def test_a_registry_stopped_for_30_s_is_waited_out_while_other_sinks_deliver(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, schema_registry: SchemaRegistry
) -> None:
    avro_topic, json_topic = _topic(kafka_bootstrap, "down"), _topic(kafka_bootstrap, "json")
    ctx = SerializationContext(avro_topic, MessageField.VALUE)
    v2 = _serializer(schema_registry.url, V2)
    values = []
    for i in range(2000):
        value = v2({**uxr_activity(i), "participantId": f"seq-{i}", "channel": "app"}, ctx)
        assert value is not None
        values.append((str(i).encode(), value))
    _produce(kafka_bootstrap, avro_topic, values)
    bulk = [{"id": i} for i in range(2000)]
    produce(kafka_bootstrap, json_topic, json_events(bulk))
    settings = settings_of(
        kafka_bootstrap,
        _registry_sink("avro", avro_topic, sandbox_url, {"url": schema_registry.url}),
        sink("bulk", json_topic, destination("http.bulk", sandbox_url)),
    )
    schema_registry.pause()
    paused_at = time.monotonic()
    try:
        with ConnectorThread(settings) as connector:
            avro_metrics = connector.app.sinks[0].m
            # The other sink of the process keeps delivering: the loop never waits for the registry.
            deadline = time.monotonic() + 25
            while len(sandbox.accepted("http.bulk")) < 2000:
                assert time.monotonic() < deadline, "the JSON sink stalled behind the registry"
                time.sleep(0.2)
            bulk_done = time.monotonic() - paused_at
            while avro_metrics.value("schema_registry_available") != 0:
                assert time.monotonic() < deadline, "the registry's absence was not reported"
                time.sleep(0.2)
            assert sandbox.stats(API)["accepted"] == 0
            time.sleep(max(0.0, 30 - (time.monotonic() - paused_at)))
            schema_registry.resume()
            back = time.monotonic()
            while sandbox.stats(API)["accepted"] < 2000:
                assert time.monotonic() - back < 60, "delivery did not resume after the registry's return"
                time.sleep(0.1)
            resumed = time.monotonic() - back
            connector.wait_drained(kafka_bootstrap, [avro_topic, json_topic], timeout=60)
            available = avro_metrics.value("schema_registry_available")
    finally:
        schema_registry.resume()
    letters = read_topic(kafka_bootstrap, f"{avro_topic}.dlq", 0, timeout=2)
    figure(
        f"\nschema registry stopped 30 s: the JSON sink delivered 2000 in {bulk_done:.1f} s meanwhile; "
        f"the Avro sink delivered all 2000 within {resumed:.1f} s of the registry's return; "
        f"{len(letters)} dead-lettered"
    )
    assert letters == [] and available == 1
    assert resumed < 15  # the next try is at most REGISTRY_MAX_BACKOFF away; here far less


@pytest.fixture
def authenticated_registry() -> Iterator[SchemaRegistry]:
    with SchemaRegistry(basic_auth=("sr-user", "Sr-Canary-Pw9")) as registry:
        yield registry


def test_a_registry_that_requires_basic_auth(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, authenticated_registry: SchemaRegistry
) -> None:
    topic = _topic(kafka_bootstrap, "auth")
    ctx = SerializationContext(topic, MessageField.VALUE)
    serialize = _serializer(authenticated_registry.url, V2, auth="sr-user:Sr-Canary-Pw9")
    values = []
    for i in range(500):
        value = serialize({**uxr_activity(i), "participantId": f"seq-{i}", "channel": "app"}, ctx)
        assert value is not None
        values.append((str(i).encode(), value))
    _produce(kafka_bootstrap, topic, values)
    registry = {"url": authenticated_registry.url, "basic.auth.user.info": "sr-user:${SR_PASSWORD}"}
    doc_sink = _registry_sink("auth", topic, sandbox_url, registry)
    settings = parse_settings(
        {
            "kafka": {"bootstrap.servers": kafka_bootstrap},
            "metrics": {"listen": "127.0.0.1:0"},
            "shutdown_timeout": "10s",
            "sinks": [doc_sink],
        },
        env={"SR_PASSWORD": "Sr-Canary-Pw9"},
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    assert sandbox.stats(API)["accepted"] == 500


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    f = {
        name: str(folder / name)
        for name in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem", "c.key", "c.csr", "c.pem", "ext")
    }
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f["ca.key"],
        "-out",
        f["ca.pem"],
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    Path(f["ext"]).write_text("subjectAltName=IP:127.0.0.1\n")
    for who, cn in (("s", "127.0.0.1"), ("c", "connector")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f[f"{who}.key"],
            "-out",
            f[f"{who}.csr"],
            "-subj",
            f"/CN={cn}",
        )
        extra = ["-extfile", f["ext"]] if who == "s" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            f[f"{who}.csr"],
            "-CA",
            f["ca.pem"],
            "-CAkey",
            f["ca.key"],
            "-CAcreateserial",
            "-out",
            f[f"{who}.pem"],
            "-days",
            "2",
            *extra,
        )
    return f


class TlsProxy:
    """A TLS endpoint that requires a client certificate of the CA, in front of the (plain HTTP) registry."""

    def __init__(self, target: str, certs: dict[str, str]) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._path = parts.path
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certs["s.pem"], certs["s.key"])
        self._context.load_verify_locations(certs["ca.pem"])
        self._context.verify_mode = ssl.CERT_REQUIRED
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._main, daemon=True).start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self._path}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def start() -> None:
            server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self._context)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await server.serve_forever()

        self._loop.run_until_complete(start())


def test_a_registry_behind_mutual_tls(
    kafka_bootstrap: str,
    sandbox_url: str,
    sandbox: SandboxClient,
    schema_registry: SchemaRegistry,
    tmp_path: Path,
) -> None:
    certs = _certificates(tmp_path)
    proxy = TlsProxy(schema_registry.url, certs)
    topic = _topic(kafka_bootstrap, "tls")
    ctx = SerializationContext(topic, MessageField.VALUE)
    serialize = _serializer(schema_registry.url, V2)
    values = []
    for i in range(300):
        value = serialize({**uxr_activity(i), "participantId": f"seq-{i}", "channel": "app"}, ctx)
        assert value is not None
        values.append((str(i).encode(), value))
    _produce(kafka_bootstrap, topic, values)

    # Without a client certificate the registry cannot be read: the records wait, none is dead-lettered.
    no_cert = _registry_sink(
        "tls-nocert", topic, sandbox_url, {"url": proxy.url, "ssl.ca.location": certs["ca.pem"]}
    )
    with ConnectorThread(settings_of(kafka_bootstrap, no_cert)) as connector:
        m = connector.app.sinks[0].m
        deadline = time.monotonic() + 30
        while m.value("schema_registry_available") != 0:
            assert time.monotonic() < deadline, "the refused TLS handshake was not noticed"
            time.sleep(0.1)
        assert sum(m.value("records_dead_lettered_total", reason=r) for r in ("decode_error",)) == 0
        assert m.value("records_delivered_total") == 0

    registry = {
        "url": proxy.url,
        "ssl.ca.location": certs["ca.pem"],
        "ssl.certificate.location": certs["c.pem"],
        "ssl.key.location": certs["c.key"],
    }
    doc_sink = _registry_sink("tls", topic, sandbox_url, registry)
    with ConnectorThread(settings_of(kafka_bootstrap, doc_sink)) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
        m = connector.app.sinks[0].m
        assert m.value("records_delivered_total") == 300
        assert m.value("records_dead_lettered_total", reason="decode_error") == 0
    assert sandbox.stats(API)["accepted"] == 300
    figure(
        "schema registry behind mutual TLS: without a client certificate 0 delivered, 0 dead-lettered "
        "(records wait); with ssl.ca/certificate/key.location 300 of 300 delivered"
    )
