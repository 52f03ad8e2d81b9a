"""A job's spans read back from Jaeger's query API (the JSON `/api/...` that Jaeger v1 and v2 both serve), as the
`StoredSpan`s the local span store gives: `aiaas trace` draws the same tree from either.

Jaeger finds traces by service and tag, so the job's traces are those where a span of an `aiaas-*` service carries
its job id. The batch spans (`infer <model>`) start traces of their own, linked from each job's process span (a
FOLLOWS_FROM reference in Jaeger's JSON): they are looked up among the `infer` spans of the job's own time window.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from aiaas.errors import AiaasError
from aiaas.tracing.conventions import JOB_ID
from aiaas.tracing.span_store import StoredSpan

__all__ = ["JaegerQuery", "stored_spans"]

SERVICE_PREFIX = "aiaas-"
"""The services whose spans are aiaas's (`aiaas-cli`, `aiaas-<model>`, `aiaas-trainer-<model>`)."""
_STATUS_TAG = "otel.status_code"


class JaegerQuery:
    """Reads traces from one Jaeger (`url`: its query address, e.g. `http://127.0.0.1:16686`)."""

    def __init__(self, url: str, *, lookback: str = "24h", timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.lookback = lookback
        self.timeout_s = timeout_s

    def job_spans(self, job_id: str) -> list[StoredSpan]:
        """The spans of the trace(s) that carry `job_id`, and the batch spans linked from them ([] when none)."""
        services = self.services()
        trace_ids = {_trace_id(trace["traceID"]) for service in services
                     for trace in self._traces(service=service, tags=json.dumps({JOB_ID: job_id}), limit="20")}
        spans = [span for trace_id in sorted(trace_ids) for span in stored_spans(self._trace(trace_id))]
        if not spans:
            return []
        ids = {span.span_id for span in spans}
        start_us, end_us = min(s.start_ns for s in spans) // 1000, max(s.end_ns for s in spans) // 1000 + 1
        linked: dict[str, StoredSpan] = {}
        for service in services:
            for operation in self._operations(service):
                if not operation.startswith("infer "):
                    continue
                window = self._traces(service=service, operation=operation, start=str(start_us), end=str(end_us),
                                      limit="1000")
                for span in stored_spans(window):
                    if span.trace_id not in trace_ids and any(span_id in ids for _, span_id in span.links):
                        linked[span.span_id] = span
        return spans + list(linked.values())

    def model_spans(self, model: str, since_s: float, limit: int = 2000) -> list[StoredSpan]:
        """The spans of the last `since_s` seconds' traces of `model`'s service (at most `limit` of them, the
        latest), with its batch spans (`infer <model>`) of the same time: what `hops.job_times` reads."""
        end_us = int(time.time() * 1e6)
        window = {"start": str(end_us - int(since_s * 1e6)), "end": str(end_us), "limit": str(limit)}
        service = f"{SERVICE_PREFIX}{model}"
        traces = self._traces(service=service, **window)
        traces += self._traces(service=service, operation=f"infer {model}", **window)
        unique = {(span.trace_id, span.span_id): span for span in stored_spans(traces)}  # a trace both answers hold
        return list(unique.values())

    def services(self) -> list[str]:
        """The aiaas services Jaeger has spans of."""
        return sorted(s for s in self._get("/api/services") or () if s.startswith(SERVICE_PREFIX))

    def _operations(self, service: str) -> list[str]:
        return list(self._get(f"/api/services/{urllib.parse.quote(service, safe='')}/operations") or ())

    def _traces(self, **query: str) -> list[dict[str, Any]]:
        return list(self._get("/api/traces", {"lookback": self.lookback} | query) or ())

    def _trace(self, trace_id: str) -> list[dict[str, Any]]:
        return list(self._get(f"/api/traces/{trace_id}", missing_ok=True) or ())

    def _get(self, path: str, query: Mapping[str, str] | None = None, *, missing_ok: bool = False) -> Any:
        """The `data` of one query-API answer (None for a 404 where `missing_ok`: a trace gone since it was found)."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as answer:  # noqa: S310 - an address the user gave
                return json.load(answer).get("data")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise AiaasError(f"Jaeger at {self.url} answered {exc.code} to {path}: is it Jaeger's query address "
                             "(port 16686 by default)?") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AiaasError(f"cannot reach Jaeger at {self.url} ({reason}); check the address (AIAAS_TRACE_QUERY_URL "
                             "or --jaeger) and that Jaeger runs (`make observe`)") from exc
        except ValueError as exc:
            raise AiaasError(f"{url} did not answer with Jaeger's JSON: is it Jaeger's query address?") from exc


def stored_spans(traces: Iterable[Mapping[str, Any]]) -> list[StoredSpan]:
    """Jaeger's JSON traces as `StoredSpan`s: ids at full width (Jaeger drops their leading zeros), its service,
    kind and status from the process and the tags, the links from the FOLLOWS_FROM references."""
    spans = []
    for trace in traces:
        processes = trace.get("processes") or {}
        for span in trace.get("spans") or ():
            tags = {tag["key"]: tag.get("value") for tag in span.get("tags") or ()}
            references = span.get("references") or ()
            parent = next((r for r in references if r.get("refType") == "CHILD_OF"), None)
            start_us, duration_us = int(span["startTime"]), int(span.get("duration", 0))
            spans.append(StoredSpan(
                trace_id=_trace_id(span["traceID"]), span_id=_span_id(span["spanID"]),
                parent_id=_span_id(parent["spanID"]) if parent else None,
                name=span["operationName"], kind=str(tags.pop("span.kind", "internal")).upper(),
                service=(processes.get(span.get("processID")) or {}).get("serviceName", "?"),
                start_ns=start_us * 1000, end_ns=(start_us + duration_us) * 1000,
                status="ERROR" if tags.get("error") is True else str(tags.get(_STATUS_TAG, "UNSET")),
                attributes=tags,
                links=[[_trace_id(r["traceID"]), _span_id(r["spanID"])] for r in references
                       if r.get("refType") == "FOLLOWS_FROM"],
            ))
    return spans


def _trace_id(value: str) -> str:
    return value.zfill(32)


def _span_id(value: str) -> str:
    return value.zfill(16)
