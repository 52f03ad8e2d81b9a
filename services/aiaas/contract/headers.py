"""The headers of a consumed record, checked once before anything reads them.

Kafka headers are as untrusted as a record's body: any client can send a header without a value,
with bytes that are not text, or thousands of them. One unchecked read (a `None` value decoded,
a junk `traceparent` handed to a parser) used to raise out of the worker and stop the service on
that record for good. So a record's headers are checked here, at admission, and everything after
reads only what passed:

* at most `max_headers` headers and `max_header_bytes` in all (keys and values);
* every header aiaas reads — the W3C trace context (`traceparent`, `tracestate`, `baggage`) and any
  `aiaas.*` header — appears once and has a value: printable ASCII for the trace context (as W3C
  requires), UTF-8 text without control characters for `aiaas.*`;
* `traceparent` has the W3C form (version 00 exactly `00-<32 hex>-<16 hex>-<2 hex>`, ids not all
  zero; a later version starts with those fields), `tracestate` at most 512 characters and
  `baggage` at most 8,192 bytes (the W3C limits).

Anything else ends the record as `InvalidHeaders`: a dead letter, and an error result when its job
id is known. Headers aiaas does not read are passed over whatever they hold: Kafka allows null
values and any bytes there, and they belong to the publisher.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from aiaas.errors import InvalidHeaders
from aiaas.settings import EnvelopeSettings

__all__ = ["HeaderLimits", "RecordHeaders", "read_headers"]

_OURS = "aiaas."
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRACE_LIMITS = {"traceparent": 512, "tracestate": 512, "baggage": 8192}


@dataclass(frozen=True)
class HeaderLimits:
    """How many headers, and how many bytes of them, a record may carry (`EnvelopeSettings`)."""

    max_headers: int = 64
    max_header_bytes: int = 16 * 1024

    @classmethod
    def configured(cls) -> HeaderLimits:
        """The limits the operator set (`AIAAS_ENVELOPE_MAX_HEADERS`, `AIAAS_ENVELOPE_MAX_HEADER_BYTES`)."""
        settings = EnvelopeSettings()
        return cls(settings.max_headers, settings.max_header_bytes)


@dataclass(frozen=True, slots=True)
class RecordHeaders:
    """The checked headers aiaas reads, as text: trace context and `aiaas.*` ones (others are left out)."""

    values: dict[str, str]
    trace: tuple[tuple[str, bytes], ...] = ()
    """The W3C trace-context headers as they came (checked), for continuing the publisher's trace."""

    def get(self, name: str) -> str | None:
        """The value of header `name`, or None when the record does not carry it."""
        return self.values.get(name)

    def trace_context(self) -> list[tuple[str, bytes]]:
        """The W3C trace-context headers, for continuing the publisher's trace."""
        return list(self.trace)


NO_HEADERS = RecordHeaders({})


def read_headers(raw: Iterable[tuple[object, object]] | None, limits: HeaderLimits = HeaderLimits()) -> RecordHeaders:
    """Check a consumed record's headers (see the module docstring); raises InvalidHeaders naming what is wrong."""
    if not raw:
        return NO_HEADERS
    values: dict[str, str] = {}
    trace: list[tuple[str, bytes]] = []
    count = size = 0
    for pair in raw:
        count += 1
        if count > limits.max_headers:
            raise InvalidHeaders(f"more than {limits.max_headers} headers (AIAAS_ENVELOPE_MAX_HEADERS)")
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise InvalidHeaders("a header is not a (key, value) pair") from None
        if not isinstance(key, str):
            raise InvalidHeaders("a header key is not text")
        size += len(key) + (len(value) if isinstance(value, (bytes, bytearray, str)) else 0)
        if size > limits.max_header_bytes:
            raise InvalidHeaders(f"the headers hold more than {limits.max_header_bytes} bytes "
                                 "(AIAAS_ENVELOPE_MAX_HEADER_BYTES)")
        if key in _TRACE_LIMITS or key.startswith(_OURS):
            if key in values:
                raise InvalidHeaders(f"header {_shown(key)} appears more than once")
            values[key] = _text(key, value)
            if key in _TRACE_LIMITS:
                trace.append((key, bytes(cast("bytes | bytearray", value))))  # `_text` checked its type
    traceparent = values.get("traceparent")
    if traceparent is not None:
        _check_traceparent(traceparent)
    return RecordHeaders(values, tuple(trace)) if values else NO_HEADERS


def _text(key: str, value: object) -> str:
    """A header value aiaas reads, as text; raises InvalidHeaders when it has none or it is not proper text."""
    if value is None:
        raise InvalidHeaders(f"header {_shown(key)} has no value")
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidHeaders(f"header {_shown(key)} is not bytes")
    try:
        text = bytes(value).decode()
    except UnicodeDecodeError:
        raise InvalidHeaders(f"header {_shown(key)} is not UTF-8 text") from None
    limit = _TRACE_LIMITS.get(key)
    if limit is not None:
        if len(value) > limit:
            raise InvalidHeaders(f"header {key} is longer than {limit} bytes")
        if not _PRINTABLE_ASCII.fullmatch(text):
            raise InvalidHeaders(f"header {key} is not printable ASCII (W3C trace context)")
    elif _CONTROL.search(text):
        raise InvalidHeaders(f"header {_shown(key)} holds control characters")
    return text


def _check_traceparent(value: str) -> None:
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == "ff" or (match[1] == "00" and match[5]):
        raise InvalidHeaders("header traceparent is not a W3C traceparent (version-trace_id-parent_id-flags)")
    if set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        raise InvalidHeaders("header traceparent has an all-zero trace or parent id")


def _shown(key: str) -> str:
    """A header key fit for an error message: printable and short."""
    return repr(key[:64])
