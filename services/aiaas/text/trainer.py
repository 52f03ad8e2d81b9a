"""Build the text model: export the pretrained encoder to ONNX, train the topic head, register.

The encoder is all-MiniLM-L6-v2 from its package (frozen); the head is a linear softmax
layer trained with PyTorch on the project's labelled sentences (`labelled_sentences.py`)
and evaluated on their held-out part through the exported ONNX graph. The int8 graph
(`INT8_GRAPH`) is derived from it and registered alongside, with the same head evaluated
under it (`int8_accuracy`) and how close its embeddings stay to fp32 (`int8_cosine_min`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aiaas.metrics.drift import output_profile
from aiaas.registry.store import ModelVersion, Registry
from aiaas.text import MODEL
from aiaas.text.encoder import (
    export_onnx,
    load_encoder,
    package_dir,
    quantize_int8,
    weights_sha256,
)
from aiaas.text.head import ClassifierHead
from aiaas.text.labelled_sentences import labelled_split
from aiaas.text.runtime import INT8_GRAPH, OnnxEncoder, TextRuntime, embed_rows
from aiaas.text.tokens import TextTokenizer

__all__ = ["HeadParams", "train_head", "head_accuracy", "topic_shares", "embed_texts", "build", "BUILD_MAX_SEQ_LEN",
           "int8_metrics"]

BUILD_MAX_SEQ_LEN = 128
"""Token limit used to embed the training sentences (all of them are far shorter)."""


@dataclass(frozen=True)
class HeadParams:
    """Hyper-parameters of the classification head."""

    epochs: int = 300
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0


def train_head(embeddings: np.ndarray, labels: list[str], params: HeadParams,
               on_epoch: Callable[[int, ClassifierHead], None] | None = None, every: int = 25,
               interrupt: Callable[[], None] | None = None) -> ClassifierHead:
    """Full-batch Adam on cross-entropy; deterministic on CPU for a seed.

    `on_epoch(epoch, head)` is called every `every` epochs and after the last one. `interrupt()` is
    called before every epoch (one optimiser step); it raises to end the run there.
    """
    names = tuple(sorted(set(labels)))
    torch.manual_seed(params.seed)
    x = torch.from_numpy(embeddings)
    y = torch.tensor([names.index(label) for label in labels])
    layer = torch.nn.Linear(x.shape[1], len(names))
    optimiser = torch.optim.Adam(layer.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    for epoch in range(1, params.epochs + 1):
        if interrupt is not None:
            interrupt()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(layer(x), y).backward()
        optimiser.step()
        if on_epoch is not None and (epoch % every == 0 or epoch == params.epochs):
            on_epoch(epoch, _head(layer, names))
    return _head(layer, names)


def _head(layer: torch.nn.Linear, names: tuple[str, ...]) -> ClassifierHead:
    return ClassifierHead(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy(), names)


def head_accuracy(head: ClassifierHead, embeddings: np.ndarray, labels: list[str]) -> float:
    """Share of `labels` the head predicts from their embeddings."""
    predicted = head.scores(embeddings).argmax(axis=1)
    return float(np.mean([head.labels[p] == label for p, label in zip(predicted, labels, strict=True)]))


def topic_shares(head: ClassifierHead, embeddings: np.ndarray) -> dict[str, float]:
    """Each predicted topic's share of the texts, counted as the service counts them: a version's
    `output_profile` (from its held-out sentences), what model monitoring compares with."""
    predicted = [head.labels[k] for k in head.scores(embeddings).argmax(axis=1)]
    return output_profile(TextRuntime.output_categories, [{"labels": predicted}])


def build(registry: Registry, params: HeadParams = HeadParams()) -> ModelVersion:
    """Export, quantize, embed, train the head, check held-out accuracy under ONNX Runtime, register (production)."""
    started = time.perf_counter()
    train, held_out = labelled_split()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, tokenizer_path, head_path = (Path(tmp) / "encoder.onnx", Path(tmp) / "tokenizer.json",
                                                Path(tmp) / "head.npz")
        int8_path = Path(tmp) / INT8_GRAPH
        export_onnx(load_encoder(), onnx_path)
        quantize_int8(onnx_path, int8_path)
        shutil.copyfile(package_dir() / "tokenizer.json", tokenizer_path)
        encoder = OnnxEncoder(onnx_path.read_bytes(), providers="cpu")
        tokenizer = TextTokenizer(tokenizer_path.read_text(), BUILD_MAX_SEQ_LEN)
        head = train_head(embed_texts(encoder, tokenizer, [s for s, _ in train]), [t for _, t in train], params)
        x_held_out, y_held_out = embed_texts(encoder, tokenizer, [s for s, _ in held_out]), [t for _, t in held_out]
        accuracy = head_accuracy(head, x_held_out, y_held_out)
        int8_scores = int8_metrics(OnnxEncoder(int8_path.read_bytes(), providers="cpu"), tokenizer, head,
                                   [s for s, _ in held_out], x_held_out, y_held_out)
        head_path.write_bytes(head.to_bytes())
        return registry.register(
            MODEL, onnx_path, companions=(tokenizer_path, head_path, int8_path),
            metrics={"accuracy": accuracy, "held_out": len(held_out), **int8_scores,
                     "train_seconds": round(time.perf_counter() - started, 2)},
            output_profile=topic_shares(head, x_held_out),
            params=asdict(params) | {"encoder": "all-MiniLM-L6-v2", "encoder_weights_sha256": weights_sha256()},
            data_hash=hashlib.sha256(repr(train).encode()).hexdigest(),
        )


def int8_metrics(int8_encoder: OnnxEncoder, tokenizer: TextTokenizer, head: ClassifierHead, texts: list[str],
                 fp32_embeddings: np.ndarray, labels: list[str]) -> dict[str, float]:
    """The head's accuracy under the int8 graph, and the lowest cosine between int8 and fp32 embeddings of `texts`."""
    embeddings = embed_texts(int8_encoder, tokenizer, texts)
    cosine = np.sum(embeddings * fp32_embeddings, axis=1)
    return {"int8_accuracy": head_accuracy(head, embeddings, labels), "int8_cosine_min": round(float(cosine.min()), 4)}


def embed_texts(encoder: OnnxEncoder, tokenizer: TextTokenizer, texts: list[str]) -> np.ndarray:
    """Unit embeddings of `texts`."""
    # The runtime's own length-grouped path: training sees exactly what serving computes.
    embeddings, _ = embed_rows(encoder, [t.ids for t in tokenizer.encode(texts)])
    return embeddings
