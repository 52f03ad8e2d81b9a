"""Kafka plumbing the services share: topic admin and ACLs, connection diagnostics, the batch publisher,
transactions, the commit window of safe offsets, the topic catalog, unparseable records, group stalls, and the
client's poll count made exception-safe."""
