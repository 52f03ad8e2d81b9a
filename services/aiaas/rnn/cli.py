"""`aiaas submit rnn ...`: the next items of sessions given on the command line, or of held-out sessions."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor
from aiaas.errors import AiaasError

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe"]

_TASK = "next_items"


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Sessions to continue, or a sample of held-out sessions with known next items."""
    parser.add_argument("--session", type=int, nargs="+", action="append", default=[], metavar="ITEM_ID",
                        help="the item ids of one session, in order (repeatable: one job each)")
    parser.add_argument("--k", type=int, default=10, help="items per result (default 10)")
    parser.add_argument("--include-seen", action="store_true",
                        help="let the answers contain items the session already holds")
    parser.add_argument("--sessions-sample", type=int, metavar="N",
                        help="send N held-out sessions without their last item; a hit is that item in the top k")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """One job per --session, then one per sampled held-out session (its last item the expected answer)."""
    specs = [_next_items(session, args) for session in args.session]
    if args.sessions_sample:
        from aiaas.rnn.sessions import load_split

        held_out = load_split().test
        picks = np.random.default_rng(0).choice(len(held_out), size=min(args.sessions_sample, len(held_out)),
                                                replace=False)
        for pick in picks.tolist():
            session = held_out.session(pick).tolist()
            specs.append(_next_items(session[:-1], args, expected=session[-1]))
    if not specs:
        raise AiaasError("nothing to send: give --session ITEM_ID [ITEM_ID ...] or --sessions-sample N")
    return specs


def _next_items(session: list[int], args: argparse.Namespace, expected: int | None = None) -> JobSpec:
    inputs = {"items": Tensor.from_numpy(np.asarray(session, dtype=np.int64)), "k": args.k,
              "exclude_seen": not args.include_seen}
    return JobSpec(inputs, task=_TASK, expected=expected)


def is_correct(result: Result, expected: Any) -> bool:
    """A hit: the session's true next item is among the answered ones."""
    items = result.outputs.get("items")
    return isinstance(items, Tensor) and expected in items.to_numpy().tolist()


def describe(result: Result) -> str:
    """`next 12 7 301 44 9 … (10 items, best 0.412)`."""
    items, scores = result.outputs.get("items"), result.outputs.get("scores")
    if not isinstance(items, Tensor) or not isinstance(scores, Tensor):
        return "next: (no items)"
    ids, values = items.to_numpy().tolist(), scores.to_numpy()
    shown = " ".join(map(str, ids[:5])) + (" …" if len(ids) > 5 else "")
    best = f", best {values[0]:.3f}" if len(values) else ""
    return f"next {shown} ({len(ids)} items{best})"
