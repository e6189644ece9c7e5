"""The Decoder protocol and the factory that picks one from a sink's `format`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from connector.errors import DecodeError as DecodeError
from connector.errors import SchemaPending as SchemaPending


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
