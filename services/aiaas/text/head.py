"""The topic classification head over sentence embeddings: softmax(E · Wᵀ + b), in numpy.

Stored in the registry as `head.npz` (arrays only, loaded with `allow_pickle=False`); trained
by `trainer.train_head` with PyTorch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassifierHead"]


@dataclass(frozen=True)
class ClassifierHead:
    """A linear softmax classifier: `weight` [topics, dim], `bias` [topics], `labels` [topics]."""

    weight: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities [n, topics] for unit embeddings [n, dim]."""
        logits = embeddings @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_bytes(self) -> bytes:
        """The `head.npz` bytes."""
        buffer = io.BytesIO()
        np.savez(buffer, weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32),
                 labels=np.array(self.labels, dtype=np.str_))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClassifierHead:
        """Read `head.npz` (plain arrays; pickled objects are refused)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(arrays["weight"], arrays["bias"], tuple(str(x) for x in arrays["labels"]))
