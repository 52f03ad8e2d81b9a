"""What travels on the wire: job and result envelopes, their msgpack codec with limits, topic names, and the
headers aiaas reads. Nothing here talks to Kafka; everything else builds on it."""
