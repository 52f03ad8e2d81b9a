"""`aiaas submit toy --x 1 2 3 4`."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--x", type=float, nargs=4, required=True, help="the vector to double")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    x = np.array(args.x, dtype=np.float32)
    return [JobSpec({"x": Tensor.from_numpy(x)}, expected=(2 * x).tolist())]


def is_correct(result: Result, expected: Any) -> bool:
    return result.outputs["y"].to_numpy().tolist() == expected


def describe(result: Result) -> str:
    return "y=" + " ".join(f"{v:g}" for v in result.outputs["y"].to_numpy().tolist())
