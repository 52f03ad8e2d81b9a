"""Why a connection to Kafka failed, in one line a person can act on.

aiokafka only logs the broker's reason for refusing a connection (a wrong SCRAM password, an unknown
mechanism, an untrusted certificate) and raises "Unable to bootstrap"; `explain_connection_failure`
tries once more with the same settings and names the setting to fix. Every process that talks to
Kafka (services, trainers, the client, the CLI) reports a failed start through it.
"""

from __future__ import annotations

import asyncio

from aiaas.errors import BrokerUnavailable, KafkaAuthenticationFailed
from aiaas.settings import KafkaSettings

__all__ = ["broker_unreachable", "explain_connection_failure"]


def broker_unreachable(settings: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    """The one-line error a person sees when Kafka does not answer."""
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({type(exc).__name__}). "
        "Start the local broker with `infra/kafka/kafka.sh start` (or `make kafka`), "
        "or point AIAAS_KAFKA_BOOTSTRAP_SERVERS at your cluster."
    )


async def explain_connection_failure(settings: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    """The error for a client that could not connect: `KafkaAuthenticationFailed` naming the setting to fix
    when a broker answered but refused the handshake, `broker_unreachable` otherwise.

    aiokafka only logs the broker's reason (wrong SCRAM password, unknown mechanism, untrusted certificate)
    and raises "Unable to bootstrap"; one connection attempt with the same settings recovers it.
    """
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    kwargs = settings.connection_kwargs()
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            async with asyncio.timeout(5):
                conn = await create_conn(
                    host, port, request_timeout_ms=5000, security_protocol=settings.security_protocol,
                    ssl_context=kwargs.get("ssl_context"), sasl_mechanism=kwargs.get("sasl_mechanism"),
                    sasl_plain_username=kwargs.get("sasl_plain_username"),
                    sasl_plain_password=kwargs.get("sasl_plain_password"),
                )
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
        except Exception as refusal:  # noqa: BLE001 - classified below; anything else is "unreachable"
            refused = _security_refusal(settings, f"{host}:{port}", refusal)
            if refused is not None:
                return refused
    return broker_unreachable(settings, exc)


def _security_refusal(settings: KafkaSettings, where: str, exc: Exception) -> KafkaAuthenticationFailed | None:
    import ssl

    from aiokafka import errors

    protocol, mechanism = settings.security_protocol, settings.sasl_mechanism or "PLAIN"
    said = f" (broker: {exc.args[0]})" if exc.args and isinstance(exc.args[0], str) and exc.args[0] else ""
    if isinstance(exc, (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError)):
        message = (f"Kafka rejected the SASL credentials for user '{settings.sasl_username}' ({mechanism}) at "
                   f"{where}: check AIAAS_KAFKA_SASL_USERNAME / AIAAS_KAFKA_SASL_PASSWORD{said}")
    elif isinstance(exc, errors.UnsupportedSaslMechanismError):
        message = (f"Kafka at {where} does not offer the SASL mechanism {mechanism} on that listener: "
                   "check AIAAS_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, as the cluster has it)")
    elif isinstance(exc, errors.IllegalSaslStateError):
        message = (f"Kafka at {where} does not speak SASL on that listener: check AIAAS_KAFKA_SECURITY_PROTOCOL "
                   f"({protocol}) and that AIAAS_KAFKA_BOOTSTRAP_SERVERS names the SASL listener's port")
    elif isinstance(exc, ssl.SSLCertVerificationError):
        message = (f"the TLS certificate of Kafka at {where} is not trusted ({exc.verify_message}): "
                   "set AIAAS_KAFKA_SSL_CAFILE to the CA (PEM) that signed it")
    elif isinstance(exc, ssl.SSLError):
        message = (f"the TLS handshake with Kafka at {where} failed ({exc.reason or exc}): check that this "
                   f"listener speaks TLS (AIAAS_KAFKA_SECURITY_PROTOCOL={protocol}) and the AIAAS_KAFKA_SSL_* files")
    elif isinstance(exc, ConnectionResetError) and protocol.endswith("SSL"):
        message = (f"Kafka at {where} reset the connection at the TLS handshake: that listener probably does not "
                   f"speak TLS (check AIAAS_KAFKA_SECURITY_PROTOCOL={protocol} and the port)")
    elif isinstance(exc, errors.KafkaConnectionError) and protocol.endswith("SSL") and not settings.ssl_certfile:
        # TLS connected, then the broker hung up: the usual reason is a listener that wants a client certificate.
        message = (f"Kafka at {where} closed the TLS connection: the listener may require a client certificate "
                   "(AIAAS_KAFKA_SSL_CERTFILE / AIAAS_KAFKA_SSL_KEYFILE)")
    elif isinstance(exc, errors.KafkaConnectionError) and protocol == "PLAINTEXT":
        # TCP connected, then the broker hung up on the first request: a listener that expects SASL or TLS.
        message = (f"Kafka at {where} accepted the connection and closed it: that listener probably needs SASL "
                   "or TLS (set AIAAS_KAFKA_SECURITY_PROTOCOL and the SASL/SSL settings, see docs/configuration.md)")
    else:
        return None
    return KafkaAuthenticationFailed(message)
