"""Settings: the only place that reads the environment.

Every class here is a pydantic-settings class with its own prefix, so a deployment can be
configured with environment variables alone (docs/configuration.md).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import ssl

__all__ = ["ModelCalls", "KafkaSettings", "EnvelopeSettings", "HomeSettings", "MetricsEndpointSettings",
           "TracingSettings", "WorkerSettings"]

ModelCalls = Literal["auto", "thread", "event-loop"]
"""Where a service runs its model's batch calls: on a model thread, on the event loop, or `auto` (the worker's
`calls_on_event_loop` says which)."""


class KafkaSettings(BaseSettings):
    """How every aiaas process (services, client, CLI) reaches Kafka. Prefix `AIAAS_KAFKA_`."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    topic_prefix: str = Field("aiaas", description="First part of every topic name: <prefix>.<model>.infer.")
    tenant: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description="The tenant a client publishes as (with SASL: its user name): jobs go to "
        "`<prefix>.<model>.infer.<tenant>` (training jobs to `.train.<tenant>`) and results are read from "
        "`<prefix>.<model>.results.<tenant>`, topics "
        "that Kafka ACLs let only this tenant use (docs/security.md). Unset: the shared topics.",
    )
    partitions: int = Field(3, ge=1, description="Partitions of topics that aiaas creates.")
    replication_factor: int = Field(1, ge=1, description="Replication of topics that aiaas creates.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="Kafka security protocol: SASL_* authenticates with a user name and password, *SSL encrypts "
        "with TLS (SASL_SSL does both).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_* (default PLAIN)."
    )
    sasl_username: str | None = Field(None, description="SASL user name (required with SASL_*).")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (required with SASL_*; kept out of reprs and logs)."
    )
    ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) used to verify the brokers (SSL/SASL_SSL); default: the system CAs."
    )
    ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM, may hold the chain and the key) for brokers that require "
        "mutual TLS (SSL/SASL_SSL)."
    )
    ssl_keyfile: str | None = Field(None, description="Private key (PEM) of ssl_certfile, when it is a separate file.")
    ssl_password: SecretStr | None = Field(None, description="Password of an encrypted ssl_keyfile.")
    request_timeout_ms: int = Field(30_000, description="Kafka request timeout.")
    max_message_bytes: int = Field(
        4 * 1024 * 1024, description="Largest job or result message aiaas accepts or sends (bytes)."
    )

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        """Refuse half-made security settings at start instead of failing later in a handshake."""
        sasl = self.security_protocol.startswith("SASL")
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"AIAAS_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs AIAAS_KAFKA_SASL_USERNAME "
                "and AIAAS_KAFKA_SASL_PASSWORD"
            )
        if not sasl and (self.sasl_username or self.sasl_mechanism):
            raise ValueError(
                "SASL settings are set but AIAAS_KAFKA_SECURITY_PROTOCOL is "
                f"{self.security_protocol}: use SASL_PLAINTEXT or SASL_SSL to authenticate"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("AIAAS_KAFKA_SSL_KEYFILE needs AIAAS_KAFKA_SSL_CERTFILE (the client certificate)")
        return self

    @property
    def max_batch_bytes(self) -> int:
        """`max_message_bytes` and 64 KiB for the record batch and request around it: the most a producer request
        and one partition's fetch must hold to carry the largest message aiaas accepts."""
        return self.max_message_bytes + 64 * 1024

    def connection_kwargs(self) -> dict[str, object]:
        """Keyword arguments shared by every aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism or "PLAIN",
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            }
        if self.security_protocol.endswith("SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def librdkafka_config(self, client_id: str) -> dict[str, object]:
        """The same connection as `connection_kwargs`, in librdkafka's (confluent-kafka's) configuration names."""
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
            "client.id": client_id,
            "socket.timeout.ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            config |= {
                "sasl.mechanism": self.sasl_mechanism or "PLAIN",
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else "",
            }
        if self.security_protocol.endswith("SSL"):
            config["ssl.ca.location"] = self.ssl_cafile or "probe"  # "probe": the system's CA bundle
            if self.ssl_certfile:
                # A certificate file may hold its key too (ssl_certfile); OpenSSL finds it there.
                config["ssl.certificate.location"] = self.ssl_certfile
                config["ssl.key.location"] = self.ssl_keyfile or self.ssl_certfile
            if self.ssl_password:
                config["ssl.key.password"] = self.ssl_password.get_secret_value()
        return config

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for SSL/SASL_SSL: verifies the brokers (ssl_cafile or the system CAs), with the
        client certificate when one is configured."""
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
            password=self.ssl_password.get_secret_value() if self.ssl_password else None,
        )


    def faststream_security(self) -> object | None:
        """The same connection security as a FastStream `security=` object (None for PLAINTEXT)."""
        from faststream import security as fs

        if self.security_protocol == "PLAINTEXT":
            return None
        ssl_context = cast("ssl.SSLContext | None", self.connection_kwargs().get("ssl_context"))
        use_ssl = self.security_protocol.endswith("SSL")
        if self.security_protocol == "SSL":
            return fs.BaseSecurity(ssl_context=ssl_context, use_ssl=True)
        cls = {"PLAIN": fs.SASLPlaintext, "SCRAM-SHA-256": fs.SASLScram256, "SCRAM-SHA-512": fs.SASLScram512}[
            self.sasl_mechanism or "PLAIN"
        ]
        password = self.sasl_password.get_secret_value() if self.sasl_password else ""
        return cls(self.sasl_username or "", password, ssl_context=ssl_context, use_ssl=use_ssl)


