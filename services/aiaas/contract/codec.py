"""msgpack on the wire, with limits that keep hostile messages cheap to reject.

Decoding an envelope builds at most `EnvelopeSettings.max_values` Python objects, whatever the
bytes claim, so a hostile message costs little time and memory to refuse:
1. the size limit (AIAAS_KAFKA_MAX_MESSAGE_BYTES) is checked first;
2. a structural pass (`Unpacker.skip`, which builds nothing) refuses truncated input, headers
   bigger than `max_container_items` or the message, and nesting deeper than msgpack's stack
   (1024) — so an array header that promises 4096 elements it does not have never gets its
   list allocated (1000 such nested headers would reserve 32 MB);
3. the decode counts the values of every array and map as msgpack completes it and stops past
   `max_values` (only for messages longer than `max_values` bytes: a shorter one cannot hold more);
4. pydantic validates the contract; a refused envelope is released before the error travels on.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from aiaas.contract.envelopes import (
    ErrorInfo,
    Job,
    Result,
    Tensor,
    Timings,
    is_plain_value,
)
from aiaas.errors import AiaasError, InvalidJob, PayloadTooLarge, UndecodableMessage
from aiaas.settings import EnvelopeSettings

__all__ = ["encode", "decode_job", "decode_result", "default_limits"]

_Model = TypeVar("_Model", bound=BaseModel)


def encode(envelope: BaseModel) -> bytes:
    """One envelope as msgpack bytes (bytes fields stay binary): its `model_dump(exclude_none=True)`."""
    plain = _result_map(envelope) if type(envelope) is Result else None
    packed: bytes = msgpack.packb(envelope.model_dump(mode="python", exclude_none=True) if plain is None else plain,
                                  use_bin_type=True)
    return packed


_RESULT_FIELDS = tuple(Result.model_fields)
_TIMINGS_FIELDS = tuple(Timings.model_fields)
_ERROR_FIELDS = tuple(ErrorInfo.model_fields)


def _result_map(result: Result) -> dict[str, Any] | None:
    """What `model_dump(mode="python", exclude_none=True)` gives for an inference result, built directly (a few µs
    less per result; packed at once, so the envelope's own lists and dicts are used, not copied); None for anything
    else (training progress, unusual outputs), which takes pydantic's way."""
    values = result.__dict__
    if values["progress"] is not None or values["chunk"] is not None or type(values["timings"]) is not Timings:
        return None
    outputs = {}
    for key, value in values["outputs"].items():
        if type(value) is Tensor:  # its __dict__ is its fields in order, {dtype, shape, data}: packed as it is
            outputs[key] = value.__dict__
        elif is_plain_value(value):
            outputs[key] = value
        else:
            return None
    error = values["error"]
    if error is not None and type(error) is not ErrorInfo:
        return None
    timings = values["timings"].__dict__
    parts = {
        "outputs": outputs,
        "timings": {name: timings[name] for name in _TIMINGS_FIELDS},
        "error": None if error is None else {name: error.__dict__[name] for name in _ERROR_FIELDS},
        "attributes": values["attributes"],
    }
    plain = {}
    for name in _RESULT_FIELDS:
        value = parts[name] if name in parts else values[name]
        if value is not None:
            plain[name] = value
    return plain


@functools.cache
def default_limits() -> EnvelopeSettings:
    """The envelope limits of this process (AIAAS_ENVELOPE_* variables), read once."""
    return EnvelopeSettings()


class _Budget:
    """msgpack hooks that count values as each array or map is completed, and stop the decode past the limit."""

    def __init__(self, max_values: int) -> None:
        self._left = max_values
        self._max_values = max_values

    def array(self, items: list[Any]) -> list[Any]:
        self._take(items)
        return items

    def map(self, entries: dict[Any, Any]) -> dict[Any, Any]:
        self._take(entries)
        return entries

    def _take(self, container: list[Any] | dict[Any, Any]) -> None:
        self._left -= 1 + len(container)
        if self._left < 0:
            raise UndecodableMessage(
                f"the envelope has more than {self._max_values} values (AIAAS_ENVELOPE_MAX_VALUES)")


def _unpack(raw: bytes, max_bytes: int, limits: EnvelopeSettings) -> object:
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"message is {len(raw)} bytes; the limit is {max_bytes} (AIAAS_KAFKA_MAX_MESSAGE_BYTES)")
    options = dict(
        raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=max_bytes, max_ext_len=0,
        max_array_len=limits.max_container_items, max_map_len=limits.max_container_items,
    )
    try:
        structure = msgpack.Unpacker(max_buffer_size=max(len(raw), 1), **options)
        structure.feed(raw)
        structure.skip()  # builds nothing: lying headers and truncation are refused before any allocation
        if len(raw) <= limits.max_values:  # every value takes at least one byte: this one cannot hold too many
            return msgpack.unpackb(raw, **options)
        budget = _Budget(limits.max_values)
        return msgpack.unpackb(raw, list_hook=budget.array, object_hook=budget.map, **options)
    except AiaasError:
        raise
    except msgpack.StackError as exc:
        raise UndecodableMessage("not a msgpack envelope: nested deeper than msgpack allows") from exc
    except (msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError, ValueError, TypeError) as exc:
        reason = "truncated (the message ends inside a value)" if isinstance(exc, msgpack.OutOfData) else str(exc)
        reason = reason or f"invalid bytes ({type(exc).__name__})"  # msgpack's FormatError says nothing itself
        raise UndecodableMessage(f"not a msgpack envelope: {reason}") from exc


def _describe(exc: ValidationError) -> str:
    """The first problem, short (its location may hold a publisher's field names: cut them)."""
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])[:200] or "envelope"
    return f"{where}: {first['msg'][:300]} ({exc.error_count()} problem(s))"


def _decode(raw: bytes, model: type[_Model], max_bytes: int, limits: EnvelopeSettings | None) -> _Model:
    obj = _unpack(raw, max_bytes, limits or default_limits())
    if not isinstance(obj, dict):
        raise UndecodableMessage(f"expected a msgpack map, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problem = _describe(exc)
    # Raised outside the handler, after `del`: neither the pydantic error nor this frame keeps a refused
    # (possibly large) envelope alive for as long as the job's error is kept.
    del obj
    raise InvalidJob(problem)


def decode_job(raw: bytes, max_bytes: int, limits: EnvelopeSettings | None = None) -> Job:
    """Bytes from a job topic to a validated Job; raises an AiaasError naming what is wrong.

    `limits` defaults to this process's `EnvelopeSettings` (`default_limits()`).
    """
    return _decode(raw, Job, max_bytes, limits)


def decode_result(raw: bytes, max_bytes: int, limits: EnvelopeSettings | None = None) -> Result:
    """Bytes from a results topic to a validated Result (same limits as `decode_job`)."""
    return _decode(raw, Result, max_bytes, limits)
