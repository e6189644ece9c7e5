"""The Decoder protocol and the factory that picks one from a sink's `format`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from connector.errors import ConnectorError


class DecodeError(ConnectorError):
    """A record's bytes could not be decoded; it is dead-lettered with reason `decode_error`."""


class SchemaPending(Exception):
    """The record's writer schema is not known yet: it is being fetched; the record waits for it."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is being fetched")
        self.schema_id = schema_id


class Decoder(Protocol):
    def decode(self, value: bytes) -> dict[str, Any]:
        """The record's fields, or DecodeError."""
        ...


def make_decoder(fmt: str, schema: Path | None, reader: dict[str, Any] | None = None) -> Decoder:
    """The decoder of a sink's `format`. For avro-confluent, `reader` is the schema records are resolved
    to (the sink's `schema:` if given, else its destination's)."""
    if fmt == "json":
        from connector.codec.json import JsonDecoder

        return JsonDecoder()
    if fmt == "avro":
        from connector.codec.avro import AvroDecoder

        assert schema is not None
        return AvroDecoder.from_file(schema)
    if fmt == "avro-confluent":
        import json

        from connector.codec.avro import ConfluentAvroDecoder

        return ConfluentAvroDecoder(json.loads(schema.read_text()) if schema is not None else reader)
    raise ValueError(f"unknown format {fmt!r}")
