"""Train the conditional VAE on the digits, export it to ONNX, score the served graph, register it.

A version's metrics (all on the held-out digits, measured on the exported graph under ONNX Runtime):

- `elbo`: the mean ELBO per image under its true digit, in nats (a lower bound of log p(image | digit)); higher
  is better, and the promotion policy compares it. It averages `ELBO_SAMPLES` draws of z per image from a fixed
  seed, so a version always gets the same number. `reconstruction_nll` and `kl`: its two terms (nats).
- `digit_accuracy`: the share of held-out images whose most likely digit (the highest ELBO of the ten, as
  `anomaly_score` reports it) is their digit.
- `class_match`: the share of generated digits (`MATCH_SAMPLES` of each digit, fixed seed) that the reference
  classifier labels as the digit asked for; `classifier_accuracy`: that classifier's own held-out accuracy, for
  scale. The reference classifier is the vision CNN trained as `aiaas models build vision` trains it (same data,
  seed and hyper-parameters), trained here again rather than read from the registry, so the number does not move
  when vision's production version does.
- `anomaly_threshold`: the 99th percentile of the held-out digits' anomaly scores as served, digit not given
  (`anomaly_score` says `anomalous` above it); `anomaly_threshold_given_digit`: the same with their digits given
  (that score is the one digit's, not the mixture's, so it has its own scale).

Training runs on one thread: on a model this small extra threads cost more than they give, and the reductions
then run in one fixed order (the same weights for the same seed).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import TrainingFailed
from aiaas.metrics.drift import output_profile
from aiaas.registry.store import ModelVersion, Registry
from aiaas.vae import MODEL
from aiaas.vae.model import INPUT_NAMES, OUTPUT_NAMES, ConditionalVAE, ServingGraph
from aiaas.vae.runtime import ANOMALY_THRESHOLD, ANOMALY_THRESHOLD_GIVEN_DIGIT, DIGITS, VaeRuntime
from aiaas.vision.data import DigitsSplit, load_split

__all__ = ["TrainParams", "train", "export_onnx", "weights_npz", "evaluate", "package", "build", "ONNX_FILE",
           "WEIGHTS_FILE", "ELBO_SAMPLES", "MATCH_SAMPLES"]

ONNX_FILE = "vae.onnx"
WEIGHTS_FILE = "weights.npz"
ELBO_SAMPLES = 4
MATCH_SAMPLES = 50
"""Generated digits per class that the reference classifier labels (class_match)."""
_EVALUATION_SEED = 1234


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of a training run."""

    epochs: int = 40
    learning_rate: float = 2e-3
    batch_size: int = 64
    latent_size: int = 8
    beta: float = 1.0
    """Weight of the KL term in the training loss (β-VAE); the recorded ELBO always weighs it 1."""
    seed: int = 0


EpochCallback = Callable[[int, int, dict[str, float], ConditionalVAE], None]
"""Called after each epoch with (epoch, steps so far, mean loss terms `loss`/`reconstruction_nll`/`kl`, model)."""


def train(split: DigitsSplit, params: TrainParams, *, initial: dict[str, np.ndarray] | None = None,
          on_epoch: EpochCallback | None = None, interrupt: Callable[[], None] | None = None) -> ConditionalVAE:
    """Adam on reconstruction NLL + β · KL, from `initial` weights when fine-tuning; deterministic on CPU for a
    seed. `interrupt()` is called before every optimiser step; it raises to end the run there."""
    with _one_thread():
        return _train(split, params, initial, on_epoch, interrupt)


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(split: DigitsSplit, params: TrainParams, initial: dict[str, np.ndarray] | None,
           on_epoch: EpochCallback | None, interrupt: Callable[[], None] | None) -> ConditionalVAE:
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = ConditionalVAE(params.latent_size)
    if initial is not None:
        model.load_state_dict({name: torch.from_numpy(value) for name, value in initial.items()})
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    images, labels = torch.from_numpy(split.train_x[:, 0]), torch.from_numpy(split.train_y)
    steps = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        totals = np.zeros(3)
        for start in range(0, len(images), params.batch_size):
            if interrupt is not None:
                interrupt()
            idx = order[start : start + params.batch_size]
            noise = torch.randn(len(idx), params.latent_size, generator=generator)
            nll, kl = model.loss_terms(images[idx], labels[idx], noise)
            loss = (nll + params.beta * kl).mean()
            if not torch.isfinite(loss):
                raise TrainingFailed(f"training diverged at epoch {epoch} (the loss is {loss.item()}): try a lower "
                                     "learning_rate or beta")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            totals += np.array([loss.item(), nll.mean().item(), kl.mean().item()]) * len(idx)
            steps += 1
        if on_epoch is not None:
            means = totals / len(images)
            on_epoch(epoch, steps, dict(zip(("loss", "reconstruction_nll", "kl"), means.tolist(), strict=True)),
                     model.eval())
    return model.eval()


def weights_npz(model: ConditionalVAE, path: Path) -> None:
    """The weights as plain arrays (no pickle): what a fine-tuning job starts from."""
    np.savez(path, **{name: t.detach().numpy() for name, t in model.state_dict().items()})


