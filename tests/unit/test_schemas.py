import json
import re
from pathlib import Path

import jsonschema
import pytest

from aiaas.cli.main import main, schema_sources
from aiaas.contract.codec import encode
from aiaas.contract.dead_letters import DLQ_DROPPED_HEADERS, DLQ_HEADERS
from aiaas.contract.envelopes import Job, Result
from aiaas.contract.schemas import CONFIG_REFERENCE, check_schemas, render_docs, render_schemas
from aiaas.contract.topics import ModelTopics, dlq_topic, models_topic
from aiaas.model_types import BUILT_IN
from aiaas.registry.announce import ModelEvent
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from aiaas.settings import WorkerSettings
from aiaas.training.settings import TrainerSettings
from tests.fakes import FailingRuntime, Record, RecordingSink, job_record

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS, DOCS = ROOT / "schemas", ROOT / "docs"
SERVICES = ROOT / "services" / "aiaas"


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    sources = schema_sources()
    return render_schemas(sources) | render_docs(sources)


@pytest.fixture(scope="module")
def asyncapi(documents) -> dict:
    return json.loads(documents["asyncapi.json"])


def test_checked_in_documents_match_the_code():
    drift = check_schemas(SCHEMAS, DOCS, schema_sources())
    assert drift == [], f"{drift} out of date: run `aiaas schemas write` (or `make schemas`)"


def test_the_command_writes_then_checks_both_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path / "home"))
    folders = ["--dir", str(tmp_path / "schemas"), "--docs", str(tmp_path / "docs")]
    assert main(["schemas", "check", *folders]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["schemas", "write", *folders]) == 0
    assert (tmp_path / "docs" / CONFIG_REFERENCE).is_file() and (tmp_path / "schemas" / "asyncapi.json").is_file()
    assert main(["schemas", "check", *folders]) == 0
    (tmp_path / "docs" / CONFIG_REFERENCE).write_text("edited by hand\n")
    assert main(["schemas", "check", *folders]) == 1


def test_every_json_schema_is_a_valid_draft_2020_12_schema(documents, asyncapi):
    for name, text in documents.items():
        if name.endswith(".schema.json"):
            jsonschema.Draft202012Validator.check_schema(json.loads(text))
    for schema in asyncapi["components"]["schemas"].values():  # AsyncAPI 3.0's schemas are draft-07 based
        jsonschema.Draft7Validator.check_schema(schema)
        jsonschema.Draft202012Validator.check_schema(schema)


def test_job_schema_accepts_a_job_as_json_would_see_it(documents):
    schema = json.loads(documents["job.schema.json"])
    job = Job(job_id="a", model="vision", inputs={"text": "hello"})
    jsonschema.validate(job.model_dump(mode="json", exclude_none=True), schema)
    assert encode(job)  # and it encodes for the wire


def test_result_and_model_event_schemas_accept_what_the_code_makes(documents):
    result = Result(job_id="a", model="vision", status="accepted", outputs={"attempt": 1})
    jsonschema.validate(result.model_dump(mode="json", exclude_none=True), json.loads(documents["result.schema.json"]))
    event = ModelEvent(model="vision", action="promoted", version=3, aliases={"production": 3})
    jsonschema.validate(event.model_dump(mode="json"), json.loads(documents["model-event.schema.json"]))


def test_asyncapi_names_every_channel_with_addresses_from_topics_py(asyncapi):
    channels = asyncapi["channels"]
    assert set(channels) == {"infer", "tenantInfer", "urgent", "tenantUrgent", "train", "tenantTrain", "results",
                             "tenantResults", "replyTo", "retry", "dlq", "models", "cancel", "tenantCancel"}

    def address(channel: str, **values: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], channels[channel]["address"])

    topics = ModelTopics.of("vision", "acme")
    assert [address(c, prefix="acme", model="vision") for c in ("infer", "train", "results", "retry")] == [
        topics.infer, topics.train, topics.results, topics.retry]
    assert address("tenantInfer", prefix="acme", model="vision", tenant="alice") == topics.tenant_infer("alice")
    assert address("urgent", prefix="acme", model="vision") == topics.urgent
    assert address("tenantUrgent", prefix="acme", model="vision", tenant="alice") == topics.tenant_urgent("alice")
    assert address("tenantTrain", prefix="acme", model="vision", tenant="alice") == topics.tenant_train("alice")
    assert address("tenantResults", prefix="acme", model="vision", tenant="alice") == topics.tenant_results("alice")
    assert address("cancel", prefix="acme", model="vision") == topics.cancel
    assert address("tenantCancel", prefix="acme", model="vision", tenant="alice") == topics.tenant_cancel("alice")
    assert address("dlq", prefix="acme") == dlq_topic("acme")
    assert address("models", prefix="acme") == models_topic("acme")
    assert channels["replyTo"]["address"] is None  # the operator's pattern decides


