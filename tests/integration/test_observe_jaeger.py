"""One job's whole trace in a real Jaeger v2: the CLI and the vision service export over OTLP (the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`), and Jaeger's query API returns the client's send, the service's process and result
send, the client's receipt — one trace — and the batch's `infer vision` span linked to the job."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness import REPO, wait_for
from tests.integration.conftest import ServiceProcess
from tests.integration.observe_backends import Jaeger

pytestmark = pytest.mark.integration


def _tags(span: dict) -> dict:
    return {tag["key"]: tag["value"] for tag in span.get("tags", ())}


def _one(spans: list[dict], service: str, name: str) -> dict:
    found = [s for s in spans if s["serviceName"] == service and s["operationName"] == name]
    seen = [(s["serviceName"], s["operationName"]) for s in spans]
    assert len(found) == 1, f"{len(found)} '{name}' spans of {service} in {seen}"
    return found[0]


def _parent(span: dict) -> tuple[int, int] | None:
    """(trace id, span id) of the span's parent as ints (Jaeger drops leading zeros of ids), None for a root."""
    refs = [(int(r["traceID"], 16), int(r["spanID"], 16)) for r in span.get("references", ())
            if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else None


def _id(span: dict) -> tuple[int, int]:
    return int(span["traceID"], 16), int(span["spanID"], 16)


def test_a_jobs_trace_reaches_jaeger_whole(observe_jaeger: Jaeger, kafka_broker, topic_prefix, service_env,
                                           vision_registry, tmp_path):
    env = service_env | {"OTEL_EXPORTER_OTLP_ENDPOINT": observe_jaeger.otlp_endpoint}
    service = ServiceProcess(env, tmp_path / "vision.log").start()
    try:
        submitted = subprocess.run([sys.executable, "-m", "aiaas.cli", "submit", "vision", "--digits-sample", "1",
                                    "--wait", "--timeout", "60"], env=env, cwd=REPO, capture_output=True, text=True,
                                   timeout=180)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = re.search(r"example job id\s+(\S+)", submitted.stdout).group(1)

        # The CLI flushed its spans when it exited; the service exports every 0.5 s.
        (found,) = wait_for(lambda: observe_jaeger.find_traces("aiaas-cli", tags={"aiaas.job.id": job_id}), 30,
                            what=f"a trace of job {job_id} in Jaeger")
        trace_id = found[0]["traceID"]
        infer, results = f"{topic_prefix}.vision.infer", f"{topic_prefix}.vision.results"
        names = {("aiaas-cli", f"send {infer}"), ("aiaas-vision", f"process {infer}"),
                 ("aiaas-vision", f"send {results}"), ("aiaas-cli", f"process {results}")}

        def whole_trace() -> list[dict] | None:
            got = observe_jaeger.trace(trace_id)
            return got if names <= {(s["serviceName"], s["operationName"]) for s in got} else None

        spans = wait_for(whole_trace, 30, what=f"the four spans of job {job_id} in trace {trace_id}")
    finally:
        service.stop()

    send = _one(spans, "aiaas-cli", f"send {infer}")
    process = _one(spans, "aiaas-vision", f"process {infer}")
    result_send = _one(spans, "aiaas-vision", f"send {results}")
    receipt = _one(spans, "aiaas-cli", f"process {results}")
    assert {_id(s)[0] for s in (send, process, result_send, receipt)} == {int(trace_id, 16)}  # one trace
    assert _parent(process) == _id(send)  # across Kafka: the job record's trace context
    assert _parent(result_send) == _id(process)
    assert _parent(receipt) == _id(result_send)  # and back, through the result record
    assert [_tags(s)["span.kind"] for s in (send, process, result_send, receipt)] == \
        ["producer", "consumer", "producer", "consumer"]
    assert _tags(send)["aiaas.job.id"] == _tags(process)["aiaas.job.id"] == job_id
    assert _tags(process)["messaging.consumer.group.name"].endswith(".vision")

    # The batch's model call serves many jobs' traces, so it starts a trace of its own, linked from each job's
    # process span (Jaeger shows a link as a FOLLOWS_FROM reference).
    def linked_batch() -> dict | None:
        for batch_trace in observe_jaeger.find_traces("aiaas-vision", operation="infer vision"):
            for span in batch_trace:
                refs = {(int(r["traceID"], 16), int(r["spanID"], 16)) for r in span.get("references", ())
                        if r["refType"] == "FOLLOWS_FROM"}
                if span["operationName"] == "infer vision" and _id(process) in refs:
                    return span
        return None

    batch = wait_for(linked_batch, 30, what="the infer vision span linked to the job's process span")
    assert batch["serviceName"] == "aiaas-vision" and _parent(batch) is None
    assert _id(batch)[0] != int(trace_id, 16)

    # `aiaas trace` reads the same trace back from Jaeger and draws the tree it draws from the local store.
    shown = subprocess.run([sys.executable, "-m", "aiaas.cli", "trace", job_id, "--wait", "0"],
                           env=env | {"AIAAS_TRACE_QUERY_URL": observe_jaeger.url}, cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {int(trace_id, 16):032x}  (5 spans)"), shown.stdout
    tree = [line.split("ms  ", 2)[-1].split(" [")[0] for line in lines[2:]]  # indented names, after the timings
    assert tree == [f"send {infer}", f"  process {infer}", "    ~> infer vision", f"    send {results}",
                    f"      process {results}"], shown.stdout
    missing = subprocess.run([sys.executable, "-m", "aiaas.cli", "trace", "no-such-job", "--wait", "0",
                              "--jaeger", observe_jaeger.url], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and "no spans of job no-such-job in Jaeger" in missing.stderr, missing.stderr
