"""Train the CNN on the digits, export it to ONNX, check it with ONNX Runtime, register it."""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from aiaas.metrics.drift import output_profile
from aiaas.registry.store import ModelVersion, Registry
from aiaas.vision import MODEL
from aiaas.vision.data import DigitsSplit, load_split
from aiaas.vision.model import DigitsCNN
from aiaas.vision.runtime import VisionRuntime

__all__ = ["TrainParams", "train", "export_onnx", "weights_npz", "onnx_labels", "label_shares", "build"]


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of a training run."""

    epochs: int = 25
    learning_rate: float = 2e-3
    batch_size: int = 64
    seed: int = 0


EpochCallback = Callable[[int, int, float, DigitsCNN], None]
"""Called after each epoch with (epoch, steps so far, mean loss, model)."""


def train(split: DigitsSplit, params: TrainParams, *, initial: dict[str, np.ndarray] | None = None,
          on_epoch: EpochCallback | None = None, interrupt: Callable[[], None] | None = None) -> DigitsCNN:
    """Adam on cross-entropy, from `initial` weights when fine-tuning; deterministic on CPU for a seed.

    `interrupt()` is called before every optimiser step; it raises to end the run there (a trainer
    that is stopping, a job out of time).
    """
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = DigitsCNN()
    if initial is not None:
        model.load_state_dict({name: torch.from_numpy(value) for name, value in initial.items()})
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    x, y = torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(x), params.batch_size):
            if interrupt is not None:
                interrupt()
            idx = order[start : start + params.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model.logits(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, steps, float(np.mean(losses)), model.eval())
    return model.eval()


def weights_npz(model: DigitsCNN, path: Path) -> None:
    """The weights as plain arrays (`weights.npz`, no pickle): what a fine-tuning job starts from."""
    np.savez(path, **{name: t.detach().numpy() for name, t in model.state_dict().items()})


def export_onnx(model: DigitsCNN, path: Path) -> None:
    """ONNX with a dynamic batch axis: input `image` [N,1,8,8] float32 → `probabilities` [N,10]."""
    example = torch.zeros(1, 1, 8, 8)
    # The TorchScript exporter is chosen on purpose: for this plain CNN it is fast, needs no
    # torch.export tracing, and yields a small opset-17 graph. Its deprecation notice is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(path), input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17, dynamo=False,
        )


def onnx_labels(path: Path, split: DigitsSplit) -> np.ndarray:
    """The exported graph's predicted label of every held-out image, run by ONNX Runtime (what the service serves):
    its accuracy and its `output_profile` come from them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"image": split.test_x})
    return np.asarray(probs.argmax(axis=1))


def label_shares(labels: np.ndarray) -> dict[str, float]:
    """Each predicted label's share, counted as the service counts them: a version's `output_profile`, what model
    monitoring compares with."""
    return output_profile(VisionRuntime.output_categories, ({"label": int(label)} for label in labels))


def build(registry: Registry, params: TrainParams = TrainParams()) -> ModelVersion:
    """Train, export, verify and register a new vision version (aliased `production`)."""
    split = load_split()
    started = time.perf_counter()
    model = train(split, params)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path, weights = Path(tmp) / "model.onnx", Path(tmp) / "weights.npz"
        export_onnx(model, path)
        weights_npz(model, weights)
        labels = onnx_labels(path, split)
        return registry.register(
            MODEL, path, companions=(weights,),
            metrics={"accuracy": float(np.mean(labels == split.test_y)), "train_seconds": round(train_seconds, 2)},
            output_profile=label_shares(labels), params=asdict(params), data_hash=split.data_hash(),
        )
