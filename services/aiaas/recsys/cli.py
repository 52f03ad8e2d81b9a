"""`aiaas submit recsys ...`: recommendations for users, similar items, or held-out users with known answers."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import Result, Tensor
from aiaas.errors import AiaasError

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe"]


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Users to recommend for, items to find neighbours of, or a sample of held-out users."""
    parser.add_argument("--recommend", type=int, action="append", default=[], metavar="USER_ID",
                        help="recommend items for this user (repeatable)")
    parser.add_argument("--similar-items", type=int, action="append", default=[], metavar="ITEM_ID",
                        help="find the items most similar to this one (repeatable)")
    parser.add_argument("--k", type=int, default=10, help="items per result (default 10)")
    parser.add_argument("--include-seen", action="store_true",
                        help="let recommendations contain items the user already rated")
    parser.add_argument("--users-sample", type=int, metavar="N",
                        help="recommend for N held-out users; a hit is any of their held-out items")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """One job per --recommend and --similar-items, then one per sampled held-out user (with its answer)."""
    specs = [_recommend(user, args) for user in args.recommend]
    specs += [JobSpec({"item_id": item, "k": args.k}, task="similar_items") for item in args.similar_items]
    if args.users_sample:
        from aiaas.recsys.data import load_split

        held_out = load_split().held_out()
        users = sorted(held_out)
        picks = np.random.default_rng(0).choice(len(users), size=min(args.users_sample, len(users)), replace=False)
        for pick in picks:
            user = users[pick]
            specs.append(_recommend(user, args, expected=sorted(held_out[user])))
    if not specs:
        raise AiaasError("nothing to send: give --recommend USER_ID, --similar-items ITEM_ID or --users-sample N")
    return specs


def _recommend(user: int, args: argparse.Namespace, expected: list[int] | None = None) -> JobSpec:
    inputs = {"user_id": int(user), "k": args.k, "exclude_seen": not args.include_seen}
    return JobSpec(inputs, task="recommend", expected=expected)


def is_correct(result: Result, expected: Any) -> bool:
    """A hit: any of the user's held-out items is among the recommended ones."""
    items = result.outputs.get("items")
    return isinstance(items, Tensor) and bool(set(items.to_numpy().tolist()) & set(expected))


def describe(result: Result) -> str:
    """`collaborative 12 7 301 44 9 … (10 items, best 0.912)`."""
    items, scores = result.outputs.get("items"), result.outputs.get("scores")
    if not isinstance(items, Tensor) or not isinstance(scores, Tensor):
        return f"strategy={result.outputs.get('strategy')} (no items)"
    ids, values = items.to_numpy().tolist(), scores.to_numpy()
    shown = " ".join(map(str, ids[:5])) + (" …" if len(ids) > 5 else "")
    best = f", best {values[0]:.3f}" if len(values) else ""
    return f"{result.outputs.get('strategy')} {shown} ({len(ids)} items{best})"
