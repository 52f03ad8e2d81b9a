"""Kafka client quotas per tenant: how fast a tenant's clients may produce and fetch, enforced by the broker
(`aiaas acl apply --tenants alice --producer-byte-rate 5242880`).

The service shares its in-flight window and its batches fairly between tenants (docs/security.md, "Fair share"),
but a tenant that publishes as fast as its producer goes also takes the broker's request threads and cores from
everyone else's publishes and fetches before any job reaches the service. Kafka's own answer is a quota on the
principal: past `producer_byte_rate` bytes/s (or `consumer_byte_rate`, or `request_percentage` of one request
thread's time, I/O and network threads together) the broker answers that client with a throttle time and mutes its
connection for that long (KIP-219), so its next requests wait. Every connection of the user counts against one
quota per broker. A quota above what the service drains still lets a tenant build a backlog; it only stops the
publishing itself from crowding out the others.

Quota entities: `user` (a SASL principal: a tenant, `aiaas acl apply`) or `client-id` (the client's `client.id`;
on a broker without authentication every client is `User:ANONYMOUS`, so only the client id tells tenants apart
there, as in bench/tenant_flood.py).

Why requests built here: neither aiokafka's admin client nor confluent-kafka's (librdkafka has no
AlterClientQuotas) can set a quota, and Kafka's `kafka-configs.sh` needs a JVM and the broker's jars. Kafka's
AlterClientQuotas request (API key 49, version 0, since Kafka 2.6) is two short arrays, defined below with
aiokafka's own protocol types and sent over its admin client's connection; aiokafka already ships the describe
side (DescribeClientQuotas). `aiaas acl print` writes the same quotas as `kafka-configs.sh` commands.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String

from aiaas.errors import AclRefused
from aiaas.kafka.acl import refusal_message
from aiaas.settings import KafkaSettings

__all__ = ["Entity", "TenantQuota", "set_quotas", "describe_quota", "kafka_configs_commands"]

Entity = Literal["user", "client-id"]
_MATCH_EXACT = 0  # DescribeClientQuotas: match the entity name exactly
_LONG_MAX = 2**63 - 1  # Kafka stores the byte rates as a Java long


@dataclass(frozen=True)
class TenantQuota:
    """A client quota: each field Kafka's quota key of the same name; None leaves that key as it is."""

    producer_byte_rate: int | None = None  # bytes/s a principal's producers may write, on each broker
    consumer_byte_rate: int | None = None  # bytes/s its consumers may fetch, on each broker
    request_percentage: float | None = None  # % of one request thread's time (I/O and network), on each broker

    def __post_init__(self) -> None:
        for key, value in self.values().items():
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{key} must be a positive number, not {value!r}")
            if key.endswith("_byte_rate") and (value != int(value) or value > _LONG_MAX):
                raise ValueError(f"{key} must be a whole number of bytes per second, not {value!r}")

    def values(self) -> dict[str, float]:
        """The keys this quota sets, with their values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def config_string(self) -> str:
        """The keys as `kafka-configs.sh --add-config` takes them: `producer_byte_rate=5242880,request_percentage=5`."""
        return ",".join(f"{key}={value:.0f}" if float(value).is_integer() else f"{key}={value!r}"
                        for key, value in self.values().items())

    def __bool__(self) -> bool:
        return bool(self.values())


class _AlterClientQuotasResponse_v0(Response):  # type: ignore[misc]  # aiokafka's protocol is untyped
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("entries", Array(
            ("error_code", Int16),
            ("error_message", String("utf-8")),
            ("entity", Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))),
        )),
    )


class _AlterClientQuotasRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = _AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        ("entries", Array(
            ("entity", Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))),
            ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean))),
        )),
        ("validate_only", Boolean),
    )


class _AlterClientQuotasRequest(Request[_AlterClientQuotasRequest_v0]):  # type: ignore[misc]
    API_KEY = 49

    def __init__(self, entries: list[tuple[list[tuple[str, str]], list[tuple[str, float, bool]]]]) -> None:
        self._entries = entries

    def build(self, request_struct_class: type[_AlterClientQuotasRequest_v0]) -> _AlterClientQuotasRequest_v0:
        return request_struct_class(self._entries, False)


async def set_quotas(settings: KafkaSettings, entity: Entity, names: list[str],
                     values: Mapping[str, float | None]) -> None:
    """Set the quota keys in `values` for each entity `names` of type `entity` (None: remove that key).

    Raises AclRefused, naming Kafka's error and what to do, when the broker refuses any of them (only a super user,
    or a principal allowed ALTER_CONFIGS on the cluster, may change quotas).
    """
    ops = [(key, 0.0 if value is None else float(value), value is None) for key, value in values.items()]
    entries: list[tuple[list[tuple[str, str]], Any]] = [([(entity, name)], ops) for name in names]
    response = await _send(settings, _AlterClientQuotasRequest(entries))
    refused = [(code, message, entity_names[0][1]) for code, message, entity_names in response.entries if code]
    if refused:
        code, message, name = refused[0]
        raise AclRefused(refusal_message(f"{len(refused)} of {len(names)} quotas ({entity} {name!r} first)",
                                         _error_name(code), message, settings))


async def describe_quota(settings: KafkaSettings, entity: Entity, name: str) -> dict[str, float]:
    """The quota keys set for exactly this entity (not defaults), e.g. {'producer_byte_rate': 5242880.0}."""
    from aiokafka.protocol.admin import DescribeClientQuotasRequest

    response = await _send(settings, DescribeClientQuotasRequest([(entity, _MATCH_EXACT, name)], True))
    if response.error_code:
        raise AclRefused(refusal_message(f"the quotas of {entity} {name!r}", _error_name(response.error_code),
                                         response.error_message, settings))
    return {key: value for _, values in response.entries for key, value in values}


def _error_name(code: int) -> str:
    """Kafka's name for an error code (`CLUSTER_AUTHORIZATION_FAILED`), as the ACL step's errors read."""
    from aiokafka.errors import for_code

    return str(for_code(code).message)


async def _send(settings: KafkaSettings, request: Request[Any]) -> Any:
    """`request`'s response from any broker; an unreachable broker or a failed request raises an aiaas error that
    says what to do."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from aiaas.kafka.diagnostics import explain_connection_failure

    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    try:
        await admin.start()
        return await admin._send_request(request)  # noqa: SLF001 (aiokafka's one way to send a request it lacks)
    except KafkaConnectionError as exc:
        raise await explain_connection_failure(settings, exc) from exc
    except KafkaError as exc:  # a timeout, or a broker older than Kafka 2.6 (no quota API)
        raise AclRefused(refusal_message("the quota request", type(exc).__name__, str(exc), settings)) from exc
    finally:
        await admin.close()


def kafka_configs_commands(settings: KafkaSettings, entity: Entity, names: list[str], quota: TenantQuota,
                           command_config: str = "admin.properties") -> list[str]:
    """The same quotas as `kafka-configs.sh` commands, one per entity."""
    entity_type = {"user": "users", "client-id": "clients"}[entity]
    return [shlex.join(["kafka-configs.sh", "--bootstrap-server", settings.bootstrap_servers, "--command-config",
                        command_config, "--alter", "--add-config", quota.config_string(), "--entity-type", entity_type,
                        "--entity-name", name]) for name in names]
