"""The digits data: scikit-learn's bundled 8x8 images (no download), split with a fixed seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["DigitsSplit", "load_split", "IMAGE_SHAPE", "MAX_INTENSITY"]

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
