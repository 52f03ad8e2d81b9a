"""Generate the contract documents in `schemas/` and the configuration reference in `docs/` from the code.

The code is the source of truth: the pydantic envelopes (`envelopes.py`, the registry's `ModelEvent`), the topic
names (`topics.py`), the header names (`headers.py`, `dead_letters.py`, the retry policy's) and the settings
classes. `aiaas schemas write` writes the documents; `aiaas schemas check` and `tests/unit/test_schemas.py` fail
when a checked-in one differs from what the code generates.

* `schemas/*.schema.json`: the JSON Schema (draft 2020-12) of each envelope;
* `schemas/asyncapi.json`: every channel aiaas reads or writes, its messages, keys and headers (AsyncAPI 3.0);
* `docs/configuration-reference.md`: every setting of every settings class, as environment variables.

This module sits in `aiaas.contract`, below serving, training and the registry (import-linter's layers), so the
facts that live up there — the retry headers, `ModelEvent`, the trainer's settings — come in as `SchemaSources`,
which the `aiaas schemas` command gathers (`aiaas.cli.main.schema_sources`). Model types' settings classes come
from `aiaas.model_types`, as everywhere else. A header name the code writes that has no description here, or a
description of a header the code no longer writes, stops the generator (`ValueError`): the documents cannot drift
silently.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, cast, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, AliasPath, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from aiaas import errors, settings
from aiaas.contract.dead_letters import (
    DLQ_DROPPED_HEADERS,
    DLQ_HEADERS,
    ORIGIN_OFFSET,
    ORIGIN_PARTITION,
    ORIGIN_TOPIC,
)
from aiaas.contract.envelopes import FINISH_REASONS, JOB_ID_PATTERN, TERMINAL_STATUSES, Job, Result, ResultStatus
from aiaas.contract.headers import _OURS, _TRACE_LIMITS, _TRACEPARENT
from aiaas.contract.priority import HIGHEST, LOWEST, PRIORITY_HEADER, PRIORITY_PATTERN
from aiaas.contract.reply_topics import DEFAULT_REPLY_TO_PATTERN
from aiaas.contract.topics import TENANT_PATTERN, ModelTopics, dlq_topic, models_topic
from aiaas.model_types import BUILT_IN
from aiaas.settings import EnvelopeSettings, KafkaSettings, WorkerSettings

__all__ = ["SchemaSources", "render_schemas", "render_docs", "write_schemas", "check_schemas", "CONFIG_REFERENCE"]

CONFIG_REFERENCE = "configuration-reference.md"
"""The configuration reference's file name, in the docs folder."""


_TRAINING_STATUSES = ("accepted", "running", "succeeded", "failed")
"""The statuses of a training job's events, in the order they come (`training/service.py`)."""


@dataclass(frozen=True)
class SchemaSources:
    """What the documents describe that lives above `aiaas.contract` (see the module docstring)."""

    retry_headers: tuple[str, ...]
    """Every header of a retry record, as `RetryPolicy.retry_headers` writes them."""
    attempt_header: str
    """`serving.retries.ATTEMPT`: which attempt a retry record is."""
    not_before_header: str
    """`serving.retries.NOT_BEFORE`: when a retry record may run."""
    model_event: type[BaseModel]
    """`registry.announce.ModelEvent`: what `<prefix>.models` carries."""
    trainer_settings: type[BaseSettings]
    """`training.settings.TrainerSettings`."""


# -- documents ------------------------------------------------------------------------------------------------------

def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_schemas(sources: SchemaSources) -> dict[str, str]:
    """File name → content of every document in `schemas/`."""
    envelopes: dict[str, type[BaseModel]] = {"Job": Job, "Result": Result, "ModelEvent": sources.model_event}
    return {
        "job.schema.json": _dump(Job.model_json_schema()),
        "result.schema.json": _dump(Result.model_json_schema()),
        "model-event.schema.json": _dump(sources.model_event.model_json_schema()),
        "asyncapi.json": _dump(_asyncapi(sources, _component_schemas(envelopes))),
    }


def render_docs(sources: SchemaSources) -> dict[str, str]:
    """File name → content of every generated page in `docs/`."""
    return {CONFIG_REFERENCE: _configuration_reference(sources)}


