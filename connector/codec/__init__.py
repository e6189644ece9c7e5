"""Bytes → records: one decoder per `format`, and validation against the destination's schema."""

from connector.codec.base import DecodeError, Decoder, SchemaPending, make_decoder
from connector.codec.mapping import Mapper, MappingError, compile_mapping
from connector.codec.schema import Validator, compile_validator, load_schema, schema_of, validator_for

__all__ = [
    "DecodeError",
    "Decoder",
    "Mapper",
    "MappingError",
    "SchemaPending",
    "Validator",
    "compile_mapping",
    "compile_validator",
    "load_schema",
    "make_decoder",
    "schema_of",
    "validator_for",
]
