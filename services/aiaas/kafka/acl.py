"""Kafka ACLs for tenants and services: who may read and write which aiaas topic (`aiaas acl print|apply`).

With SASL on, a tenant is the Kafka principal that authenticates (`alice` logs in as SCRAM user `alice`,
principal `User:alice`), and the topic a job arrives on names the tenant it came from. These ACLs make that
true: only `alice` may write `<prefix>.<model>.infer.alice`, only she may read
`<prefix>.<model>.results.alice`, and a model's service may write only its own model's topics. Kafka
enforces them, so nothing a client puts in a record can claim another tenant.

Topics (`topics.ModelTopics`; tenant names match `topics.TENANT_PATTERN`, so they never hold a dot):

| topic                                | written by                             | read by                       |
|--------------------------------------|----------------------------------------|-------------------------------|
| `<prefix>.<model>.infer.<tenant>`    | that tenant                            | the model's service           |
| `<prefix>.<model>.infer-urgent.<tenant>` | that tenant (its urgent lane)      | the model's service           |
| `<prefix>.<model>.train.<tenant>`    | that tenant                            | the model's trainer           |
| `<prefix>.<model>.results.<tenant>`  | the model's service and trainer        | that tenant (and the service) |
| `<prefix>.<model>.results`, `.retry` | the model's service (trainer: results) | the model's service           |
| `<prefix>.dlq`                       | services and trainers                  | operators (super users)       |
| `<prefix>.models`                    | trainers and super users only          | services                      |

Consumer groups: a tenant may use groups named `<prefix>.tenant.<tenant>.…` (`tenant_group_prefix`); a
service its group `<prefix>.<model>` and transactional ids `<prefix>.<model>.…`; a trainer its group
`<prefix>.<model>.trainer`. A service or trainer started with another group id needs an ACL of its own.

Why confluent-kafka for the admin calls: aiokafka (what every other Kafka call here uses) has no ACL API in
its admin client, only the raw protocol structs, and building CreateAcls requests by hand would make this
module a Kafka client of its own. Kafka's AclCommand (`kafka-acls.sh`) lives in the `kafka-tools` jar, which
the local broker does not fetch, and would tie `apply` to a JVM. Of the Python clients with a
`create_acls`, confluent-kafka (librdkafka, maintained by Confluent, its ACL API stable since 1.9) was
chosen over kafka-python, whose 3.0 release reshaped its admin API. `apply` creates the topics with it too:
aiokafka's `create_topics` returns per-topic errors without raising, so a refusal would pass for success.
`aiaas acl print` writes the same bindings as `kafka-acls.sh` commands for operators who prefer Kafka's
own tools.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiaas.contract.topics import (
    ModelTopics,
    check_tenant,
    dlq_topic,
    models_topic,
    service_topics,
)
from aiaas.errors import AclRefused
from aiaas.model_types import model_type
from aiaas.settings import KafkaSettings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AclBinding, AdminClient

__all__ = ["AclPlan", "AclRefused", "AclRule", "apply_acls", "kafka_acls_commands", "refusal_message",
           "tenant_group_prefix"]

_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_CLUSTER = "kafka-cluster"  # Kafka's name for the one cluster resource

Resource = Literal["topic", "group", "transactional-id", "cluster"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "DESCRIBE", "CREATE", "IDEMPOTENT_WRITE"]


def tenant_group_prefix(prefix: str, tenant: str) -> str:
    """The start of every consumer group id a tenant may use: `<prefix>.tenant.<tenant>.`.

    Its own namespace, so a tenant named like a model (`vision`) can never join `<prefix>.vision.trainer`.
    """
    return f"{prefix}.tenant.{tenant}."


@dataclass(frozen=True, order=True)
class AclRule:
    """One ALLOW binding: `principal` may do `operation` on the resources that `pattern` `name` selects.

    Kafka implies DESCRIBE from READ and WRITE; the rules still name it where a client needs it, so that a
    listing reads as what each principal does.
    """

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def binding(self) -> AclBinding:
        """The same rule as a confluent-kafka `AclBinding` (from any host)."""
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        resource_type = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                         "transactional-id": ResourceType.TRANSACTIONAL_ID,
                         "cluster": ResourceType.BROKER}[self.resource]  # librdkafka's BROKER is Kafka's CLUSTER
        return AclBinding(resource_type, self.name, ResourcePatternType[self.pattern.upper()], self.principal, "*",
                          AclOperation[self.operation], AclPermissionType.ALLOW)


def _allow(principal: str, resource: Resource, name: str, pattern: Pattern, *operations: Operation) -> list[AclRule]:
    return [AclRule(principal, resource, name, pattern, operation) for operation in operations]


@dataclass(frozen=True)
class AclPlan:
    """Every ACL for some tenants of some model types, with each model's service and trainer principal.

    `service_user` and `trainer_user` are SASL user names; `{model}` in them becomes the model type. A
    `trainer_user` of None grants no trainer anything (then only super users announce models).
    """

    prefix: str
    models: tuple[str, ...]
    tenants: tuple[str, ...]
    service_user: str = "aiaas-{model}"
    trainer_user: str | None = "aiaas-{model}-trainer"

    def __post_init__(self) -> None:
        for tenant in self.tenants:
            check_tenant(tenant)
        if bad := [m for m in self.models if not _MODEL_NAME.match(m)]:
            raise ValueError(f"model type names must match {_MODEL_NAME.pattern}: " + ", ".join(map(repr, bad)))
        if not self.models:
            raise ValueError("name at least one model type")
        if clash := sorted(set(self.tenants) & set(self.internal_users())):
            raise ValueError(f"{', '.join(clash)}: a tenant may not share its user with a service or trainer")

    def internal_users(self) -> list[str]:
        """The SASL users of the services and trainers."""
        templates = [self.service_user, *([self.trainer_user] if self.trainer_user else [])]
        return [template.format(model=model) for model in self.models for template in templates]

    def rules(self) -> list[AclRule]:
        """Every binding, sorted, without duplicates."""
        rules = [rule for tenant in self.tenants for rule in self._tenant_rules(tenant)]
        for model in self.models:
            rules += self._service_rules(model)
            if self.trainer_user:
                rules += self._trainer_rules(model)
        return sorted(set(rules))

    def topics(self, settings: KafkaSettings) -> list[str]:
        """The topics the plan is about: every service topic of its models and each tenant's own."""
        names = [name for model in self.models for name in service_topics(model, settings)]
        for model in self.models:
            t = ModelTopics.of(model, self.prefix)
            names += [name for tenant in self.tenants
                      for name in (t.tenant_infer(tenant), t.tenant_urgent(tenant), t.tenant_train(tenant),
                                   t.tenant_results(tenant))]
            if model_type(model).generative:
                names += [t.cancel, *(t.tenant_cancel(tenant) for tenant in self.tenants)]
        return list(dict.fromkeys(names))

    def _tenant_rules(self, tenant: str) -> list[AclRule]:
        user = f"User:{tenant}"
        rules = _allow(user, "group", tenant_group_prefix(self.prefix, tenant), "prefixed", "READ")
        for model in self.models:
            # LITERAL: a prefixed `…infer.alice` would also match bob's `…infer.alice2`.
            t = ModelTopics.of(model, self.prefix)
            rules += _allow(user, "topic", t.tenant_infer(tenant), "literal", "WRITE", "DESCRIBE")
            rules += _allow(user, "topic", t.tenant_urgent(tenant), "literal", "WRITE", "DESCRIBE")
            rules += _allow(user, "topic", t.tenant_train(tenant), "literal", "WRITE", "DESCRIBE")
            rules += _allow(user, "topic", t.tenant_results(tenant), "literal", "READ", "DESCRIBE")
            if model_type(model).generative:  # it may end its own jobs' generation
                rules += _allow(user, "topic", t.tenant_cancel(tenant), "literal", "WRITE", "DESCRIBE")
        return rules

    def _service_rules(self, model: str) -> list[AclRule]:
        user, base = f"User:{self.service_user.format(model=model)}", f"{self.prefix}.{model}"
        return [
            *_allow(user, "topic", f"{base}.infer", "prefixed", "READ"),  # every tenant's, urgent lanes, the untenanted
            *_allow(user, "topic", f"{base}.retry", "literal", "READ", "WRITE"),
            # READ too: a starting service remembers recent outcomes from its results topics.
            *_allow(user, "topic", f"{base}.results", "prefixed", "READ", "WRITE"),
            *_allow(user, "topic", dlq_topic(self.prefix), "literal", "WRITE"),
            *_allow(user, "topic", models_topic(self.prefix), "literal", "READ"),
            *_allow(user, "topic", f"{base}.", "prefixed", "CREATE"),  # it ensures its topics at start
            *_allow(user, "group", base, "literal", "READ"),
            *_allow(user, "transactional-id", f"{base}.", "prefixed", "WRITE"),  # exactly-once: `<group>.<instance>`
            *_allow(user, "cluster", _CLUSTER, "literal", "IDEMPOTENT_WRITE"),
            *(self._cancel_rules(user, base) if model_type(model).generative else []),
        ]

    def _cancel_rules(self, user: str, base: str) -> list[AclRule]:
        """A streaming service reads every cancel topic, each replica in a consumer group of its own
        (`<group>.cancel.<random>`)."""
        return [*_allow(user, "topic", f"{base}.cancel", "prefixed", "READ"),
                *_allow(user, "group", f"{base}.cancel.", "prefixed", "READ")]

    def _trainer_rules(self, model: str) -> list[AclRule]:
        assert self.trainer_user is not None
        user, base = f"User:{self.trainer_user.format(model=model)}", f"{self.prefix}.{model}"
        return [
            *_allow(user, "topic", f"{base}.train", "prefixed", "READ"),
            *_allow(user, "topic", f"{base}.results", "prefixed", "WRITE"),  # progress and final events
            *_allow(user, "topic", dlq_topic(self.prefix), "literal", "WRITE"),
            *_allow(user, "topic", models_topic(self.prefix), "literal", "WRITE"),  # announces new versions
            *_allow(user, "topic", f"{base}.", "prefixed", "CREATE"),
            *_allow(user, "group", f"{base}.trainer", "literal", "READ"),
            *_allow(user, "cluster", _CLUSTER, "literal", "IDEMPOTENT_WRITE"),
        ]


