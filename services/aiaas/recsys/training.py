"""Recsys training jobs: the matrix factorisation on the generated ratings or on the job's own ratings.

Inputs (all optional):

- `epochs`: full-batch Adam steps. Every step sees every training rating, so one step is one
  epoch (default 100, as `build`). `learning_rate` (default 0.05) and `seed` (the random start
  of the factors, default 0). `batch_size` is refused: recsys training is full-batch.
- No data: the generated ratings exactly as `build` makes them (`RatingsConfig()`, same seed),
  scored on their built-in held-out ratings (2 per user), so the numbers compare with `build`'s.
- Own data: inline columns `user_id`, `item_id` (integers) and `rating` (numbers), all of one
  length, or `data_uri` to a file with those columns (NPZ arrays, Parquet columns, JSONL rows
  `{"user_id": 3, "item_id": 17, "rating": 4}`). Ids live in the id space of the built-in data,
  users 0..999 and items 0..399, so every version ranks the same items and the serving tables
  fit the graph; users absent from the data are served by popularity. Each (user, item) pair
  at most once; ratings finite and ≥ 0 (a rated cell weighs `1 + rating`, an unrated one 1).
  Evaluation: one rating of every user with at least 3 ratings is held out (a fixed seed, not
  the job's, so the same data always gives the same split); at least 10 such users are needed.
  These scores are on the job's own hold-out, so they compare only with versions trained on the
  same data: such a version (`scored_on: job_data`) is never promoted to `production`
  automatically, and neither is one warm-started from it.
- `base_version`: warm start from that version's factors (the `user_factors`, `item_factors`
  and `item_bias` initializers of its ONNX graph); it becomes the new version's parent. A
  version whose graph does not keep them by name (exported with constant folding, before
  training jobs existed) is refused: rebuild it or train from scratch (no `base_version`).

The candidate is what `build` registers: `recsys.onnx` plus `serving.npz`, metrics
`hit_rate_at_10` (the served graph) and `popularity_hit_rate_at_10` (the baseline on the same
held-out items), `held_out_users` and `train_seconds`. Progress: every 10 steps and the last,
with the loss and the PyTorch model's hit rate@10 on the held-out items.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.recsys import MODEL
from aiaas.recsys.data import Ratings, RatingsConfig, RatingsSplit, load_split
from aiaas.recsys.model import MatrixFactorization
from aiaas.recsys.runtime import DEFAULT_K
from aiaas.recsys.trainer import FACTOR_NAMES, TrainParams, package, read_factors, train
from aiaas.registry.store import Registry
from aiaas.training.protocol import Candidate, ProgressCallback, scored_on_job_data
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal

__all__ = ["RecsysTrainer", "COLUMNS"]

COLUMNS = ("user_id", "item_id", "rating")
"""The columns of a job's own ratings."""
_STEPS_PER_REPORT = 10
_HOLD_OUT_SEED = 7
_MIN_RATINGS_TO_HOLD_OUT = 3
_MIN_EVALUATION_USERS = 10


class RecsysTrainer:
    """Trains the recsys factorisation for a training job."""

    model = MODEL
    metric = f"hit_rate_at_{DEFAULT_K}"

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Check the data, train (or warm-start), export graph + serving tables, score the served graph."""
        stop = stop or StopSignal()
        if "batch_size" in request.params:
            raise InvalidJob("recsys trains full-batch (every step sees every rating); `batch_size` does not apply")
        params = replace(TrainParams(), **request.params)
        split, data_params = _split_for(request.data)
        initial, parent = None, None
        # The generated ratings are reproducible, so a job's own data may hold the built-in held-out ones:
        # its hold-out, and anything warm-started from a version scored on one, is the job's own data.
        job_data = request.data is not None
        if request.base_version is not None:
            initial, parent = _base_factors(registry, request.base_version, split)
            params = replace(params, dim=initial["user_factors"].shape[1])
            job_data = job_data or scored_on_job_data(registry.resolve(MODEL, str(parent)))
        evaluate = _HitRate(split, DEFAULT_K)
        started = time.perf_counter()

        def on_step(step: int, loss: float, model: MatrixFactorization) -> None:
            if step % _STEPS_PER_REPORT and step != params.epochs:
                return
            elapsed = time.perf_counter() - started
            progress(TrainingProgress(epoch=step, epochs=params.epochs, step=step, loss=loss, metric=evaluate(model),
                                      metric_name=self.metric, eta_s=elapsed / step * (params.epochs - step)))

        stop.check()
        model = train(split, params, initial=initial, on_step=on_step, interrupt=stop)
        train_seconds = time.perf_counter() - started
        stop.check()
        artifact, serving, scores, profile = package(model, split, workdir)
        metrics = scores | {"held_out_users": float(len(split.held_out())), "train_seconds": round(train_seconds, 2)}
        return Candidate(artifact, metrics, asdict(params) | {"data": data_params}, split.data_hash(),
                         (serving,), parent, scored_on="job_data" if job_data else "reference", output_profile=profile)


class _HitRate:
    """Hit rate@k of the PyTorch model on a split's held-out items, seen items left out (as the served graph)."""

    def __init__(self, split: RatingsSplit, k: int) -> None:
        held_out = split.held_out()
        self._users = torch.tensor(sorted(held_out), dtype=torch.int64)
        row = {user: r for r, user in enumerate(sorted(held_out))}
        self._seen = torch.zeros(len(row), split.n_items, dtype=torch.bool)
        self._held = torch.zeros(len(row), split.n_items, dtype=torch.bool)
        known = np.isin(split.train.users, self._users.numpy())
        rows = np.array([row[u] for u in split.train.users[known].tolist()], dtype=np.int64)
        self._seen[torch.from_numpy(rows), torch.from_numpy(split.train.items[known])] = True
        for user, items in held_out.items():
            self._held[row[user], sorted(items)] = True
        self._k = k

    def __call__(self, model: MatrixFactorization) -> float:
        with torch.no_grad():
            scores = (model.user_factors[self._users] @ model.item_factors.T + model.item_bias)
            top = torch.topk(scores.masked_fill(self._seen, float("-inf")), self._k, dim=1).indices
            return float(self._held.gather(1, top).any(dim=1).float().mean())


