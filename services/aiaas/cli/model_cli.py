"""What each model type adds to the `aiaas` CLI: its submit flags, its jobs, and how to show a result.

Every model package has a `cli` module with the functions of `ModelCli`; the generic CLI
(`cli/main.py`) does the sending, waiting, summary and tracing for all of them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiaas.contract.envelopes import ChatMessage, GenerationParams, InputValue, Result
from aiaas.model_types import model_type

__all__ = ["JobSpec", "ModelCli", "model_cli"]


@dataclass
class JobSpec:
    """One job to publish: its task, inputs and (when known) the expected answer to score against."""

    inputs: dict[str, InputValue]
    task: str | None = None
    expected: Any = None
    attributes: dict[str, str] = field(default_factory=dict)
    messages: list[ChatMessage] | None = None
    """A chat, for a generative model type."""
    generation: GenerationParams | None = None


class ModelCli(Protocol):
    """The `cli` module of a model package."""

    def add_submit_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the flags of `aiaas submit <model>`."""

    def jobs_from_args(self, args: argparse.Namespace) -> list[JobSpec]:
        """The jobs the flags describe; raise AiaasError with what to do when they describe none."""

    def is_correct(self, result: Result, expected: Any) -> bool:
        """Whether an ok result matches the expected answer (for the summary's accuracy line)."""

    def describe(self, result: Result) -> str:
        """The outputs of an ok result on one short line."""

    # Optional: `save_results(args, results)`, called with every result received after `--wait`'s summary, writes
    # them out as the flags say (the vae's `--out grid.png`).


def model_cli(model: str) -> ModelCli:
    """The CLI module of a model type (imported on demand: the CLI starts fast)."""
    cli: ModelCli = model_type(model).cli()
    return cli
