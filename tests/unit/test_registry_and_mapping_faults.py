"""Found by the adversarial review of the registry and mapping work, each reproduced first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from connector.codec import MappingError, compile_mapping, load_schema
from connector.codec.avro import ConfluentAvroDecoder
from connector.codec.base import DecodeError, SchemaPending
from connector.codec.registry import SchemaNotFound, SchemaRegistry
from connector.config import DeliverySettings, RetrySettings
from connector.delivery.http import HttpxClient
from connector.delivery.service import DeliveryService
from connector.destinations.http_bulk import HttpBulk
from connector.errors import ConfigError, RegistryError
from connector.metrics import Metrics
from tests.unit.helpers import record


def _registry(handler: Any) -> SchemaRegistry:
    registry = SchemaRegistry({"url": "http://registry"})
    registry._client = httpx.AsyncClient(base_url="http://registry", transport=httpx.MockTransport(handler))
    return registry


def test_only_the_registrys_own_not_found_codes_mean_not_found() -> None:
    """Any 404 dead-lettered the records: a wrong path or an ingress 404 must make them wait."""
    html = _registry(lambda r: httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(RegistryError):
        asyncio.run(html.schema(5))
    coded = _registry(
        lambda r: httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
    )
    with pytest.raises(SchemaNotFound):
        asyncio.run(coded.schema(5))


def test_reference_subjects_are_quoted() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        if request.url.path.startswith("/schemas/ids/"):
            return httpx.Response(
                200,
                json={
                    "schema": '"string"',
                    "references": [{"name": "x", "subject": "a/b?x=1", "version": 1}],
                },
            )
        return httpx.Response(200, json={"schema": '"string"'})

    asyncio.run(_registry(handler).schema(1))
    assert paths[1] == "/subjects/a%2Fb%3Fx%3D1/versions/1"


def test_an_unknown_id_cache_stays_bounded() -> None:
    decoder = ConfluentAvroDecoder(load_schema("rally_uxr_activity.avsc"))
    decoder.learn(1, load_schema("rally_uxr_activity.avsc"), [])
    for schema_id in range(2, 30_000):
        decoder.learn(schema_id, None, [])
    assert len(decoder._writers) <= 10_001
    with pytest.raises(SchemaPending):  # forgotten unknown ids are asked again, not decoded wrongly
        decoder.decode(b"\0" + (3).to_bytes(4, "big") + b"\x02")
    with pytest.raises(DecodeError):
        decoder.decode(b"\0" + (29_999).to_bytes(4, "big") + b"\x02")


def test_a_record_that_cannot_be_encoded_is_dead_lettered_alone() -> None:
    """Bytes (Avro without a reader schema) or a 65-bit integer killed the sink in build()."""
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, json={})

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as client:
            service = DeliveryService(
                HttpBulk({}),
                HttpxClient(client),
                DeliverySettings(retry=RetrySettings(max_attempts=2, initial_backoff=0.001)),
                Metrics().sink("s"),
            )
            batch = [record({"id": i}, i) for i in range(4)]
            batch[1].payload = {"id": b"\xff"}  # as Avro bytes decode without a reader schema
            batch[2].payload = {"n": 2**70}
            return await service.deliver(batch)

    result = asyncio.run(go())
    assert [r.offset for r in result.delivered] == [0, 3]  # the good records, in one request
    assert [(r.offset, f.reason) for r, f in result.failed] == [(1, "invalid_record"), (2, "invalid_record")]
    assert [orjson.loads(body) for body in sent] == [[{"id": 0}, {"id": 3}]]


@pytest.mark.parametrize(
    ("value", "convert"),
    [("1e300", "to_int"), ("NaN", "to_number"), ("1e999", "to_number"), (2**70, "to_int")],
)
def test_mapping_refuses_numbers_a_json_body_cannot_carry(value: Any, convert: str) -> None:
    with pytest.raises(MappingError):
        compile_mapping({"n": {"from": "n", "convert": convert}}, None)({"n": value})


def test_a_deeply_nested_value_is_a_mapping_error_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(1000):
        deep = [deep]
    for convert in ("to_string", "to_number"):
        with pytest.raises(MappingError):
            compile_mapping({"n": {"from": "n", "convert": convert}}, None)({"n": deep})
    with pytest.raises(MappingError):
        compile_mapping({"n": {"from": "n", "map": {"a": "b"}}}, None)({"n": deep})


def test_yaml_boolean_keys_in_a_value_map_are_refused() -> None:
    with pytest.raises(ConfigError, match="quote keys"):
        compile_mapping({"n": {"from": "n", "map": {True: "GRANTED"}}}, None)


def test_unreadable_tls_files_are_a_clear_fatal_error(tmp_path: Path) -> None:
    from connector.codec.registry import RegistryAuthError, SchemaRegistry

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(RegistryAuthError, match=r"cannot load ssl\.ca\.location"):
        SchemaRegistry({"url": "https://registry:8081", "ssl.ca.location": str(bad)})


def test_an_encrypted_client_key_takes_its_password_and_never_prompts(tmp_path: Path) -> None:
    """Without ssl.key.password OpenSSL prompted for the pass phrase on the terminal (a start that hangs);
    now it is a clear error, and with the password the key loads."""
    import subprocess

    from connector.codec.registry import RegistryAuthError, SchemaRegistry

    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=client",
         "-keyout", str(key), "-out", str(cert), "-passout", "pass:key-pass-123"],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    props = {
        "url": "https://registry:8081",
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    with pytest.raises(RegistryAuthError, match=r"needs ssl\.key\.password"):
        SchemaRegistry(props)
    registry = SchemaRegistry({**props, "ssl.key.password": "key-pass-123"})
    assert "key-pass-123" in registry.secrets  # masked wherever it might appear
