"""Settings: the only place that reads the environment.

Every class here is a pydantic-settings class with its own prefix, so a deployment can be
configured with environment variables alone (see the README's "Configure a real Kafka
cluster" section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KafkaSettings", "HomeSettings", "TracingSettings", "WorkerSettings"]


class KafkaSettings(BaseSettings):
    """How every aiaas process (services, client, CLI) reaches Kafka. Prefix `AIAAS_KAFKA_`."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    topic_prefix: str = Field("aiaas", description="First part of every topic name: <prefix>.<model>.infer.")
    partitions: int = Field(3, ge=1, description="Partitions of topics that aiaas creates.")
    replication_factor: int = Field(1, ge=1, description="Replication of topics that aiaas creates.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: str | None = Field(None, description="SASL password.")
    ssl_cafile: str | None = Field(None, description="CA bundle used to verify the brokers (SSL/SASL_SSL).")
    request_timeout_ms: int = Field(30_000, description="Kafka request timeout.")
    max_message_bytes: int = Field(
        4 * 1024 * 1024, description="Largest job or result message aiaas accepts or sends (bytes)."
    )

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
                "sasl_plain_password": self.sasl_password,
            }
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        return kwargs


    def faststream_security(self) -> object | None:
        """The same connection security as a FastStream `security=` object (None for PLAINTEXT)."""
        from faststream import security as fs

        if self.security_protocol == "PLAINTEXT":
            return None
        ssl_context = self.connection_kwargs().get("ssl_context")
        use_ssl = self.security_protocol.endswith("SSL")
        if self.security_protocol == "SSL":
            return fs.BaseSecurity(ssl_context=ssl_context, use_ssl=True)
        cls = {"PLAIN": fs.SASLPlaintext, "SCRAM-SHA-256": fs.SASLScram256, "SCRAM-SHA-512": fs.SASLScram512}[
            self.sasl_mechanism or "PLAIN"
        ]
        return cls(self.sasl_username or "", self.sasl_password or "", ssl_context=ssl_context, use_ssl=use_ssl)


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

    @property
    def use_otlp(self) -> bool:
        """True when the standard variables ask for an OTLP exporter."""
        return self.traces_exporter == "otlp" or (self.traces_exporter is None and bool(self.otlp_endpoint))


class WorkerSettings(BaseSettings):
    """Batching and limits of one model service. Each service subclasses it with its own prefix."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_WORKER_", extra="ignore")

    max_batch: int = Field(64, ge=1, le=4096, description="Most jobs in one model call.")
    max_wait_ms: int = Field(
        2, ge=0,
        description="When the model is free and fewer than max_batch jobs wait, how long a batch may grow first; "
        "it never waits to fill.",
    )
    max_in_flight: int = Field(
        256, ge=1,
        description="Most jobs taken from Kafka and not yet answered; at this bound the partitions are paused.",
    )
    group_id: str | None = Field(None, description="Consumer group; default `<prefix>.<model>`.")
    graceful_timeout_s: float = Field(30.0, description="On SIGTERM, how long in-flight work may take to drain.")
    model_version: str = Field("production", description="Registry version or alias the service serves.")
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="ONNX Runtime provider: CUDA when available (auto), or forced."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: its default).")