def kafka_acls_commands(plan: AclPlan, settings: KafkaSettings, command_config: str = "admin.properties",
                        *, topics: bool = True) -> list[str]:
    """The plan as shell commands for Kafka's own tools (`kafka-topics.sh`, `kafka-acls.sh`), one per line.

    `command_config` is the client properties file of a super user (its SASL/TLS settings).
    """
    server = ["--bootstrap-server", settings.bootstrap_servers, "--command-config", command_config]
    lines = [shlex.join(["kafka-topics.sh", *server, "--create", "--if-not-exists", "--topic", name,
                         "--partitions", str(settings.partitions),
                         "--replication-factor", str(settings.replication_factor)])
             for name in (plan.topics(settings) if topics else [])]
    for (principal, resource, name, pattern), operations in _grouped(plan.rules()).items():
        target = ["--cluster"] if resource == "cluster" else [f"--{resource}", name, "--resource-pattern-type", pattern]
        flags = [flag for op in operations for flag in ("--operation", _camel(op))]
        lines.append(shlex.join(["kafka-acls.sh", *server, "--add", "--allow-principal", principal, *flags, *target]))
    return lines


def _camel(operation: str) -> str:
    """`IDEMPOTENT_WRITE` as kafka-acls.sh spells it: `IdempotentWrite`."""
    return "".join(part.title() for part in operation.split("_"))