def test_asyncapi_is_well_formed(asyncapi):
    assert asyncapi["asyncapi"] == "3.0.0" and {"title", "version"} <= set(asyncapi["info"])

    def resolve(pointer: str):
        node = asyncapi
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def refs(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(asyncapi):
        assert ref.startswith("#/"), ref
        resolve(ref)  # raises KeyError when it points nowhere
    components = asyncapi["components"]
    for kind in components.values():
        assert all(re.fullmatch(r"[\w.\-]+", key) for key in kind), kind.keys()  # AsyncAPI's component key rule
    for name, channel in asyncapi["channels"].items():
        named = set(re.findall(r"\{(\w+)\}", channel["address"] or ""))
        assert named == set(channel.get("parameters", {})), name
        assert named <= set(components["parameters"])
        assert channel["messages"], name
    for name, operation in asyncapi["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = operation["channel"]["$ref"]
        assert operation["messages"]
        assert all(m["$ref"].startswith(channel + "/messages/") for m in operation["messages"]), name
    used = {operation["channel"]["$ref"].rsplit("/", 1)[1] for operation in asyncapi["operations"].values()}
    assert used == set(asyncapi["channels"])  # every channel has who writes it and who reads it
    for message in components["messages"].values():
        assert message["headers"]["type"] == "object" and message["payload"]
        assert set(message["headers"].get("required", [])) <= set(message["headers"]["properties"])


def _headers_of(asyncapi, message: str) -> set[str]:
    return set(asyncapi["components"]["messages"][message]["headers"]["properties"])


def test_every_header_has_a_type_a_meaning_a_writer_and_a_reader(asyncapi):
    schemas = asyncapi["components"]["schemas"]
    headers = {name.removeprefix("Header."): s for name, s in schemas.items() if name.startswith("Header.")}
    assert {"traceparent", "tracestate", "baggage", *DLQ_HEADERS, *DLQ_DROPPED_HEADERS,
            "aiaas.attempt", "aiaas.retry.not_before", "aiaas.priority"} == set(headers)
    for name, schema in headers.items():
        assert schema["type"] == "string" and schema["description"], name
        assert schema["x-written-by"] and schema["x-read-by"], name
    assert set(DLQ_HEADERS) <= set(asyncapi["components"]["messages"]["DeadLetter"]["headers"]["required"])


def test_the_documented_retry_headers_are_the_ones_the_retry_policy_writes(asyncapi):
    from aiaas.contract.dead_letters import Origin
    from aiaas.errors import ModelFailure

    written = RetryPolicy().retry_headers(Origin("t", 0, 0), ModelFailure("x"), 1, now=0.0)
    retry = asyncapi["components"]["messages"]["RetryRecord"]["headers"]
    assert {name for name, _ in written} == set(retry["required"])


def test_the_dead_letters_dropped_bytes_headers_are_the_contracts_constants():
    source = (SERVICES / "serving" / "outcomes.py").read_text()
    assert not re.findall(r'headers\.append\(\(\s*"([^"]+)"', source)  # no literal header names: the constants
    assert set(DLQ_DROPPED_HEADERS) == {"aiaas.dlq.value.dropped_bytes", "aiaas.dlq.key.dropped_bytes"}


async def test_what_a_worker_publishes_carries_only_documented_headers(asyncapi):
    """Run a worker through a retry, a dead letter with its value and key dropped and a bare dead letter: every
    header on every record it publishes is one the document lists for that channel's message."""
    topics = ModelTopics.of("vision", "p")
    sink = RecordingSink()
    worker = BatchWorker(FailingRuntime(), sink, topics=topics, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 16, retry=RetryPolicy(max_attempts=2, backoff_s=0, max_backoff_s=0))
    try:
        await worker.handle([job_record(0, [1.0])])
        ((_, value, key, headers),) = sink.on(topics.retry)
        await worker.handle([Record(topics.retry, 0, 0, key, value, list(headers.items()))])
        await worker.handle([Record(topics.infer, 0, 1, b"k" * 2048, b"\x00" * (1 << 17))])
        await worker.dead_letter_undeliverable([(job_record(2, [1.0]), "refused")])
    finally:
        worker.close()
    message_of = {topics.results: "Result", topics.retry: "RetryRecord", "p.dlq": "DeadLetter"}
    seen: dict[str, set[str]] = {}
    for topic, _, _, headers in sink.sent:
        seen.setdefault(message_of[topic], set()).update(headers)
    assert set(seen) == {"Result", "RetryRecord", "DeadLetter"}
    assert set(DLQ_DROPPED_HEADERS) <= seen["DeadLetter"]
    for message, names in seen.items():
        assert names <= _headers_of(asyncapi, message), (message, names - _headers_of(asyncapi, message))


def test_the_configuration_reference_lists_every_setting(documents):
    page = documents[CONFIG_REFERENCE]
    assert page.startswith("<!-- Generated by `aiaas schemas write`")
    for field in WorkerSettings.model_fields:
        assert f"`AIAAS_<MODEL>_{field.upper()}`" in page
    for field in TrainerSettings.model_fields:
        assert f"`AIAAS_TRAINER_{field.upper()}`" in page
    for model in BUILT_IN:
        cls = model.settings()
        prefix = cls.model_config["env_prefix"]
        assert f"## {cls.__name__} (`{prefix}`)" in page
        for field, info in cls.model_fields.items():
            base = WorkerSettings.model_fields.get(field)
            if base is None or info.default != base.default:  # added or given another default: listed with it
                assert f"`{prefix}{field.upper()}`" in page, field
    assert "`AIAAS_TEXT_MAX_BATCH` | integer, >= 1, <= 4096 | `32` | default (WorkerSettings: `64`)" in page
    assert "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`" in page  # aliases, not prefix
