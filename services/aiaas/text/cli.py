"""`aiaas submit text ...`: embed, compare or classify texts; or held-out labelled sentences."""

from __future__ import annotations

import argparse
from typing import Any, cast

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor
from aiaas.errors import AiaasError

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe"]


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per task, plus a labelled sample for accuracy."""
    parser.add_argument("--embed", nargs="+", metavar="TEXT", help="one embed job for these texts")
    parser.add_argument("--similarity", nargs=2, action="append", metavar=("A", "B"),
                        help="one similarity job per pair (repeat the flag)")
    parser.add_argument("--classify", nargs="+", metavar="TEXT", help="one classify job per text")
    parser.add_argument("--text-sample", type=int, metavar="N",
                        help="classify N held-out labelled sentences (scored against their topic)")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """The jobs the flags describe, in flag order."""
    specs = []
    if args.embed:
        specs.append(JobSpec({"texts": list(args.embed)}, task="embed"))
    for left, right in args.similarity or []:
        specs.append(JobSpec({"left": [left], "right": [right]}, task="similarity"))
    specs += [JobSpec({"texts": [text]}, task="classify") for text in args.classify or []]
    if args.text_sample:
        from aiaas.text.labelled_sentences import labelled_split

        _, held_out = labelled_split()
        specs += [JobSpec({"texts": [text]}, task="classify", expected=topic)
                  for text, topic in held_out[: args.text_sample]]
    if not specs:
        raise AiaasError("nothing to send: give --embed, --similarity A B, --classify or --text-sample N")
    return specs


def is_correct(result: Result, expected: Any) -> bool:
    """The predicted topic of the (single) text is the labelled one."""
    return result.outputs.get("labels") == [expected]


def describe(result: Result) -> str:
    """Task outputs in a few words: topics, cosines or embedding shapes."""
    out = result.outputs
    if "labels" in out:
        given = out.get("scores")
        scores = given.to_numpy() if isinstance(given, Tensor) else None
        best = f" p={scores.max(axis=1).min():.2f}" if scores is not None and scores.size else ""
        return f"labels={','.join(cast('list[str]', out['labels']))}{best}"
    if "embeddings" in out:
        return f"embeddings {'x'.join(map(str, cast(Tensor, out['embeddings']).shape))}"
    if "scores" in out:
        return "cosine=" + ",".join(f"{s:.3f}" for s in cast(Tensor, out["scores"]).to_numpy())
    return ", ".join(sorted(out))
