"""`aiaas submit vae ...`: generate digits (optionally into a PNG grid), encode, reconstruct or score images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor
from aiaas.errors import AiaasError
from aiaas.vision.cli import load_image

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe", "save_results", "digit_grid_png"]

_IMAGE_TASKS = {"encode": "encode", "reconstruct": "reconstruct", "anomaly_score": "anomaly_score"}
"""Flag destination → task of the jobs that send image files."""
_CELL = 4
"""Screen pixels per digit pixel in the PNG grid."""


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Digits to generate, image files to encode, reconstruct or score, or samples with known answers."""
    parser.add_argument("--generate", type=int, metavar="N", help="generate N digits in one job")
    parser.add_argument("--digit", type=int, metavar="D", help="the digit 0..9 to generate (default: any), or the "
                        "known digit of the images sent")
    parser.add_argument("--seed", type=int, help="the seed of --generate: the same seed gives the same digits")
    parser.add_argument("--out", type=Path, metavar="PNG",
                        help="write the generated digits as a PNG grid (waits for them)")
    for task in _IMAGE_TASKS:
        flag = "--" + task.replace("_", "-")
        parser.add_argument(flag, dest=task, type=Path, action="append", default=[], metavar="IMAGE",
                            help=f"an image file to {task.replace('_', ' ')} (repeatable; scaled to 8x8)")
    parser.add_argument("--digits-sample", type=int, metavar="N",
                        help="score N held-out digits (anomaly_score); correct when not flagged as anomalous")
    parser.add_argument("--noise-sample", type=int, metavar="N",
                        help="score N images of random noise (fixed seed); correct when flagged as anomalous")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """The --generate job, then one job per image file, then the sampled digits and noise (with expected answers)."""
    if args.out is not None:
        if args.generate is None:
            raise AiaasError("--out writes the digits of --generate N: give --generate N")
        args.wait = True  # the grid is written once the digits arrive
    if args.digit is not None and args.generate is None and not any(getattr(args, task) for task in _IMAGE_TASKS):
        raise AiaasError("--digit is the digit of --generate N or of the image files sent (--encode, --reconstruct, "
                         "--anomaly-score); the samples bring their own")
    digit = {} if args.digit is None else {"digit": args.digit}
    specs = []
    if args.generate is not None:
        seed = {} if args.seed is None else {"seed": args.seed}
        specs.append(JobSpec({"n": args.generate, **digit, **seed}, task="generate"))
    for task in _IMAGE_TASKS:
        specs += [JobSpec({"image": Tensor.from_numpy(load_image(path)), **digit}, task=task)
                  for path in getattr(args, task)]
    if args.digits_sample:
        from aiaas.vision.data import load_split

        held_out = load_split().test_x
        picks = np.random.default_rng(0).choice(len(held_out), size=min(args.digits_sample, len(held_out)),
                                                replace=False)
        specs += [JobSpec({"image": Tensor.from_numpy(held_out[i][0])}, task="anomaly_score", expected=False)
                  for i in picks]
    if args.noise_sample:
        noise = np.random.default_rng(0).uniform(0, 16, (args.noise_sample, 8, 8)).astype(np.float32)
        specs += [JobSpec({"image": Tensor.from_numpy(image)}, task="anomaly_score", expected=True) for image in noise]
    if not specs:
        raise AiaasError("nothing to send: give --generate N, --encode/--reconstruct/--anomaly-score IMAGE, "
                         "--digits-sample N or --noise-sample N")
    return specs


def is_correct(result: Result, expected: Any) -> bool:
    """The anomaly decision is the expected one (held-out digits: not anomalous; noise: anomalous)."""
    return result.outputs.get("anomalous") is expected


def describe(result: Result) -> str:
    """`generated 16 digits (seed 7)`, `digit=3 score=97.1 anomalous=False`, ... ."""
    out = result.outputs
    if "images" in out:
        digits = out.get("digits")
        shown = " ".join(map(str, digits.to_numpy().tolist()[:10])) if isinstance(digits, Tensor) else "?"
        return f"generated {_count(out['images'])} digits [{shown}{' …' if _count(out['images']) > 10 else ''}] " \
               f"seed={out.get('seed')}"
    if "score" in out:
        return f"digit={out.get('digit')} score={out['score']:.1f} nats anomalous={out.get('anomalous')}"
    mean = out.get("mean")
    if isinstance(mean, Tensor):
        return f"digit={out.get('digit')} mean=[{' '.join(f'{v:.2f}' for v in mean.to_numpy())}]"
    return f"digit={out.get('digit')} reconstruction_nll={out.get('reconstruction_nll', float('nan')):.1f} nats"


def save_results(args: argparse.Namespace, results: list[Result]) -> None:
    """With --out: every generated digit of the results, as one PNG grid."""
    if args.out is None:
        return
    images = [generated.to_numpy() for generated in (r.outputs.get("images") for r in results if r.status == "ok")
              if isinstance(generated, Tensor)]
    if not images:
        raise AiaasError(f"no generated digits arrived, so {args.out} was not written")
    args.out.write_bytes(digit_grid_png(np.concatenate(images)))
    print(f"wrote {sum(len(i) for i in images)} digits to {args.out}")


def digit_grid_png(images: np.ndarray) -> bytes:
    """Digits [N, 8, 8] (ink 0..16) as a PNG: a near-square grid, dark ink on white, each pixel _CELL wide."""
    import io

    from PIL import Image

    columns = int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // columns)
    side = 8 * _CELL + 2  # a white margin of one screen pixel around each digit
    canvas = np.full((rows * side, columns * side), 255, np.uint8)
    for index, image in enumerate(images):
        ink = 255 - np.clip(image / 16.0 * 255, 0, 255).astype(np.uint8)
        row, column = divmod(index, columns)
        canvas[row * side + 1 : row * side + 1 + 8 * _CELL, column * side + 1 : column * side + 1 + 8 * _CELL] = \
            np.kron(ink, np.ones((_CELL, _CELL), np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _count(images: Any) -> int:
    return int(images.shape[0]) if isinstance(images, Tensor) else 0
