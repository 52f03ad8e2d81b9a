"""msgpack on the wire, with limits that keep hostile messages cheap to reject."""

from __future__ import annotations

from typing import TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from .contracts import Job, Result
from .errors import InvalidJob, PayloadTooLarge, UndecodableMessage

__all__ = ["encode", "decode_job", "decode_result", "MAX_CONTAINER_ITEMS"]

MAX_CONTAINER_ITEMS = 4096
"""Largest array or map in an envelope; msgpack rejects bigger headers before allocating."""

_Model = TypeVar("_Model", bound=BaseModel)


def encode(envelope: BaseModel) -> bytes:
    """One envelope as msgpack bytes (bytes fields stay binary)."""
    return msgpack.packb(envelope.model_dump(mode="python", exclude_none=True), use_bin_type=True)


def _unpack(raw: bytes, max_bytes: int) -> object:
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=MAX_CONTAINER_ITEMS,
            max_map_len=MAX_CONTAINER_ITEMS,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise UndecodableMessage(f"not a msgpack envelope: {exc}") from exc


def _decode(raw: bytes, model: type[_Model], max_bytes: int) -> _Model:
    obj = _unpack(raw, max_bytes)
    if not isinstance(obj, dict):
        raise UndecodableMessage(f"expected a msgpack map, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "envelope"
        raise InvalidJob(f"{where}: {first['msg']} ({exc.error_count()} problem(s))") from exc


def decode_job(raw: bytes, max_bytes: int) -> Job:
    """Bytes from a job topic to a validated Job; raises an AiaasError naming what is wrong."""
    return _decode(raw, Job, max_bytes)


def decode_result(raw: bytes, max_bytes: int) -> Result:
    """Bytes from a results topic to a validated Result."""
    return _decode(raw, Result, max_bytes)
