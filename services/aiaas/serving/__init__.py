"""A model service: `service.py` runs the process, `pipeline.py` fetches, batches and commits, `worker.py`
admits each record and publishes its outcome; retries, idempotency, reply topics and hot swap beside them."""
