"""Avro values: raw binary with a local writer schema, or Confluent framing with a Schema Registry."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from fastavro import schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from connector.codec.base import DecodeError, SchemaPending


class AvroDecoder:
    """Schemaless Avro binary written with one known schema (`format: avro`)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = fastavro.parse_schema(schema)

    @classmethod
    def from_file(cls, path: Path) -> AvroDecoder:
        return cls(json.loads(path.read_text()))

    def decode(self, value: bytes) -> dict[str, Any]:
        # read_record inlined: one call less per record on the hot path.
        buf = io.BytesIO(value)
        try:
            data = schemaless_reader(buf, self._schema, None)
        except Exception as exc:  # fastavro raises many types on corrupt input; all mean "does not decode"
            raise DecodeError(f"invalid Avro: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(value):
            raise DecodeError(f"invalid Avro: {len(value) - buf.tell()} trailing bytes after the record")
        if not isinstance(data, dict):
            raise DecodeError("Avro value is not a record")
        return data


def read_record(buf: io.BytesIO, length: int, writer: Any, reader: Any) -> dict[str, Any]:
    """One Avro record from `buf` (`length` bytes in all), all of it, or DecodeError."""
    try:
        data = schemaless_reader(buf, writer, reader)
    except Exception as exc:  # fastavro raises many types on corrupt input; all mean "does not decode"
        raise DecodeError(f"invalid Avro: {type(exc).__name__}: {exc}") from None
    if buf.tell() != length:
        raise DecodeError(f"invalid Avro: {length - buf.tell()} trailing bytes after the record")
    if not isinstance(data, dict):
        raise DecodeError("Avro value is not a record")
    return data


class ConfluentAvroDecoder:
    """Confluent wire format (magic byte 0, 4-byte schema id, Avro body) with writer schemas from a Schema
    Registry, each resolved against the reader schema (added optional fields, removed fields with defaults,
    type promotions, aliases), as fastavro does.

    `decode` never waits for the registry: a record whose schema id it has not learned yet raises
    SchemaPending, and the sink holds it (and what follows it) until `learn` is called for that id.
    Consecutive records of one schema id are decoded with one lookup.
    """

    def __init__(self, reader: dict[str, Any] | None) -> None:
        self._reader = fastavro.parse_schema(reader) if reader is not None else None
        self._writers: dict[bytes, Any] = {}  # 4-byte id -> parsed writer schema, or None: unknown id
        self._last_id = b""
        self._last_writer: Any = None

    def learn(self, schema_id: int, writer: dict[str, Any] | None, references: list[dict[str, Any]]) -> None:
        """The registry's answer for `schema_id`: its writer schema (and references), or None if unknown."""
        entry: tuple[Any, type[io.BytesIO], Any] | None = None
        if writer is not None:
            named: dict[str, Any] = {}
            for reference in references:
                fastavro.parse_schema(reference, named_schemas=named)
            parsed = fastavro.parse_schema(writer, named_schemas=named)
            # Same schema as the reader (by Avro's Parsing Canonical Form: the registry may hand it back
            # re-serialised, without docs): decoded as written, no resolution. Otherwise resolved, through a
            # buffer that refuses short reads: fastavro checks lengths as it reads, but not as it skips a
            # field the reader does not have, so a record cut inside one would decode.
            if self._reader is None or _canonical(parsed) == _canonical(self._reader):
                entry = (parsed, io.BytesIO, None)
            else:
                entry = (parsed, _StrictBytesIO, self._reader)
        if entry is None and len(self._writers) >= MAX_SCHEMAS:
            # Records framed with random ids must not grow the cache without bound: forget unknown ids.
            self._writers = {k: v for k, v in self._writers.items() if v is not None}
        self._writers[schema_id.to_bytes(4, "big")] = entry
        self._last_id = b""

    def decode(self, value: bytes) -> dict[str, Any]:
        if len(value) < 5 or value[0] != 0:
            raise DecodeError("not in Confluent Avro wire format (magic byte 0 and a 4-byte schema id)")
        schema_id = value[1:5]
        if schema_id == self._last_id:
            writer = self._last_writer
        else:
            writer = self._writers.get(schema_id, _PENDING)
            if writer is _PENDING:
                raise SchemaPending(int.from_bytes(schema_id, "big"))
            self._last_id, self._last_writer = schema_id, writer
        if writer is None:
            raise DecodeError(f"schema id {int.from_bytes(schema_id, 'big')} is not in the schema registry")
        parsed, buffer, reader = writer
        buf = buffer(value)
        buf.seek(5)
        return read_record(buf, len(value), parsed, reader)


_PENDING = object()
MAX_SCHEMAS = 10_000  # writer schemas (and unknown ids) remembered per sink


class _StrictBytesIO(io.BytesIO):
    """A buffer whose reads of n bytes give n bytes or raise: a record cut short is never decoded."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) != size:
            raise EOFError(f"the record ends {size - len(data)} bytes early")
        return data


def _canonical(schema: Any) -> str:
    canonical: str = to_parsing_canonical_form(schema)
    return canonical
