"""The digits data: scikit-learn's bundled 8x8 images (no download), split with a fixed seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from aiaas.errors import InvalidJob

__all__ = ["DigitsSplit", "load_split", "split_for_job", "includes_held_out", "IMAGE_SHAPE", "MAX_INTENSITY"]

IMAGE_SHAPE = (8, 8)
MAX_INTENSITY = 16.0
SPLIT_SEED = 20240601


@dataclass(frozen=True)
class DigitsSplit:
    """Train and held-out images (float32, N x 1 x 8 x 8, values 0..16) with their labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def data_hash(self) -> str:
        """sha256 of the training arrays: what the model was trained on."""
        return hashlib.sha256(self.train_x.tobytes() + self.train_y.tobytes()).hexdigest()


def load_split(test_fraction: float = 0.25) -> DigitsSplit:
    """The same stratified split every time (fixed seed); the held-out part is never trained on."""
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    tx, vx, ty, vy = train_test_split(
        images, labels, test_size=test_fraction, random_state=SPLIT_SEED, stratify=labels
    )
    return DigitsSplit(tx, ty, vx, vy)


def includes_held_out(split: DigitsSplit) -> bool:
    """Whether any training image is one of the held-out digits, to the nearest intensity (a copy of the test set)."""
    rounded = lambda images: np.rint(images).astype(np.int16).reshape(len(images), -1)  # noqa: E731
    held_out = {row.tobytes() for row in rounded(split.test_x)}
    return any(row.tobytes() in held_out for row in rounded(split.train_x))


def split_for_job(data: dict | None, model: str) -> DigitsSplit:
    """The built-in split, or a training job's `images` and `labels` as the training part (the held-out digits stay for
    evaluation); InvalidJob naming `model` and what is wrong with the data."""
    builtin = load_split()
    if data is None:
        return builtin
    # Column names: `images`/`labels` (inline, NPZ, Parquet) or `image`/`label` (JSONL rows, one image each).
    images, labels = data.get("images", data.get("image")), data.get("labels", data.get("label"))
    if images is None or labels is None or len(data) != 2:
        raise InvalidJob(f"{model} training data needs exactly `images` and `labels`; got {', '.join(sorted(data))}")
    try:
        images = np.array(images, dtype=np.float32)  # a writable copy (inline tensors are read-only views)
        if images.ndim not in (3, 4) or images.shape[-2:] != IMAGE_SHAPE or images.size == 0:
            raise ValueError(f"got shape {list(images.shape)}")
        images = images.reshape(-1, 1, *IMAGE_SHAPE)
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: got {labels.dtype} of shape {list(labels.shape)}")
        labels = labels.astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise InvalidJob(f"{model} training data: images must be [N, 8, 8] numbers, labels [N] integers "
                         f"({exc})") from exc
    if len(images) != len(labels) or len(labels) == 0:
        raise InvalidJob(f"{model} training data: {len(images)} images but {len(labels)} labels")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > MAX_INTENSITY:
        raise InvalidJob(f"{model} training images must be finite and within 0..16")
    if labels.min() < 0 or labels.max() > 9:
        raise InvalidJob(f"{model} training labels must be digits 0..9")
    return DigitsSplit(images, labels, builtin.test_x, builtin.test_y)
