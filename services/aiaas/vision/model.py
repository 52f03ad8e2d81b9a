"""The CNN (PyTorch). Scaling and softmax live inside the graph, so the ONNX model takes raw 0..16 pixels."""

from __future__ import annotations

import torch
from torch import nn

from aiaas.vision.data import MAX_INTENSITY

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """conv(16) → conv(32) → maxpool → dense(64) → dense(10) → softmax, for 1x8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of raw (0..16) images."""
        return self.classifier(self.features(images / MAX_INTENSITY))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (what the served model returns)."""
        return torch.softmax(self.logits(images), dim=1)