def _split_for(data: dict[str, Any] | None) -> tuple[RatingsSplit, dict[str, Any]]:
    """The built-in split (and its config), or the job's ratings with a seeded hold-out per user."""
    config = RatingsConfig()
    if data is None:
        return load_split(config), asdict(config)
    if set(data) != set(COLUMNS):
        raise InvalidJob("recsys training data needs exactly `user_id`, `item_id` and `rating`; "
                         f"got {', '.join(sorted(data))}")
    users = _ids(data["user_id"], "user_id", config.n_users)
    items = _ids(data["item_id"], "item_id", config.n_items)
    ratings = _ratings(data["rating"])
    if not len(users) == len(items) == len(ratings):
        raise InvalidJob(f"recsys training data: {len(users)} user_id, {len(items)} item_id and "
                         f"{len(ratings)} rating values (they must be of one length)")
    cells = users * config.n_items + items
    unique, counts = np.unique(cells, return_counts=True)
    if len(unique) != len(cells):
        twice = int(unique[counts > 1][0])
        raise InvalidJob(f"recsys training data rates a (user, item) pair more than once, e.g. "
                         f"user {twice // config.n_items}, item {twice % config.n_items}")
    order = np.lexsort((items, users))
    everything = Ratings(users[order], items[order], ratings[order])
    per_user = np.bincount(everything.users, minlength=config.n_users)
    eligible = np.flatnonzero(per_user >= _MIN_RATINGS_TO_HOLD_OUT)
    if len(eligible) < _MIN_EVALUATION_USERS:
        raise InvalidJob(f"recsys training data: {len(eligible)} users have {_MIN_RATINGS_TO_HOLD_OUT}+ ratings; "
                         f"at least {_MIN_EVALUATION_USERS} are needed to hold one out each for evaluation")
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    held = np.zeros(len(everything), dtype=bool)
    held[starts[eligible] + np.random.default_rng(_HOLD_OUT_SEED).integers(per_user[eligible])] = True
    split = RatingsSplit(config.n_users, config.n_items, everything.take(~held), everything.take(held))
    return split, {"source": "job", "ratings": len(everything), "users": int(np.count_nonzero(per_user)),
                   "items": int(np.count_nonzero(np.bincount(everything.items)))}


def _column(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise InvalidJob(f"recsys training data: `{name}` must be a list or array, not a single string")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidJob(f"recsys training data: `{name}` cannot be read as numbers ({exc})") from exc
    if array.ndim != 1:
        raise InvalidJob(f"recsys training data: `{name}` must be one-dimensional; got shape {list(array.shape)}")
    return array


def _ids(value: Any, name: str, count: int) -> np.ndarray:
    array = _column(value, name)
    if array.dtype.kind not in "iu":
        raise InvalidJob(f"recsys training data: `{name}` must be integers; got {array.dtype}")
    if len(array) and (array.min() < 0 or array.max() >= count):
        raise InvalidJob(f"recsys training data: `{name}` must be within 0..{count - 1} (the built-in id space); "
                         f"got {array.min()}..{array.max()}")
    return array.astype(np.int64)


def _ratings(value: Any) -> np.ndarray:
    array = _column(value, "rating")
    if array.dtype.kind not in "iuf":
        raise InvalidJob(f"recsys training data: `rating` must be numbers; got {array.dtype}")
    if not np.isfinite(array).all() or (len(array) and array.min() < 0):
        raise InvalidJob("recsys training data: `rating` must be finite and ≥ 0")
    return array.astype(np.float32)


def _base_factors(registry: Registry, ref: str, split: RatingsSplit) -> tuple[dict[str, np.ndarray], int]:
    """The factors of the version to warm-start from, checked against the split's users and items."""
    base = registry.resolve(MODEL, ref)
    _, onnx_bytes = registry.load_verified(MODEL, str(base.version))
    factors = read_factors(onnx_bytes)
    if factors is None:
        raise InvalidJob(f"recsys v{base.version}'s graph does not keep its factors ({', '.join(FACTOR_NAMES)}) by "
                         "name, so training cannot start from it; train without `base_version` (from scratch)")
    users, items, bias = (factors[name] for name in FACTOR_NAMES)
    if users.ndim != 2 or items.shape != (split.n_items, users.shape[1]) or bias.shape != (split.n_items,) \
            or users.shape[0] != split.n_users:
        raise InvalidJob(f"recsys v{base.version} has {users.shape[0]} users and {len(bias)} items; "
                         f"training needs {split.n_users} and {split.n_items}")
    return factors, base.version
