"""Reading a job's spans from Jaeger's query API: the JSON mapped to `StoredSpan`s, and the queries made, against a
small HTTP server that answers as Jaeger does (the real Jaeger: tests/integration/test_observe_jaeger.py)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiaas.errors import AiaasError
from aiaas.tracing.jaeger_query import JaegerQuery, stored_spans
from aiaas.tracing.span_store import render_trace

JOB_TRACE = "0af7651916cd43dd8448eb211c80319c"
BATCH_TRACE = "00f067aa0ba902b7a9ba902b7a9ba902"  # a leading zero: Jaeger writes it without


def span(trace: str, span_id: str, name: str, process: str, start_us: int, duration_us: int, *, kind: str,
         parent: str | None = None, links: tuple[tuple[str, str], ...] = (), tags: dict | None = None) -> dict:
    references = ([{"refType": "CHILD_OF", "traceID": trace.lstrip("0"), "spanID": parent}] if parent else []) + [
        {"refType": "FOLLOWS_FROM", "traceID": t.lstrip("0"), "spanID": s.lstrip("0")} for t, s in links]
    return {"traceID": trace.lstrip("0"), "spanID": span_id.lstrip("0"), "operationName": name,
            "references": references, "startTime": start_us, "duration": duration_us, "processID": process,
            "tags": [{"key": "span.kind", "type": "string", "value": kind}]
            + [{"key": key, "type": "string", "value": value} for key, value in (tags or {}).items()]}


PROCESSES = {"p1": {"serviceName": "aiaas-cli"}, "p2": {"serviceName": "aiaas-vision"}}
JOB = {"traceID": JOB_TRACE.lstrip("0"), "processes": PROCESSES, "spans": [
    span(JOB_TRACE, "00000000000000a1", "send t.vision.infer", "p1", 1_000, 300, kind="producer",
         tags={"aiaas.job.id": "job-1"}),
    span(JOB_TRACE, "00000000000000a2", "process t.vision.infer", "p2", 1_500, 2_000, kind="consumer",
         parent="a1", tags={"aiaas.job.id": "job-1"}),
    span(JOB_TRACE, "00000000000000a3", "send t.vision.results", "p2", 3_000, 400, kind="producer", parent="a2"),
    span(JOB_TRACE, "00000000000000a4", "process t.vision.results", "p1", 3_600, 100, kind="consumer",
         parent="a3", tags={"otel.status_code": "ERROR"}),
]}
BATCH = {"traceID": BATCH_TRACE.lstrip("0"), "processes": {"p1": {"serviceName": "aiaas-vision"}}, "spans": [
    span(BATCH_TRACE, "00000000000000b1", "infer vision", "p1", 2_000, 800, kind="internal",
         links=((JOB_TRACE, "00000000000000a2"),)),
]}
OTHER_BATCH = {"traceID": "ff", "processes": {"p1": {"serviceName": "aiaas-vision"}}, "spans": [
    span("ff", "00000000000000c1", "infer vision", "p1", 2_100, 800, kind="internal",
         links=(("ee", "00000000000000e1"),)),  # another job's batch, in the same window
]}


class FakeJaeger(BaseHTTPRequestHandler):
    """Answers the four queries `JaegerQuery` makes, as Jaeger's JSON API does; records each query."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.seen.append((url.path, query))
        if url.path == "/api/services":
            data: object = ["aiaas-cli", "aiaas-vision", "jaeger-all-in-one"]
        elif url.path.startswith("/api/services/"):
            data = ["process t.vision.infer", "infer vision", "send t.vision.results"]
        elif url.path == "/api/traces" and "tags" in query:
            data = [JOB] if json.loads(query["tags"]) == {"aiaas.job.id": "job-1"} else []
        elif url.path == "/api/traces":
            data = [BATCH, OTHER_BATCH] if query.get("operation") == "infer vision" else []
        elif url.path.startswith("/api/traces/") and url.path.rsplit("/", 1)[-1].lstrip("0") == JOB_TRACE.lstrip("0"):
            data = [JOB]
        else:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"data": data, "total": 0, "errors": None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def jaeger():
    FakeJaeger.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJaeger)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_jaegers_json_becomes_the_spans_the_local_store_gives():
    spans = {s.name: s for s in stored_spans([JOB, BATCH])}
    send, process, receipt, batch = (spans[n] for n in ("send t.vision.infer", "process t.vision.infer",
                                                         "process t.vision.results", "infer vision"))
    assert send.trace_id == JOB_TRACE and send.parent_id is None and send.service == "aiaas-cli"
    assert process.parent_id == send.span_id == "00000000000000a1" and process.kind == "CONSUMER"
    assert (process.start_ns, process.end_ns) == (1_500_000, 3_500_000)
    assert process.attributes["aiaas.job.id"] == "job-1" and "span.kind" not in process.attributes
    assert receipt.status == "ERROR" and send.status == "UNSET"
    assert batch.trace_id == BATCH_TRACE and batch.links == [[JOB_TRACE, "00000000000000a2"]]


def test_a_jobs_spans_are_its_traces_and_the_batch_spans_linked_to_them(jaeger):
    spans = JaegerQuery(jaeger).job_spans("job-1")
    assert sorted(s.name for s in spans) == sorted(
        ["send t.vision.infer", "process t.vision.infer", "send t.vision.results", "process t.vision.results",
         "infer vision"])  # not the other job's batch
    tree = render_trace(spans).splitlines()
    assert tree[0] == f"trace {JOB_TRACE}  (5 spans)" and "~> infer vision [internal, aiaas-vision]" in tree[4]
    by_tag = [q for path, q in FakeJaeger.seen if path == "/api/traces" and "tags" in q]
    assert sorted(q["service"] for q in by_tag) == ["aiaas-cli", "aiaas-vision"]  # only aiaas's services
    windows = [q for path, q in FakeJaeger.seen if path == "/api/traces" and "operation" in q]
    assert {q["operation"] for q in windows} == {"infer vision"}
    assert all((q["start"], q["end"]) == ("1000", "3701") for q in windows)  # the job's time window, in µs


def test_no_such_job_is_no_spans_and_a_wrong_address_says_what_to_check(jaeger):
    assert JaegerQuery(jaeger).job_spans("job-2") == []
    with pytest.raises(AiaasError, match="cannot reach Jaeger at http://127.0.0.1:9 .*AIAAS_TRACE_QUERY_URL"):
        JaegerQuery("http://127.0.0.1:9", timeout_s=2).job_spans("job-1")
    with pytest.raises(AiaasError, match="answered 404 to /api/services: is it Jaeger's query address"):
        JaegerQuery(jaeger + "/nothing-here").job_spans("job-1")
