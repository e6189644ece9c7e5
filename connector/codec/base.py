"""The Decoder protocol and the factory that picks one from a sink's `format`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from connector.errors import ConnectorError


class DecodeError(ConnectorError):
    """A record's bytes could not be decoded; it is dead-lettered with reason `decode_error`."""


class Decoder(Protocol):
    def decode(self, value: bytes) -> dict[str, Any]:
        """The record's fields, or DecodeError."""
        ...


def make_decoder(fmt: str, schema: Path | None, registry_url: str | None = None) -> Decoder:
    if fmt == "json":
        from connector.codec.json import JsonDecoder

        return JsonDecoder()
    if fmt == "avro":
        from connector.codec.avro import AvroDecoder

        assert schema is not None
        return AvroDecoder.from_file(schema)
    if fmt == "avro-confluent":
        from connector.codec.avro import ConfluentAvroDecoder
        from connector.codec.registry import SchemaRegistry

        assert registry_url is not None
        return ConfluentAvroDecoder(SchemaRegistry(registry_url))
    raise ValueError(f"unknown format {fmt!r}")
