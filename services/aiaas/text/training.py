"""Text training jobs: a new topic head over the frozen all-MiniLM-L6-v2 encoder.

Inputs (all optional): `epochs`, `learning_rate`, `seed`; data inline as `texts` and
`labels` (lists of strings of equal length) or `data_uri` to a file with those columns
(NPZ string arrays, JSONL rows `{"text": ..., "label": ...}` or `{"texts":…}`-style columns,
Parquet); `base_version` whose encoder to use (the new version's parent), default
`production`. Evaluation: the built-in held-out sentences, or for the job's own data a
seeded 20 % of it — a version scored that way (`scored_on: job_data`) is never promoted to
`production` automatically.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.text import MODEL
from aiaas.text.encoder import quantize_int8
from aiaas.text.labelled_sentences import labelled_split
from aiaas.text.runtime import INT8_GRAPH, OnnxEncoder
from aiaas.text.tokens import TextTokenizer
from aiaas.text.trainer import (
    BUILD_MAX_SEQ_LEN,
    HeadParams,
    embed_texts,
    head_accuracy,
    int8_metrics,
    topic_shares,
    train_head,
)
from aiaas.training.protocol import Candidate, ProgressCallback
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal

__all__ = ["TextTrainer"]

_EPOCHS_PER_REPORT = 25
_TEXTS_PER_EMBED_CALL = 1024
"""Embedding runs in slices of this many texts so a stop or time limit is seen between them."""


class TextTrainer:
    """Trains the classification head for a training job (the encoder stays as it is)."""

    model = MODEL
    metric = "accuracy"

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Embed the data with the base version's encoder, train and evaluate a head, write the artifacts."""
        stop = stop or StopSignal()
        params = replace(HeadParams(), **{k: v for k, v in request.params.items() if k != "batch_size"})
        train_rows, held_out = _labelled(request.data)
        base = registry.resolve(MODEL, request.base_version or "production")
        _, onnx_bytes = registry.load_verified(MODEL, str(base.version))
        files = registry.load_companions(base)
        encoder = OnnxEncoder(onnx_bytes, providers="cpu")
        tokenizer = TextTokenizer(files["tokenizer.json"].decode(), BUILD_MAX_SEQ_LEN)
        started = time.perf_counter()
        x_train = _embed(encoder, tokenizer, [t for t, _ in train_rows], stop)
        x_test = _embed(encoder, tokenizer, [t for t, _ in held_out], stop)
        y_test = [label for _, label in held_out]

        def report(epoch: int, head) -> None:
            elapsed = time.perf_counter() - started
            progress(TrainingProgress(epoch=epoch, epochs=params.epochs, step=epoch,
                                      metric=head_accuracy(head, x_test, y_test),
                                      metric_name=self.metric, eta_s=elapsed / epoch * (params.epochs - epoch)))

        head = train_head(x_train, [label for _, label in train_rows], params, on_epoch=report,
                          every=_EPOCHS_PER_REPORT, interrupt=stop)
        stop.check()
        artifact, tokenizer_path, head_path = workdir / "encoder.onnx", workdir / "tokenizer.json", workdir / "head.npz"
        artifact.write_bytes(onnx_bytes)
        tokenizer_path.write_bytes(files["tokenizer.json"])
        head_path.write_bytes(head.to_bytes())
        int8_path = workdir / INT8_GRAPH
        if INT8_GRAPH in files:  # the base's int8 encoder goes on with the new head
            int8_path.write_bytes(files[INT8_GRAPH])
        else:  # a base built before int8 graphs existed: derive it (deterministic, the same graph a build makes)
            quantize_int8(artifact, int8_path)
        int8_encoder = OnnxEncoder(files.get(INT8_GRAPH) or int8_path.read_bytes(), providers="cpu")
        metrics = {"accuracy": head_accuracy(head, x_test, y_test), "held_out": float(len(held_out))}
        metrics |= int8_metrics(int8_encoder, tokenizer, head, [t for t, _ in held_out], x_test, y_test)
        metrics["train_seconds"] = round(time.perf_counter() - started, 2)
        return Candidate(artifact, metrics,
                         asdict(params) | {k: v for k, v in base.params.items() if k.startswith("encoder")},
                         hashlib.sha256(repr(train_rows).encode()).hexdigest(), (tokenizer_path, head_path, int8_path),
                         base.version, scored_on="reference" if request.data is None else "job_data",
                         output_profile=topic_shares(head, x_test))


def _embed(encoder: OnnxEncoder, tokenizer: TextTokenizer, texts: list[str], stop: StopSignal) -> np.ndarray:
    """`embed_texts` in slices, checking `stop` before each (a job's own data may take minutes to embed)."""
    slices = []
    for start in range(0, len(texts), _TEXTS_PER_EMBED_CALL):
        stop.check()
        slices.append(embed_texts(encoder, tokenizer, texts[start : start + _TEXTS_PER_EMBED_CALL]))
    return np.concatenate(slices) if len(slices) != 1 else slices[0]


def _labelled(data: dict | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    if data is None:
        return labelled_split()
    texts, labels = data.get("texts", data.get("text")), data.get("labels", data.get("label"))
    if texts is None or labels is None or len(data) != 2:
        raise InvalidJob(f"text training data needs `texts` and `labels`; got {', '.join(sorted(data))}")
    if isinstance(texts, str) or isinstance(labels, str):
        raise InvalidJob("text training data: `texts` and `labels` must be lists, not single strings")
    texts, labels = [str(t) for t in list(texts)], [str(label) for label in list(labels)]
    if len(texts) != len(labels) or len(texts) < 10:
        raise InvalidJob(f"text training data: {len(texts)} texts and {len(labels)} labels (at least 10 pairs)")
    if len(set(labels)) < 2:
        raise InvalidJob("text training data needs at least two different labels")
    rows = list(zip(texts, labels, strict=True))
    random.Random(7).shuffle(rows)
    cut = max(1, len(rows) // 5)
    return rows[cut:], rows[:cut]
