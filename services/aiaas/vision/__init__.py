"""Vision service: a small CNN classifying 8x8 handwritten digits (scikit-learn's bundled set).

Entry point: `python -m aiaas.vision` (the service). Build the model: `aiaas models build vision`.
Topics: `aiaas.vision.infer` → `aiaas.vision.results`. Contract: one input `image`, a tensor of
shape [8, 8] (or [1, 8, 8]) with values 0..16 (ink intensity); outputs `label` and `probabilities`.
"""

MODEL = "vision"

__all__ = ["MODEL"]