def _grouped(rules: Iterable[AclRule]) -> dict[tuple[str, str, str, str], list[str]]:
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for rule in rules:
        grouped.setdefault((rule.principal, rule.resource, rule.name, rule.pattern), []).append(rule.operation)
    return grouped


async def apply_acls(plan: AclPlan, settings: KafkaSettings, *, topics: bool = True) -> list[str]:
    """Create the plan's topics (unless `topics` is False) and ACLs; returns the topics created now.

    Safe to run again: existing topics and bindings stay as they are. It only adds; a tenant taken out of
    the plan keeps its ACLs until they are removed (`kafka-acls.sh --remove`). `settings` must log in as a
    super user.
    """
    await _check_connection(settings)
    return await asyncio.to_thread(_apply, plan, settings, topics)


async def _check_connection(settings: KafkaSettings) -> None:
    """Fail at once, naming the setting to fix, when the broker cannot be reached or refuses the login."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    from aiaas.kafka.diagnostics import explain_connection_failure

    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise await explain_connection_failure(settings, exc) from exc
    finally:
        await admin.close()


def _apply(plan: AclPlan, settings: KafkaSettings, topics: bool) -> list[str]:
    from confluent_kafka.admin import AdminClient

    # confluent-kafka's stub allows only plain values, but librdkafka's "logger" takes a logging.Logger.
    admin = AdminClient(_admin_config(settings))  # type: ignore[arg-type]
    created = _create_topics(admin, plan.topics(settings), settings) if topics else []
    rules = plan.rules()
    if errors := _failures(admin.create_acls([rule.binding() for rule in rules],
                                             request_timeout=settings.request_timeout_ms / 1000), settings):
        raise AclRefused(refusal_message(f"{len(errors)} of {len(rules)} ACLs", errors[0].name(), errors[0].str(),
                                         settings))
    return created


def _create_topics(admin: AdminClient, names: list[str], settings: KafkaSettings) -> list[str]:
    from confluent_kafka.admin import NewTopic

    new = [NewTopic(name, settings.partitions, settings.replication_factor) for name in names]
    futures = admin.create_topics(new, request_timeout=settings.request_timeout_ms / 1000)
    errors = _failures(futures, settings, allowed=("TOPIC_ALREADY_EXISTS",))
    if errors:
        raise AclRefused(refusal_message(f"{len(errors)} of {len(names)} topics", errors[0].name(), errors[0].str(),
                                         settings))
    return [name for name, future in futures.items() if future.exception() is None]


def _failures(futures: dict[Any, Future[None]], settings: KafkaSettings,
              allowed: tuple[str, ...] = ()) -> list[KafkaError]:
    """The KafkaError of each future that failed, except those whose error is one of `allowed`."""
    from confluent_kafka import KafkaException

    errors: list[KafkaError] = []
    for future in futures.values():
        try:
            future.result(timeout=settings.request_timeout_ms / 1000 + 5)
        except KafkaException as exc:
            if exc.args[0].name() not in allowed:
                errors.append(exc.args[0])
    return errors


_SUPER_USER_HINT = ("run `aiaas acl apply` as a super user (the broker's super.users; AIAAS_KAFKA_SUPER_USERS on the "
                    "local broker)")


def refusal_message(what: str, name: str, detail: str | None, settings: KafkaSettings) -> str:
    """One line: what was refused, Kafka's error name (`CLUSTER_AUTHORIZATION_FAILED`) and detail, and what to do."""
    detail = detail or ""
    if len(detail) > 160 or name in detail:  # some brokers put a whole request's toString here
        detail = ""
    line = f"Kafka refused {what} for {_who(settings)} at {settings.bootstrap_servers}: {name}" + \
        (f" ({detail})" if detail else "")
    if name == "SECURITY_DISABLED":
        return f"{line}; the broker has no authorizer (authorizer.class.name; AIAAS_KAFKA_ACLS=1 on the local broker)"
    if "AUTHORIZATION" in name:
        return f"{line}; {_SUPER_USER_HINT}"
    return line


def _who(settings: KafkaSettings) -> str:
    if settings.sasl_username:
        return f"user '{settings.sasl_username}'"
    return f"the {settings.security_protocol} principal"


def _admin_config(settings: KafkaSettings) -> dict[str, object]:
    """The ACL step's librdkafka connection; librdkafka's log lines go to logging, not straight to stderr."""
    return settings.librdkafka_config("aiaas-acl") | {"logger": logging.getLogger(__name__)}
