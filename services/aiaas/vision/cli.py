"""`aiaas submit vision ...`: digits from image files or from the held-out set (with labels)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor
from aiaas.errors import AiaasError

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe", "load_image"]


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Image files to classify, or a sample of held-out digits."""
    parser.add_argument("images", nargs="*", type=Path, help="image files (PNG, JPEG, ...) to classify")
    parser.add_argument("--digits-sample", type=int, metavar="N", help="send N held-out digits with known labels")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """One job per image file, then one per sampled held-out digit (labelled)."""
    specs = [JobSpec({"image": Tensor.from_numpy(load_image(path))}) for path in args.images]
    if args.digits_sample:
        from aiaas.vision.data import load_split

        split = load_split()
        picks = np.random.default_rng(0).choice(len(split.test_x), size=min(args.digits_sample, len(split.test_x)),
                                                replace=False)
        specs += [JobSpec({"image": Tensor.from_numpy(split.test_x[i][0])}, expected=int(split.test_y[i]))
                  for i in picks]
    if not specs:
        raise AiaasError("nothing to send: give image files or --digits-sample N")
    return specs


def is_correct(result: Result, expected: Any) -> bool:
    """The predicted label is the true digit."""
    return result.outputs.get("label") == expected


def describe(result: Result) -> str:
    """`label=7 p=0.998`."""
    probs = result.outputs.get("probabilities")
    score = f"{probs.to_numpy().max():.3f}" if isinstance(probs, Tensor) else "?"
    return f"label={result.outputs.get('label')} p={score}"


def load_image(path: Path) -> np.ndarray:
    """An image file as 8x8 ink intensities 0..16 (dark ink on a light background is inverted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        gray = np.asarray(Image.open(path).convert("L").resize((8, 8), Image.Resampling.LANCZOS), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise AiaasError(f"cannot read image {path}: {exc}") from exc
    if gray.mean() > 127:
        gray = 255.0 - gray
    return gray / 255.0 * 16.0
