"""The metric families of a trainer: training jobs by status, epochs trained, and the last epoch's loss and
evaluation metric (what a dashboard plots while a job runs). Recorded from the events the trainer sends (`event`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from aiaas.contract.envelopes import TrainingProgress
from aiaas.metrics.families import new_registry

__all__ = ["TrainingMetrics"]


class TrainingMetrics:
    """One trainer's metrics, on a registry of its own."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.jobs = Counter("aiaas_training_jobs", "Training job events: accepted, succeeded, failed; by tenant.",
                            ["model", "status", "tenant"], registry=r)
        self.epochs = Counter("aiaas_training_epochs", "Epochs trained.", ["model"], registry=r)
        self.running = Gauge("aiaas_training_jobs_running", "Training jobs being trained now.", ["model"], registry=r)
        self.loss = Gauge("aiaas_training_loss", "Mean training loss of the last epoch of the job in training.",
                          ["model"], registry=r)
        self.metric = Gauge("aiaas_training_metric", "Evaluation metric after the last epoch, by metric name.",
                            ["model", "metric"], registry=r)
        self.epochs.labels(model)
        self.running.labels(model)
        self._epoch: dict[str, int] = {}  # per job in training: epochs counted so far

    def event(self, job_id: str, status: str, tenant: str | None, progress: TrainingProgress | None) -> None:
        """Count one event the trainer sent for a job."""
        if status == "running" and progress is not None:
            done = self._epoch.get(job_id, 0)
            if progress.epoch > done:
                self.epochs.labels(self.model).inc(progress.epoch - done)
                self._epoch[job_id] = progress.epoch
            if progress.loss is not None:
                self.loss.labels(self.model).set(progress.loss)
            if progress.metric is not None and progress.metric_name:
                self.metric.labels(self.model, progress.metric_name).set(progress.metric)
            return
        self.jobs.labels(self.model, status, tenant or "").inc()
        if status == "accepted":  # a trainer trains one job at a time
            self.running.labels(self.model).set(1)
        else:
            self._epoch.pop(job_id, None)
            self.running.labels(self.model).set(0)
