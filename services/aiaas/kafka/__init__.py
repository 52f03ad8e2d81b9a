"""Kafka plumbing the services share: topic admin, ACLs and tenant quotas, connection diagnostics, the batch
publisher, transactions, the commit window of safe offsets, the topic catalog, unparseable records, group stalls,
what the services set on aiokafka's fetcher (`fetcher`), and the client's poll count made exception-safe (applied
here, once, for every consumer of a process that uses aiaas's Kafka code: `fetch_context`)."""

from aiaas.kafka.fetch_context import make_fetch_context_exception_safe

make_fetch_context_exception_safe()