def _documents(directory: Path, docs: Path, sources: SchemaSources) -> dict[Path, str]:
    return ({directory / name: text for name, text in render_schemas(sources).items()}
            | {docs / name: text for name, text in render_docs(sources).items()})


def write_schemas(directory: Path, docs: Path, sources: SchemaSources) -> list[Path]:
    """Write every document (`schemas/` files into `directory`, pages into `docs`); returns the paths."""
    written = []
    for path, text in _documents(directory, docs, sources).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_schemas(directory: Path, docs: Path, sources: SchemaSources) -> list[Path]:
    """Documents whose checked-in content differs from what the code generates."""
    return [path for path, text in _documents(directory, docs, sources).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def _component_schemas(envelopes: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """Each envelope's JSON Schema and the models it nests, side by side (AsyncAPI's components/schemas)."""
    found: dict[str, Any] = {}
    for name, model in envelopes.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for part, definition in [*schema.pop("$defs", {}).items(), (name, schema)]:
            if found.setdefault(part, definition) != definition:
                raise ValueError(f"two different models are called {part!r}; the AsyncAPI document needs one")
    return found


# -- headers --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Header:
    """One Kafka header: what it means, who writes and who reads it, and JSON Schema keywords for its value."""

    meaning: str
    written_by: str
    read_by: str
    value: Mapping[str, Any]

    def schema(self) -> dict[str, Any]:
        return {"type": "string", **self.value, "x-written-by": self.written_by, "x-read-by": self.read_by,
                "description": f"{self.meaning} Written by: {self.written_by}. Read by: {self.read_by}."}


def _env(cls: type[BaseSettings], field: str) -> str:
    """The (first) environment variable of one setting."""
    return _env_names(cls, field, cls.model_fields[field])[0]


def _default(cls: type[BaseSettings], field: str) -> Any:
    return cls.model_fields[field].default


_MODEL_PREFIX = "AIAAS_<MODEL>_"
"""How the documents name a model service's settings (each model type's settings class has its own prefix)."""


def _model_env(field: str) -> str:
    """A WorkerSettings setting as every model service reads it."""
    if field not in WorkerSettings.model_fields:
        raise ValueError(f"WorkerSettings has no setting {field!r} (contract/schemas.py)")
    return _MODEL_PREFIX + field.upper()


def _headers_read() -> str:
    """How every consumer checks a record's headers (`headers.py`)."""
    limits = ", ".join(f"{name} {limit}" for name, limit in _TRACE_LIMITS.items())
    return (
        f"Every aiaas consumer of jobs (services, trainers) checks a record's headers before anything reads them: at "
        f"most `{_env(EnvelopeSettings, 'max_headers')}` headers (default {_default(EnvelopeSettings, 'max_headers')}) "
        f"holding at most `{_env(EnvelopeSettings, 'max_header_bytes')}` bytes (default "
        f"{_default(EnvelopeSettings, 'max_header_bytes')}); each W3C trace-context header and each `{_OURS}*` header "
        f"at most once and with a value (trace context: printable ASCII, at most {limits} bytes; `{_OURS}*`: UTF-8 "
        "without control characters). A record that breaks these is a dead letter (`InvalidHeaders`, with an error "
        "result when its job id is known). Other headers are passed over, whatever they hold."
    )


def _trace_headers() -> dict[str, _Header]:
    """The W3C trace-context headers aiaas reads (`headers.py`) and its producers write."""
    meanings = {
        "traceparent": "W3C trace context: the trace and the span of the record's producer "
                       "(`<version>-<trace id>-<parent id>-<flags>`); the consumer's span continues that trace.",
        "tracestate": "W3C trace context: vendor-specific trace state that goes with traceparent.",
        "baggage": "W3C baggage: key/value pairs that travel with the trace (OpenTelemetry's baggage propagator).",
    }
    writers = {
        "traceparent": "every aiaas producer, from the PRODUCER span of the record (the client on jobs; services on "
                       "results, retries and dead letters; trainers on events, dead letters and model events); "
                       "`aiaas models build|promote|rollback` announcements carry none; any publisher may set it",
        "tracestate": "as traceparent, when the trace has a trace state",
        "baggage": "OpenTelemetry's propagator, when the context it injects carries baggage (a job's baggage goes on "
                   "to the records written for it)",
    }
    readers = ("services and trainers, checked at admission (a malformed one makes the record a dead letter); "
               "services on the models topic; the client on results (its span continues the trace)")
    if set(meanings) != set(_TRACE_LIMITS):
        raise ValueError(f"headers.py reads trace headers {sorted(_TRACE_LIMITS)}; describe exactly those here")
    docs = {}
    for name, limit in _TRACE_LIMITS.items():
        value: dict[str, Any] = {"maxLength": limit}
        if name == "traceparent":
            value["pattern"] = f"^{_TRACEPARENT.pattern}$"
            value["examples"] = ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
        docs[name] = _Header(meanings[name], writers[name], readers, value)
    return docs


def _priority_header() -> dict[str, _Header]:
    """The header that says how soon a waiting job runs (`contract/priority.py`)."""
    return {PRIORITY_HEADER: _Header(
        f"The job's priority, a whole number from {LOWEST} to {HIGHEST} (absent: 0): among the jobs a service holds, "
        "higher ones go into its next batch first (a quarter of each batch goes to the oldest whatever their "
        "priority); between tenants, batches still take turns. Jobs of priority above 0 belong on the urgent lane.",
        "the aiaas client, from the job's `priority` when it is not 0; services, on a job's retry records (copied); "
        "any publisher may set it",
        "services, before decoding the job (not a priority: the job is a dead letter, `InvalidHeaders`)",
        {"pattern": f"^{PRIORITY_PATTERN}$", "examples": ["10"]})}


_NUMBER = {"pattern": "^[0-9]+$"}


def _origin_and_error_headers(sources: SchemaSources) -> dict[str, _Header]:
    """The dead-letter headers (`DLQ_HEADERS`), which retry records share in part, and the dropped-bytes ones."""
    on_retry = " (on retry records: the last attempt's)"
    errors_named = [getattr(errors, name).__name__ for name in ("InvalidJob", "InvalidHeaders", "ModelFailure")]
    docs = {
        ORIGIN_TOPIC: _Header(
            "The topic the job was first consumed from: the model's infer or train topic, or a tenant's (which "
            "names the job's tenant); kept from the first attempt on retry records. On a dead letter of a retry "
            "record whose own retry headers were refused: the retry topic.",
            "services (retry records, dead letters), trainers (dead letters)",
            "services on their retry topic (it must be one of their model's infer topics; it decides the job's "
            "tenant); operators on the dead-letter topic", {"maxLength": 249}),
        ORIGIN_PARTITION: _Header(
            "The partition of that first record.", "as aiaas.origin.topic",
            "services on their retry topic; operators", _NUMBER),
        ORIGIN_OFFSET: _Header(
            "The offset of that first record.", "as aiaas.origin.topic",
            "services on their retry topic; operators", _NUMBER),
        "aiaas.error.type": _Header(
            f"The error's class name, one of `aiaas.errors`{on_retry}.",
            "services (retry records, dead letters), trainers (dead letters)",
            "operators; aiaas itself does not read it", {"examples": errors_named}),
        "aiaas.error.message": _Header(
            f"What went wrong, for a person, cut at 1000 characters{on_retry}.",
            "services (retry records, dead letters), trainers (dead letters)",
            "operators; aiaas itself does not read it", {"maxLength": 1000}),
        "aiaas.error.retriable": _Header(
            "Whether trying the same job again may work (the error class's `retriable`).",
            "services and trainers (dead letters)", "operators; aiaas itself does not read it",
            {"enum": ["true", "false"]}),
        "aiaas.job.id": _Header(
            "The job's id; empty when it is not known (the record did not decode).",
            "services and trainers (dead letters)", "operators; aiaas itself does not read it",
            {"maxLength": 128}),
        "aiaas.attempts": _Header(
            "How many times the job was tried: the service's count (the first try plus its retries); a trainer "
            "writes 1 (its own count of starts is in the error message when it gives up).",
            "services and trainers (dead letters)", "operators; aiaas itself does not read it", _NUMBER),
        DLQ_DROPPED_HEADERS[0]: _Header(
            "The dead letter does not carry the original value (its value is empty): this is the value's size in "
            f"bytes. A service leaves it out when it is larger than `{_env(KafkaSettings, 'max_message_bytes')}` or "
            "the broker refused the full dead letter (a bare dead letter: headers only).",
            "services", "operators", _NUMBER),
        DLQ_DROPPED_HEADERS[1]: _Header(
            "The dead letter does not carry the original key (it has none): this is the key's size in bytes. A "
            "service leaves it out when it is longer than 1024 bytes or for a bare dead letter.",
            "services", "operators", _NUMBER),
        sources.attempt_header: _Header(
            "Which attempt of the job this record is: 2 for the first retry, then 3, ... A whole number.",
            "services (`RetryPolicy.retry_headers`)",
            "services on their retry topic (`RetryPolicy.state_of`; missing or out of range: a dead letter); "
            "ignored on infer topics, so a dead letter republished there as it is runs as a fresh first attempt",
            _NUMBER),
        sources.not_before_header: _Header(
            "When the attempt may run, Unix seconds with three decimals: the failure's time plus the backoff "
            f"(`{_model_env('retry_backoff_ms')}`, doubled per attempt, at most "
            f"`{_model_env('retry_backoff_max_ms')}`).",
            "services (`RetryPolicy.retry_headers`)",
            "services on their retry topic: the record is held back until then while infer jobs keep flowing; a "
            "value that is not finite or lies further ahead than the longest backoff allows makes it a dead letter",
            {"pattern": r"^[0-9]+\.[0-9]{3}$", "examples": ["1767225600.250"]}),
    }
    written = {*DLQ_HEADERS, *DLQ_DROPPED_HEADERS, *sources.retry_headers}
    if set(docs) != written:
        raise ValueError(f"headers written but not described: {sorted(written - set(docs))}; described but not "
                         f"written: {sorted(set(docs) - written)} (contract/schemas.py)")
    return docs


_HEADER_SCHEMA = "Header."
"""Each header's schema is `components/schemas/Header.<name>`, which the messages' headers refer to."""


def _headers_schema(headers: Mapping[str, _Header], required: Iterable[str] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {
        name: {"$ref": f"#/components/schemas/{_HEADER_SCHEMA}{name}"} for name in headers}}
    if required := sorted(required):
        schema["required"] = required
    return schema


# -- AsyncAPI -------------------------------------------------------------------------------------------------------

_Actor = Literal["client", "service", "trainer", "operator", "cli"]
_ACTORS: dict[str, str] = {
    "client": "A publisher of jobs and reader of results: the aiaas client (`AiaasClient`, `aiaas submit|train|"
              "results`, the FastStream subscriber) or any Kafka client that follows this contract.",
    "service": "A model type's service (`aiaas serve <model>`).",
    "trainer": "A model type's trainer of training jobs (`aiaas trainer <model>`).",
    "operator": "A person or tool inspecting dead letters; no aiaas process reads the dead-letter topic.",
    "cli": "`aiaas models build|promote|rollback`: registry changes made by hand.",
}


def _asyncapi(sources: SchemaSources, schemas: dict[str, Any]) -> dict[str, Any]:
    topics = ModelTopics.of("{model}", "{prefix}")
    tenant = ".{tenant}"  # `ModelTopics.tenant_*`: the shared topic's name, a dot, the tenant
    trace = _trace_headers()
    retry_and_dlq = _origin_and_error_headers(sources)
    job_key = {"type": "string", "pattern": JOB_ID_PATTERN, "description": "The job id (UTF-8)."}
    same_key = {"type": "string", "description": "The original record's key as it came (normally the job id)."}

    def message(name: str, title: str, summary: str, payload: Mapping[str, Any], headers: Mapping[str, Any],
                key: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"name": name, "title": title, "summary": summary, "payload": payload,
                               "headers": headers, **extra}
        if key is not None:
            msg["bindings"] = {"kafka": {"key": key, "bindingVersion": "0.5.0"}}
        return msg

    ref: Callable[[str], dict[str, str]] = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    jobs_headers = _headers_schema({**trace, **_priority_header()})
    training = set(_TRAINING_STATUSES)
    if not training <= set(get_args(ResultStatus)) or {"succeeded", "failed"} - TERMINAL_STATUSES:
        raise ValueError("the training statuses are no longer ResultStatus values (contract/schemas.py)")
    messages = {
        "Job": message(
            "Job", "Inference job", "A job for a model type's service (`kind` infer).", ref("Job"), jobs_headers,
            job_key, correlationId={"$ref": "#/components/correlationIds/jobId"},
            description=_headers_read() + " Retry headers (`aiaas.attempt`, ...) on an infer topic are ignored."),
        "TrainingJob": message(
            "TrainingJob", "Training job",
            "A job for a model type's trainer (`kind` train): hyper-parameters and data in `inputs` "
            "(docs/training.md).", ref("Job"), jobs_headers, job_key,
            correlationId={"$ref": "#/components/correlationIds/jobId"}, description=_headers_read()),
        "Result": message(
            "Result", "Inference result",
            "The one outcome of an inference job: `ok`, `error` or `expired`.", ref("Result"),
            _headers_schema(trace), job_key, correlationId={"$ref": "#/components/correlationIds/jobId"}),
        "Chunk": message(
            "Chunk", "Generation chunk",
            "Part of a generated answer (status `chunk`, the `llm` model type), sent before the job's final result: "
            "`chunk.text` is the text since the previous chunk, `chunk.seq` counts from 0 within one run of the "
            "job (`chunk.run`). A job run again streams from seq 0 under a new run; readers drop repeats and start "
            "the text over on a new run. The final `ok` result holds the whole text (`outputs.text`), "
            "`finish_reason` (" + ", ".join(f"`{r}`" for r in FINISH_REASONS) + ") and usage.",
            ref("Result"), _headers_schema(trace), job_key,
            correlationId={"$ref": "#/components/correlationIds/jobId"}),
        "CancelRequest": message(
            "CancelRequest", "Cancel request",
            "End this job's generation now: its final result says `cancelled`, with the text so far. Every replica "
            "of the model type's service reads it (a consumer group of its own each); a job is only cancelled from "
            "its own tenant's cancel topic.", {"type": "string", "format": "binary", "description": "Not read."},
            _headers_schema({}), job_key, contentType="application/octet-stream"),
        "TrainingEvent": message(
            "TrainingEvent", "Training event",
            "One event of a training job, in this order: " + ", ".join(f"`{s}`" for s in _TRAINING_STATUSES) + ".",
            ref("Result"), _headers_schema(trace), job_key, correlationId={"$ref": "#/components/correlationIds/jobId"},
            description="The Result envelope. `accepted`: outputs `attempt` (this start of the job, from 1). "
            "`running`: `progress` (epochs, loss, metric, eta), sent after each epoch, best effort. `succeeded`: "
            "outputs `version`, `aliases`, `metric.<name>` for each metric, `scored_on`, and `promotion` when the "
            "version was scored on the job's own data. `failed`: `error` (the job also has a dead letter)."),
        "RetryRecord": message(
            "RetryRecord", "Retry record",
            "A job whose failure is retriable, for its next attempt: the original record's value and key as they "
            "came, with the retry headers (and its `aiaas.priority`, when it had one).", ref("Job"),
            _headers_schema({**trace, **_priority_header(), **{n: retry_and_dlq[n] for n in sources.retry_headers}},
                            required=sources.retry_headers), same_key),
        "DeadLetter": message(
            "DeadLetter", "Dead letter",
            "A record that ended in failure: the original value and key (left out when too large, see "
            f"`{DLQ_DROPPED_HEADERS[0]}`) with headers saying where it came from and why it failed.",
            {"type": "string", "format": "binary",
             "description": "The original record's value, byte for byte (normally a msgpack job envelope); empty "
                            "when the record could not be read, when a service left it out "
                            f"(`{DLQ_DROPPED_HEADERS[0]}`), and on a trainer's bare dead letter."},
            _headers_schema({**{n: retry_and_dlq[n] for n in (*DLQ_HEADERS, *DLQ_DROPPED_HEADERS)}, **trace},
                            required=DLQ_HEADERS),
            {**same_key, "description": same_key["description"] + " None when the original had none or could not "
             f"be read, when a service left it out (`{DLQ_DROPPED_HEADERS[1]}`), and on a trainer's bare dead "
             "letter (headers only, after the broker refused the full one)."},
            contentType="application/octet-stream"),
        "ModelEvent": message(
            "ModelEvent", "Model registry event",
            "A model type's version was registered, promoted or rolled back; services reload when the alias they "
            "serve moved.", ref("ModelEvent"), _headers_schema(trace),
            {"type": "string", "description": "The model type's name (UTF-8), e.g. `vision`."}),
    }

    parameters = {
        "prefix": {"default": _default(KafkaSettings, "topic_prefix"),
                   "description": f"`{_env(KafkaSettings, 'topic_prefix')}`: the first part of every topic name."},
        "model": {"examples": [m.name for m in BUILT_IN],
                  "description": "A model type's name (`aiaas.model_types`; plug-ins add more), matching "
                                 f"`{Job.model_json_schema()['properties']['model']['pattern']}`."},
        "tenant": {"description": f"A tenant's name, matching `{TENANT_PATTERN}` (also its Kafka principal's name): "
                                  "Kafka ACLs let only that tenant write its infer and train topics and read its "
                                  "results topic (docs/security.md)."},
    }

    def channel(address: str | None, description: str, msgs: Sequence[str]) -> dict[str, Any]:
        found = set(re.findall(r"\{(\w+)\}", address or ""))
        return {"address": address, "description": description,
                "messages": {m[0].lower() + m[1:]: {"$ref": f"#/components/messages/{m}"} for m in msgs},
                **({"parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in sorted(found)}}
                   if found else {})}

    tenant_topic = "One tenant's {}: as `{}`, but Kafka ACLs let only that tenant {} it."
    results_note = ("Inference results and training events, keyed by job id; a reader drops duplicates by job id "
                    "(at-least-once delivery).")
    channels = {
        "infer": channel(topics.infer, "Inference jobs for one model type from publishers without a tenant. A "
                         "service consumes it and every tenant's infer topic (one pattern subscription) beside its "
                         "retry topic.", ["Job"]),
        "tenantInfer": channel(topics.infer + tenant, tenant_topic.format("inference jobs", "infer", "write")
                               + " A job's tenant is the topic's, never its `tenant` field.", ["Job"]),
        "urgent": channel(topics.urgent, "The urgent lane of the infer topic: jobs of priority above 0 (the aiaas "
                          "client puts them here). A service takes its jobs before the infer topics' whenever its "
                          "window has room, goes on fetching it while the infer topics are paused, and cuts its jobs "
                          "into the next batch first; at most three quarters of the window, so the infer topic always "
                          "moves.", ["Job"]),
        "tenantUrgent": channel(topics.urgent + tenant, tenant_topic.format("urgent jobs", "infer-urgent", "write")
                                + " Between tenants, batches still take turns.", ["Job"]),
        "train": channel(topics.train, "Training jobs for one model type's trainer, which consumes it and every "
                         "tenant's train topic (one pattern subscription), one job at a time.", ["TrainingJob"]),
        "tenantTrain": channel(topics.train + tenant, tenant_topic.format("training jobs", "train", "write")
                               + " A job naming another tenant fails.", ["TrainingJob"]),
        "results": channel(topics.results, results_note + " A service reads its tail at start to remember recent "
                           "outcomes (answering a repeated job id without running it).",
                           ["Result", "Chunk", "TrainingEvent"]),
        "tenantResults": channel(topics.results + tenant, tenant_topic.format("results", "results", "read")
                                 + " Results and events of the jobs that came from the tenant's infer and train "
                                 "topics.", ["Result", "Chunk", "TrainingEvent"]),
        "replyTo": channel(None, "A job's `reply_to` topic, when the operator's pattern "
                           f"(`{_model_env('reply_to_pattern')}`, default "
                           f"`{DEFAULT_REPLY_TO_PATTERN}` where `{{results}}` is the job's results topic) allows it "
                           "and the topic exists. Infer (and urgent), retry, train, dead-letter and registry topics "
                           "and other model types' topics are refused whatever the pattern says; a refused job gets an "
                           "error "
                           "result on its results topic and a dead letter.", ["Result", "Chunk", "TrainingEvent"]),
        "cancel": channel(topics.cancel, "Cancel requests for a streaming model type's jobs (`llm`) from "
                          "publishers without a tenant.", ["CancelRequest"]),
        "tenantCancel": channel(topics.cancel + tenant, tenant_topic.format("cancel requests", "cancel", "write")
                                + " A request here ends only that tenant's jobs.", ["CancelRequest"]),
        "retry": channel(topics.retry, "A service's retriable failures waiting for their next attempt; only the "
                         "service writes and reads it.", ["RetryRecord"]),
        "dlq": channel(dlq_topic("{prefix}"), "Dead letters of every model type's services and trainers.",
                       ["DeadLetter"]),
        "models": channel(models_topic("{prefix}"), "Registry changes of every model type. Services read it from "
                          "its end without a consumer group (every replica sees every event).", ["ModelEvent"]),
    }

    flows: list[tuple[str, Literal["send", "receive"], _Actor, Sequence[str]]] = [
        ("infer", "send", "client", ["Job"]), ("infer", "receive", "service", ["Job"]),
        ("tenantInfer", "send", "client", ["Job"]), ("tenantInfer", "receive", "service", ["Job"]),
        ("urgent", "send", "client", ["Job"]), ("urgent", "receive", "service", ["Job"]),
        ("tenantUrgent", "send", "client", ["Job"]), ("tenantUrgent", "receive", "service", ["Job"]),
        ("train", "send", "client", ["TrainingJob"]), ("train", "receive", "trainer", ["TrainingJob"]),
        ("tenantTrain", "send", "client", ["TrainingJob"]), ("tenantTrain", "receive", "trainer", ["TrainingJob"]),
    ]
    for results in ("results", "tenantResults", "replyTo"):
        flows += [(results, "send", "service", ["Result", "Chunk"]), (results, "send", "trainer", ["TrainingEvent"]),
                  (results, "receive", "client", ["Result", "Chunk", "TrainingEvent"])]
    for cancel in ("cancel", "tenantCancel"):
        flows += [(cancel, "send", "client", ["CancelRequest"]), (cancel, "receive", "service", ["CancelRequest"])]
    flows += [
        ("results", "receive", "service", ["Result"]), ("tenantResults", "receive", "service", ["Result"]),
        ("retry", "send", "service", ["RetryRecord"]), ("retry", "receive", "service", ["RetryRecord"]),
        ("dlq", "send", "service", ["DeadLetter"]), ("dlq", "send", "trainer", ["DeadLetter"]),
        ("dlq", "receive", "operator", ["DeadLetter"]),
        ("models", "send", "trainer", ["ModelEvent"]), ("models", "send", "cli", ["ModelEvent"]),
        ("models", "receive", "service", ["ModelEvent"]),
    ]
    operations = {
        f"{actor}{action.title()}{name[0].upper()}{name[1:]}": {
            "action": action, "channel": {"$ref": f"#/channels/{name}"},
            "tags": [{"$ref": f"#/components/tags/{actor}"}],
            "messages": [{"$ref": f"#/channels/{name}/messages/{m[0].lower()}{m[1:]}"} for m in msgs],
        }
        for name, action, actor, msgs in flows
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "aiaas", "version": "1",
            "description": "AI models served over Kafka: every channel aiaas reads or writes, as seen by each of its "
            "processes (the operations' tags say which). Payloads are msgpack maps (binary fields as msgpack bin) "
            "that follow the schemas. Keys are job ids; retry records and dead letters keep the original record's "
            "key, model events have the model type's name. Header values are UTF-8 text. Generated by `aiaas "
            "schemas write` from the code; do not edit by hand.",
        },
        "defaultContentType": "application/msgpack",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas | {f"{_HEADER_SCHEMA}{name}": header.schema()
                                  for name, header in {**trace, **_priority_header(), **retry_and_dlq}.items()},
            "messages": messages,
            "parameters": parameters,
            "correlationIds": {"jobId": {"location": "$message.payload#/job_id",
                                         "description": "A job and its results (and training events) share job_id."}},
            "tags": {actor: {"name": actor, "description": text} for actor, text in _ACTORS.items()},
        },
    }


# -- configuration reference ----------------------------------------------------------------------------------------

def _env_names(cls: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    """The environment variables a setting is read from, first match first (pydantic-settings' rules)."""
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice if isinstance(choice, str) else str(choice.path[0]) for choice in alias.choices]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    return [(str(cls.model_config.get("env_prefix", "")) + name).upper()]


_TYPE_NAMES: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path",
                               SecretStr: "secret string"}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in get_args(annotation) if arg is not type(None))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(field: FieldInfo) -> str:
    """`ge`/`gt`/`le`/`lt` bounds and a pattern, in words."""
    words = []
    for item in field.metadata:
        for key, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, key, None)
            if isinstance(item, annotated_types.BaseMetadata) and bound is not None:
                words.append(f"{sign} {bound}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            words.append(f"matches `{pattern}`")
    return ", ".join(words)


def _default_text(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "computed at start (see description)"
    value = field.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    text = f"`{value}`"
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{text} ({value // size} {unit})"
    return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _docstring(cls: type) -> str:
    """The class docstring, each paragraph on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return "\n\n".join(" ".join(part.split()) for part in doc.split("\n\n") if part.strip())


def _row(cls: type[BaseSettings], name: str, field: FieldInfo, prefix: str | None = None,
         extra: str | None = None) -> str:
    names = _env_names(cls, name, field)
    if prefix is not None and field.validation_alias is None and field.alias is None:
        names = [prefix + name.upper()]
    variable = " or ".join(f"`{n}`" for n in names) + (" (first set wins)" if len(names) > 1 else "")
    kind = _type_name(field.annotation)
    if bounds := _constraints(field):
        kind += f", {bounds}"
    cells = [variable, kind, _default_text(name, field), *([extra] if extra is not None else []),
             field.description or ""]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(cls: type[BaseSettings], rows: Iterable[str], extra: str | None = None) -> list[str]:
    head = ["Variable", "Type", "Default", *([extra] if extra else []), "Description"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]


def _differs(field: FieldInfo, base: FieldInfo) -> str:
    """How a model type's setting differs from WorkerSettings' (empty: it does not)."""
    what = []
    if field.annotation != base.annotation or repr(field.metadata) != repr(base.metadata):
        what.append(f"type (WorkerSettings: {_type_name(base.annotation)})")
    if field.default != base.default or field.default_factory is not base.default_factory:
        what.append(f"default (WorkerSettings: {_default_text('', base)})")
    if not what and field.description != base.description:
        what.append("description only")
    return "; ".join(what)


def _configuration_reference(sources: SchemaSources) -> str:
    shared = [cls for name in settings.__all__
              if isinstance(cls := getattr(settings, name), type) and issubclass(cls, BaseSettings)]
    models = [(model.name, cast("type[BaseSettings]", model.settings())) for model in BUILT_IN]
    prefixes = ", ".join(f"`{cls.model_config.get('env_prefix', '')}`" for _, cls in models)
    lines = [
        "<!-- Generated by `aiaas schemas write` from the settings classes: do not edit by hand "
        "(`aiaas schemas check` and tests/unit/test_schemas.py fail when it differs from the code). -->",
        "",
        "# Configuration reference",
        "",
        "Every setting of every settings class, as the environment variable it is read from (names are not case "
        "sensitive). [configuration.md](configuration.md) explains how they fit together.",
    ]
    for cls in [*shared, *(cls for _, cls in models), sources.trainer_settings]:
        own_prefix = str(cls.model_config.get("env_prefix", ""))
        if cls is WorkerSettings:
            lines += ["", f"## {cls.__name__} (`{_MODEL_PREFIX}`)", "", _docstring(cls), "",
                      f"Every model type's service reads these with its own prefix ({prefixes}; a plug-in model "
                      "type's settings class says its own), so `max_batch` of the vision service is "
                      "`AIAAS_VISION_MAX_BATCH`. What a model type changes or adds is in its own section below. "
                      f"(`{own_prefix}` is the class's own prefix, which no service reads.)", ""]
            lines += _table(cls, (_row(cls, n, f, prefix=_MODEL_PREFIX) for n, f in cls.model_fields.items()))
            continue
        if issubclass(cls, WorkerSettings):
            base = WorkerSettings.model_fields
            changed = {n: f for n, f in cls.model_fields.items() if n not in base or _differs(f, base[n])}
            lines += ["", f"## {cls.__name__} (`{own_prefix}`)", "", _docstring(cls), "",
                      f"Every WorkerSettings setting, as `{own_prefix}<NAME>`; these are the ones this model type "
                      "adds or changes:", ""]
            lines += _table(cls, (_row(cls, n, f, extra="new" if n not in base else _differs(f, base[n]))
                                  for n, f in changed.items()), extra="vs. WorkerSettings")
            continue
        title = f"## {cls.__name__}" + (f" (`{own_prefix}`)" if own_prefix else "")
        lines += ["", title, "", _docstring(cls), ""]
        lines += _table(cls, (_row(cls, n, f) for n, f in cls.model_fields.items()))
    return "\n".join(lines) + "\n"