class HomeSettings(BaseSettings):
    """Where local state lives (model registry, local span store, logs). Prefix `AIAAS_`."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_", extra="ignore")

    home: Path = Field(Path(".aiaas"), description="Root folder for local state.")

    @property
    def registry_dir(self) -> Path:
        """The embedded model registry."""
        return self.home / "registry"

    @property
    def span_dir(self) -> Path:
        """The local span store that `aiaas trace` reads."""
        return self.home / "spans"


class TracingSettings(BaseSettings):
    """Trace export, from the standard OpenTelemetry variables (no prefix)."""

    model_config = SettingsConfigDict(extra="ignore")

    traces_exporter: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"),
        description="`otlp` to export with OTLP, `none` to switch tracing export off.",
    )
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP endpoint; when set, spans go there instead of the local store.",
    )
    query_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AIAAS_TRACE_QUERY_URL"),
        description="Jaeger's query address (`http://127.0.0.1:16686`): `aiaas trace` reads a job's spans there "
        "instead of the local store (`--jaeger` sets it for one call).",
    )

    @property
    def use_otlp(self) -> bool:
        """True when the standard variables ask for an OTLP exporter."""
        return self.traces_exporter == "otlp" or (self.traces_exporter is None and bool(self.otlp_endpoint))


class EnvelopeSettings(BaseSettings):
    """Structural limits of a msgpack envelope (job or result), checked while it is decoded. Prefix `AIAAS_ENVELOPE_`.

    With AIAAS_KAFKA_MAX_MESSAGE_BYTES they keep a hostile message cheap to refuse: decoding one never
    builds more than `max_values` objects, whatever its headers claim. (Nesting is capped by msgpack
    itself at 1024 levels; the contracts accept 4.)
    """

    model_config = SettingsConfigDict(env_prefix="AIAAS_ENVELOPE_", extra="ignore")

    max_container_items: int = Field(
        4096, ge=64, le=1 << 20,
        description="Most elements of one msgpack array or entries of one map; a bigger header is refused before "
        "anything is allocated.",
    )
    max_values: int = Field(
        16_384, ge=1024,
        description="Most values in one envelope (every array element, map entry and container counts); decoding "
        "stops as soon as there are more. Keep it at least max_container_items.",
    )
    max_headers: int = Field(
        64, ge=8, le=10_000,
        description="Most Kafka headers a job record may carry; a record with more is a dead letter (InvalidHeaders).",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024,
        description="Most bytes (keys and values) all of a job record's headers may hold; more is a dead letter.",
    )



class MetricsEndpointSettings(BaseSettings):
    """Where a service or trainer serves `/metrics`, `/healthz` and `/readyz` (docs/observe.md). The class that
    inherits it gives the prefix (e.g. `AIAAS_VISION_`, `AIAAS_TRAINER_`)."""

    metrics_port: int = Field(
        0, ge=-1, le=65535,
        description="Port of the metrics and health endpoint; 0: a free port, announced in a target file under "
        "`<AIAAS_HOME>/metrics/targets/` that Prometheus and `aiaas top` read; -1: no endpoint and no metrics "
        "kept. Set a fixed one in a container.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the endpoint binds to (`0.0.0.0` in a container, for the probes)."
    )


class WorkerSettings(MetricsEndpointSettings):
    """Batching and limits of one model service. Each service subclasses it with its own prefix."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_WORKER_", extra="ignore")

    max_batch: int = Field(64, ge=1, le=4096, description="Most jobs in one model call.")
    max_wait_ms: int = Field(
        2, ge=0,
        description="When the model is free and fewer than max_batch jobs wait, how long a batch may grow first; "
        "it never waits to fill.",
    )
    latency_budget_ms: float | None = Field(
        None, gt=0, le=600_000,
        description="A job's time in the service, from being taken from Kafka to its result being ready, to aim "
        "for: batches are capped so a call takes at most half of it (from the service's recent calls) while the "
        "oldest waiting job can still make it (docs/configuration.md, \"Latency budget\"). Unset: up to max_batch. "
        "Not the LLM's.",
    )
    max_in_flight: int | None = Field(
        None, ge=1,
        description="Most jobs taken from Kafka and not yet answered; at this bound the partitions are paused. "
        "Default: room for four batches per model instance, within 256..4,096 (`in_flight_bound`).",
    )
    max_in_flight_bytes: int = Field(
        128 * 1024 * 1024, ge=1,
        description="Most bytes (keys and values) of jobs taken from Kafka and not yet answered; at this bound the "
        "partitions are paused as at max_in_flight, whichever comes first. A job larger than this is still taken "
        "when nothing else is in flight.",
    )
    group_id: str | None = Field(None, description="Consumer group; default `<prefix>.<model>`.")
    graceful_timeout_s: float = Field(30.0, description="On SIGTERM, how long in-flight work may take to drain.")
    session_timeout_ms: int = Field(
        10_000, ge=1,
        description="Consumer group session timeout: a replica whose heartbeats stop this long (a frozen or cut-off "
        "process) is dropped from the group and its partitions move to the others. The broker bounds it "
        "(group.min.session.timeout.ms and group.max.session.timeout.ms, 6 s and 30 min by default).",
    )
    heartbeat_interval_ms: int = Field(
        3_000, ge=1,
        description="How often the consumer heartbeats to its group; below session_timeout_ms (a third of it, as "
        "Kafka advises).",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1,
        description="Longest time between two fetches of the service's consumer before it leaves the group by "
        "itself, so a stuck replica gives its partitions back even while its heartbeats go on.",
    )
    fetch_max_wait_ms: int = Field(
        50, ge=1, le=500,
        description="Longest the broker holds a fetch of the service's consumer that finds nothing new. A "
        "partition ready for more (a tenant's turn again) waits for the fetch in flight, so this bounds that wait; "
        "each idle replica sends about 1000/fetch_max_wait_ms fetches a second (Kafka's default is 500).",
    )
    busy_fetch_wait_ms: int = Field(
        10, ge=0, le=500,
        description="While every model instance has a batch on its model thread (several instances, or a GPU: not "
        "calls on the event loop), jobs run in the order they came (one tenant, no urgent or priority job for 5 s) "
        "and no latency budget is set, the longest the broker holds a fetch of the service's consumer to gather "
        "about a batch of jobs instead of answering with the first one, and never longer than a batch takes: fewer, "
        "fuller fetches at partial load, for jobs that would wait for an instance anyway. 0: every fetch answers "
        "with the first job (generation services never pace).",
    )
    commit_interval_ms: int = Field(
        100, ge=0, le=10_000,
        description="At-least-once delivery: the shortest time between two offset commits of the service's consumer; "
        "the offsets of every batch that finished in between go in one commit request. The jobs of a replica that "
        "dies are run again by its partitions' next owner from its last commit: up to this interval and one commit's "
        "round trip more of them than with a commit per batch. A drain or a rebalance commits at once. 0: a commit "
        "per batch (at a partial load, about one per job). Exactly-once commits in each batch's transaction instead.",
    )
    model_version: str = Field("production", description="Registry version or alias the service serves.")
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="ONNX Runtime provider: CUDA when available (auto), or forced."
    )
    intra_op_threads: int = Field(
        0, ge=0,
        description="ONNX Runtime intra-op threads of each model instance (0: its default with one instance; with "
        "several, the cores shared out among them).",
    )
    model_instances: int = Field(
        1, ge=1, le=64,
        description="Batches in the model at once, each on its own model thread (Triton's instance count). On a "
        "CPU, several instances with a few intra-op threads each can beat one with them all: an operator's threads "
        "wait for each other at its end, and any other work on the cores stalls them all. Each batch runs on fewer "
        "threads, so a job alone is a little slower, but under load the queue stays shorter (measured on text by "
        "bench/ab.py; tables in bench/results/). Results are still published in the order the batches were cut. For "
        "ONNX Runtime sessions; PyTorch's callers share one thread pool.",
    )
    model_calls: ModelCalls = Field(
        "thread",
        description="Where the model's batch calls run: `thread` (a model thread per instance: fetching and "
        "publishing go on during a call), `event-loop` (no hand-over to a thread and back: for short calls on a "
        "busy CPU that costs less than it wins; several instances then run one after another), or `auto` (on the event "
        "loop when one instance computes on the CPU, else on threads). Each service's default is measured "
        "(bench/ab.py).",
    )
    gc_young_threshold: int = Field(
        20_000, ge=0,
        description="Net container allocations between two young-generation garbage collections (Python's default: "
        "700; 0 keeps it). The objects alive once the model is loaded are frozen out of collection "
        "(`serving/heap.py`).",
    )
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="`at-least-once`: commit offsets after the broker acknowledged every outcome (a crash may "
        "publish a result twice; readers drop duplicates by job id). `exactly-once`: results, dead letters, retries "
        "and the consumed offsets go out in one Kafka transaction per batch, so the results topic holds one result "
        "per job even under kill -9 (readers must use read_committed, which the aiaas client does).",
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable name of this replica (default: the host name). In exactly-once mode the transactional id "
        "is `<group>.<instance_id>`: a restarted replica with the same id fences its predecessor. Give each replica "
        "its own (a StatefulSet ordinal, say): a second live process on one host with the id set here refuses to "
        "start. Left unset, the replicas of one host are numbered (`<group>.<host>`, `<group>.<host>.1`, ...).",
    )
    max_attempts: int = Field(
        3, ge=1, le=100,
        description="How many times a job whose failure is retriable (e.g. ModelFailure) is tried before it ends "
        "with an error result and a dead letter.",
    )
    retry_backoff_ms: int = Field(
        200, ge=0, description="Delay before the 2nd attempt; each later attempt waits twice as long as the one before."
    )
    retry_backoff_max_ms: int = Field(10_000, ge=0, description="The longest delay between two attempts.")
    max_in_flight_per_tenant: int | None = Field(
        None, ge=1,
        description="Most of the in-flight window one tenant's jobs may hold (a tenant is the topic a job came from: "
        "`<prefix>.<model>.infer.<tenant>`), while two tenants or more have had jobs taken in the last 5 s (a tenant "
        "alone may use the whole window); at this bound that tenant's records wait, prefetched, while the others' are "
        "still fetched and taken first, as they arrive, and batches take from each tenant in turn. Default: the window "
        "less one batch, and at least one batch.",
    )
    reply_to_pattern: str | None = Field(
        None,
        description="Topics a job's `reply_to` may name: a regular expression matched in full, where `{results}` "
        "stands for the job's results topic (the tenant's, for a tenant's job). Default: `{results}` and "
        "`{results}.<name>`. Infer, retry, train, dead-letter and registry topics and other model types' topics are "
        "refused whatever it says; a job whose reply_to is refused gets an error result on its results topic.",
    )
    idempotency_window: int = Field(
        20_000, ge=0,
        description="How many recent job outcomes the service remembers (seeded at start from the tail of the results "
        "topic): a job id seen again is answered with the same outcome, without running the model. 0 switches it off.",
    )
    outcome_memory_bytes: int = Field(
        64 * 1024 * 1024, ge=0,
        description="Most bytes of remembered outcomes (encoded results plus a few hundred bytes each): the oldest "
        "are forgotten past it or past idempotency_window, whichever comes first. An outcome larger than this is not "
        "remembered. 0 remembers nothing.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> WorkerSettings:
        """Refuse a heartbeat interval that would let the session expire between two heartbeats."""
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below session_timeout_ms "
                             f"({self.session_timeout_ms})")
        return self

    def in_flight_bound(self) -> int:
        """The in-flight window: `max_in_flight`, or by default 4 × max_batch × model_instances within 256..4,096;
        never less than one batch. One window must hold the batch in the model, the next one being cut and the
        results still being published, or the consumer stalls between batches (measured on recsys by bench/ab.py;
        tables in bench/results/). The cap bounds the memory of the default."""
        wanted = self.max_in_flight or min(4096, max(256, 4 * self.max_batch * self.model_instances))
        return max(wanted, self.max_batch)

    def session_threads(self) -> int:
        """Intra-op threads for each instance's ONNX Runtime session: `intra_op_threads` when set; with several
        instances, the cores shared out among them; else 0 (ONNX Runtime's default: one per core)."""
        if self.intra_op_threads or self.model_instances == 1:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.model_instances)
