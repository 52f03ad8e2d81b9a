"""Vision training jobs: the CNN on the built-in digits or the job's own labelled images.

Inputs (all optional): `epochs`, `learning_rate`, `batch_size`, `seed`; data inline as
`images` (tensor [N, 8, 8], values 0..16) and `labels` (int tensor [N]), or `data_uri` to a
file with those columns (NPZ arrays, JSONL rows `{"image": [[...8...]...], "label": 3}`,
Parquet); `base_version` to fine-tune from (its `weights.npz`). Evaluation is always on the
built-in held-out digits, so versions are comparable. Those digits ship with scikit-learn, so a
job could train on them: when the job's images include any of them (to the nearest intensity),
or its base version was itself scored on job data, the version is marked as scored on the job's
own data (`scored_on: job_data`) and is never promoted to `production` automatically.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.training.protocol import (
    Candidate,
    ProgressCallback,
    ScoredOn,
    scored_on_job_data,
)
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal
from aiaas.vision import MODEL
from aiaas.vision.data import includes_held_out, split_for_job
from aiaas.vision.trainer import (
    TrainParams,
    export_onnx,
    label_shares,
    onnx_labels,
    train,
    weights_npz,
)

__all__ = ["VisionTrainer"]


class VisionTrainer:
    """Trains the digits CNN for a training job."""

    model = MODEL
    metric = "accuracy"

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Train (or fine-tune), export ONNX + weights, evaluate on the held-out digits."""
        stop = stop or StopSignal()
        params = replace(TrainParams(), **request.params)
        split = split_for_job(request.data, MODEL)
        scored_on: ScoredOn = "job_data" if request.data is not None and includes_held_out(split) else "reference"
        initial, parent = None, None
        if request.base_version is not None:
            base = registry.resolve(MODEL, request.base_version)
            if scored_on_job_data(base):  # it may have learnt the held-out digits: so may this one
                scored_on = "job_data"
            files = registry.load_companions(base)
            if "weights.npz" not in files:
                raise InvalidJob(f"vision v{base.version} has no weights.npz to fine-tune from")
            with np.load(io.BytesIO(files["weights.npz"]), allow_pickle=False) as arrays:
                initial = {name: arrays[name] for name in arrays.files}
            parent = base.version
        started = time.perf_counter()

        def on_epoch(epoch: int, steps: int, loss: float, model) -> None:
            import torch

            with torch.no_grad():
                probs = model(torch.from_numpy(split.test_x)).numpy()
            elapsed = time.perf_counter() - started
            progress(TrainingProgress(
                epoch=epoch, epochs=params.epochs, step=steps, loss=loss, metric_name=self.metric,
                metric=float(np.mean(probs.argmax(axis=1) == split.test_y)),
                eta_s=elapsed / epoch * (params.epochs - epoch),
            ))

        stop.check()
        model = train(split, params, initial=initial, on_epoch=on_epoch, interrupt=stop)
        stop.check()
        artifact, weights = workdir / "model.onnx", workdir / "weights.npz"
        export_onnx(model, artifact)
        weights_npz(model, weights)
        labels = onnx_labels(artifact, split)
        metrics = {"accuracy": float(np.mean(labels == split.test_y)),
                   "train_seconds": round(time.perf_counter() - started, 2)}
        return Candidate(artifact, metrics, asdict(params), split.data_hash(), (weights,), parent, scored_on=scored_on,
                         output_profile=label_shares(labels))