def export_onnx(model: ConditionalVAE, path: Path) -> None:
    """ONNX with dynamic batch axes on both routes; inputs and outputs as named in model.py."""
    latent = model.latent
    example = (torch.zeros(2, 8, 8), torch.zeros(2, dtype=torch.int64), torch.zeros(2, latent),
               torch.zeros(3, latent), torch.zeros(3, dtype=torch.int64))
    images, points = {0: "images"}, {0: "points"}
    axes = dict.fromkeys(("image", "digit", "noise", "mean", "log_variance", "reconstruction",
                          "reconstruction_nll", "kl"), images) | dict.fromkeys(("latent", "generate_digit",
                                                                                "generated"), points)
    # The TorchScript exporter, as for vision: fast, no torch.export tracing, a small opset-17 graph.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(ServingGraph(model).eval(), example, str(path), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=17, dynamo=False)


@cache
def _reference_classifier() -> Callable[[np.ndarray], np.ndarray]:
    """The vision CNN as `aiaas models build vision` trains it: raw [N, 8, 8] images → predicted digits."""
    from aiaas.vision.trainer import TrainParams as VisionParams
    from aiaas.vision.trainer import train as train_vision

    with _one_thread():
        classifier = train_vision(load_split(), VisionParams())

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(images[:, None].astype(np.float32))).argmax(dim=1).numpy()

    return predict


def evaluate(runtime: VaeRuntime, split: DigitsSplit, answers: list[dict] | None = None) -> dict[str, float]:
    """The metrics of the module docstring, measured on `runtime` (the exported graph as served). The served
    `anomaly_score` answers, judged against the thresholds found here, are added to `answers` when given."""
    rng = np.random.default_rng(_EVALUATION_SEED)
    images, labels = split.test_x[:, 0], split.test_y
    terms = [runtime.elbo_terms(images, labels, rng.standard_normal((len(images), runtime.latent_size)))
             for _ in range(ELBO_SAMPLES)]
    nll, kl = (np.mean([t[i] for t in terms], axis=0) for i in (0, 1))
    digits = np.repeat(np.arange(DIGITS), MATCH_SAMPLES)
    generated = runtime.decode(rng.standard_normal((len(digits), runtime.latent_size)), digits)
    classify = _reference_classifier()
    scored = _anomaly_scores(runtime, images)
    given = _anomaly_scores(runtime, images, labels)
    thresholds = {ANOMALY_THRESHOLD: float(np.percentile([out["score"] for out in scored], 99)),
                  ANOMALY_THRESHOLD_GIVEN_DIGIT: float(np.percentile([out["score"] for out in given], 99))}
    if answers is not None:
        answers += [out | {"anomalous": out["score"] > threshold}
                    for outs, threshold in zip((scored, given), thresholds.values(), strict=True) for out in outs]
    return thresholds | {
        "elbo": float(-(nll + kl).mean()), "reconstruction_nll": float(nll.mean()), "kl": float(kl.mean()),
        "digit_accuracy": float(np.mean([out["digit"] for out in scored] == labels)),
        "class_match": float(np.mean(classify(generated) == digits)),
        "classifier_accuracy": float(np.mean(classify(images) == labels)),
    }


def _anomaly_scores(runtime: VaeRuntime, images: np.ndarray, digits: np.ndarray | None = None) -> list[dict]:
    """The served `anomaly_score` outputs of the images, under their digits when given."""
    jobs = [Job(job_id=f"eval-{i}", model=MODEL, task="anomaly_score",
                inputs={"image": Tensor.from_numpy(image)} | ({} if digits is None else {"digit": int(digits[i])}))
            for i, image in enumerate(images)]
    return runtime.infer([runtime.prepare(job) for job in jobs])


def package(model: ConditionalVAE, split: DigitsSplit,
            folder: Path) -> tuple[Path, Path, dict[str, float], dict[str, float]]:
    """Export the graph and the weights into `folder` and score the graph as served.

    Returns (the ONNX artifact, the weights companion, the metrics of `evaluate`, the served anomaly answers'
    `output_profile`)."""
    graph, weights = folder / ONNX_FILE, folder / WEIGHTS_FILE
    export_onnx(model, graph)
    weights_npz(model, weights)
    answers: list[dict] = []
    metrics = evaluate(VaeRuntime(graph.read_bytes(), "candidate", providers="cpu"), split, answers)
    return graph, weights, metrics, output_profile(VaeRuntime.output_categories, answers)


def build(registry: Registry, params: TrainParams = TrainParams()) -> ModelVersion:
    """Train, export, score the served graph and register a new vae version (aliased `production`)."""
    split = load_split()
    started = time.perf_counter()
    model = train(split, params)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        graph, weights, metrics, profile = package(model, split, Path(tmp))
        return registry.register(
            MODEL, graph, companions=(weights,), metrics=metrics | {"train_seconds": round(train_seconds, 2)},
            params=asdict(params), data_hash=split.data_hash(), output_profile=profile,
        )
