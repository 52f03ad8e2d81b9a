"""Vae training jobs: the conditional VAE on the built-in digits or on the job's own labelled digits.

Inputs (all optional): `epochs`, `learning_rate`, `batch_size`, `seed`, and this model's own `latent_size`
(1..`MAX_LATENT_SIZE`) and `beta` (0..`MAX_BETA`, the KL weight of the training loss, a β-VAE; the recorded ELBO
always weighs it 1). Data inline as `images` (tensor [N, 8, 8], values 0..16) and `labels` (int tensor [N]), or
`data_uri` to a file with those columns, exactly as vision training jobs take them. `base_version` to fine-tune
from (its `weights.npz`; the latent size is the base's). Evaluation is always on the built-in held-out digits, so
versions compare; a job whose images include any of them, or whose base was scored on job data, is marked
`scored_on: job_data` and never promoted automatically.

Progress after each epoch: the training loss, its terms (`reconstruction_nll` and `kl`, mean nats per image)
and the held-out ELBO of the PyTorch model (one draw of z per image, fixed seed). The candidate's metrics are
those of `trainer.evaluate`, on the exported graph; promotion compares `elbo`.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.training.protocol import Candidate, ProgressCallback, ScoredOn, scored_on_job_data
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal
from aiaas.vae import MODEL
from aiaas.vae.model import ConditionalVAE
from aiaas.vae.trainer import WEIGHTS_FILE, TrainParams, package, train
from aiaas.vision.data import DigitsSplit, includes_held_out, split_for_job

__all__ = ["VaeTrainer", "MAX_LATENT_SIZE", "MAX_BETA"]

MAX_LATENT_SIZE = 64
MAX_BETA = 1000.0
"""The largest KL weight a job may ask for: beyond it the KL term is all the loss sees."""
_PROGRESS_SEED = 99


class VaeTrainer:
    """Trains the conditional VAE for a training job."""

    model = MODEL
    metric = "elbo"
    hyper_parameters = {"latent_size": int, "beta": float}

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Train (or fine-tune), export the graph and weights, score the graph on the held-out digits."""
        stop = stop or StopSignal()
        params = replace(TrainParams(), **request.params)
        if params.latent_size > MAX_LATENT_SIZE:
            raise InvalidJob(f"`latent_size` must be within 1..{MAX_LATENT_SIZE}; got {params.latent_size}")
        if params.beta > MAX_BETA:
            raise InvalidJob(f"`beta` must be within 0..{MAX_BETA:g}; got {params.beta:g}")
        split = split_for_job(request.data, MODEL)
        scored_on: ScoredOn = "job_data" if request.data is not None and includes_held_out(split) else "reference"
        initial, parent = None, None
        if request.base_version is not None:
            base = registry.resolve(MODEL, request.base_version)
            if scored_on_job_data(base):  # it may have learnt the held-out digits: so may this one
                scored_on = "job_data"
            initial = _base_weights(registry.load_companions(base), base.version)
            latent = initial["to_posterior.2.weight"].shape[0] // 2
            if "latent_size" in request.params and request.params["latent_size"] != latent:
                raise InvalidJob(f"vae v{base.version} has a latent size of {latent}; a fine-tuning job keeps it "
                                 f"(leave `latent_size` out, or train from scratch without `base_version`)")
            params, parent = replace(params, latent_size=latent), base.version
        started = time.perf_counter()
        held_out_elbo = _HeldOutElbo(split)

        def on_epoch(epoch: int, steps: int, terms: dict[str, float], model: ConditionalVAE) -> None:
            elapsed = time.perf_counter() - started
            progress(TrainingProgress(
                epoch=epoch, epochs=params.epochs, step=steps, loss=terms.pop("loss"), loss_terms=terms,
                metric_name=self.metric, metric=held_out_elbo(model), eta_s=elapsed / epoch * (params.epochs - epoch),
            ))

        stop.check()
        model = train(split, params, initial=initial, on_epoch=on_epoch, interrupt=stop)
        train_seconds = time.perf_counter() - started
        stop.check()
        artifact, weights, metrics, profile = package(model, split, workdir)
        return Candidate(artifact, metrics | {"train_seconds": round(train_seconds, 2)}, asdict(params),
                         split.data_hash(), (weights,), parent, scored_on=scored_on, output_profile=profile)


class _HeldOutElbo:
    """The mean ELBO of the PyTorch model on the held-out digits under their digits (one draw of z, fixed seed)."""

    def __init__(self, split: DigitsSplit) -> None:
        self._images, self._labels = torch.from_numpy(split.test_x[:, 0]), torch.from_numpy(split.test_y)

    def __call__(self, model: ConditionalVAE) -> float:
        noise = torch.randn(len(self._images), model.latent, generator=torch.Generator().manual_seed(_PROGRESS_SEED))
        with torch.no_grad():
            nll, kl = model.loss_terms(self._images, self._labels, noise)
        return float(-(nll + kl).mean())


def _base_weights(files: dict[str, bytes], version: int) -> dict[str, np.ndarray]:
    """The base version's weights, checked to be a ConditionalVAE's (names and shapes) before training loads them."""
    if WEIGHTS_FILE not in files:
        raise InvalidJob(f"vae v{version} has no {WEIGHTS_FILE} to fine-tune from")
    with np.load(io.BytesIO(files[WEIGHTS_FILE]), allow_pickle=False) as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    posterior = weights.get("to_posterior.2.weight")
    latent = posterior.shape[0] // 2 if posterior is not None and posterior.ndim == 2 else 0
    expected = {name: tuple(t.shape) for name, t in ConditionalVAE(max(latent, 1)).state_dict().items()}
    if not 1 <= latent <= MAX_LATENT_SIZE or {n: w.shape for n, w in weights.items()} != expected:
        raise InvalidJob(f"vae v{version}'s {WEIGHTS_FILE} does not hold a conditional VAE's weights")
    return weights
