"""Bytes → records: one decoder per `format`, and validation against the destination's schema."""

from connector.codec.base import DecodeError, Decoder, make_decoder
from connector.codec.schema import Validator, compile_validator, load_schema, validator_for

__all__ = [
    "DecodeError",
    "Decoder",
    "Validator",
    "compile_validator",
    "load_schema",
    "make_decoder",
    "validator_for",
]
