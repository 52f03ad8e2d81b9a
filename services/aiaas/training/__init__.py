"""Training jobs: a trainer process per model type consumes `<prefix>.<model>.train` and every tenant's
`<prefix>.<model>.train.<tenant>` (a tenant's events go to `<prefix>.<model>.results.<tenant>`).

Entry point: `python -m aiaas.training <model>`. A training job (`Job(kind="train")`) names
hyper-parameters, its data (inline, or a Parquet/NPZ/JSONL file checked against a sha256)
and optionally a base version to fine-tune. The trainer streams `accepted` → `running`
(epoch, loss, metric, ETA) → `succeeded` (new version, metrics) or `failed` events on the
model's (or the tenant's) results topic, registers the new version with the model's promotion policy, and
announces it on `<prefix>.models` so the inference services hot-reload.

Jobs are untrusted input: data files only under the configured roots, bounded bytes, rows,
epochs, batch size and wall time (`settings.py`, `data_files.py`), training stoppable between
steps (`stopping.py`, `supervise.py`), and a version scored on the job's own data never promoted
to `production` by itself (`protocol.ScoredOn`).
"""
