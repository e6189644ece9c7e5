"""Avro values: raw binary with a local writer schema, or Confluent framing with a Schema Registry."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro

from connector.codec.base import DecodeError
from connector.codec.registry import SchemaRegistry


class AvroDecoder:
    """Schemaless Avro binary written with one known schema (`format: avro`)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = fastavro.parse_schema(schema)

    @classmethod
    def from_file(cls, path: Path) -> AvroDecoder:
        return cls(json.loads(path.read_text()))

    def decode(self, value: bytes) -> dict[str, Any]:
        buf = io.BytesIO(value)
        try:
            data = fastavro.schemaless_reader(buf, self._schema, None)
        except Exception as exc:  # fastavro raises many types on corrupt input; all mean "does not decode"
            raise DecodeError(f"invalid Avro: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(value):
            raise DecodeError(f"invalid Avro: {len(value) - buf.tell()} trailing bytes after the record")
        if not isinstance(data, dict):
            raise DecodeError("Avro value is not a record")
        return data


class ConfluentAvroDecoder:
    """Confluent wire format (magic 0, 4-byte schema id, Avro body); writer schemas come from the registry."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self._registry = registry
        self._decoders: dict[int, AvroDecoder] = {}

    def decode(self, value: bytes) -> dict[str, Any]:
        if len(value) < 5 or value[0] != 0:
            raise DecodeError("not in Confluent Avro wire format (magic byte 0 and schema id)")
        (schema_id,) = struct.unpack_from(">I", value, 1)
        decoder = self._decoders.get(schema_id)
        if decoder is None:
            decoder = self._decoders[schema_id] = AvroDecoder(self._registry.schema(schema_id))
        return decoder.decode(value[5:])
