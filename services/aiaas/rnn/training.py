"""RNN training jobs: the GRU on the generated sessions or on the job's own sessions.

Inputs (all optional):

- `epochs`, `learning_rate`, `batch_size` (sessions per optimiser step), `seed`, and this type's own `dim` (item
  embedding size) and `hidden_size` (the GRU's state), each at most MAX_WIDTH; defaults as `build`'s
  (`trainer.TrainParams`).
- No data: the generated sessions exactly as `build` makes them (`SessionsConfig()`, same seed), scored on their
  built-in held-out sessions, so the numbers compare with `build`'s.
- Own data, in the item space of the built-in data (items 0..399, so every version ranks the same items), either
  - `items`: one session per row, a list of item ids in the order they were viewed (JSONL rows
    `{"items": [3, 17, 42]}`, or a Parquet list column), or
  - `session_id` and `item_id`: one view per row, integer columns of one length (inline tensors, NPZ arrays,
    Parquet columns, JSONL rows `{"session_id": 7, "item_id": 3}`); a session's items are its rows in order,
    sessions in ascending id order.
  Every session holds 2..MAX_SESSION_ITEMS items; MIN_SESSIONS sessions and MAX_TOTAL_ITEMS items at most.
  Evaluation: a tenth of the sessions (a fixed seed, not the job's, so the same data always gives the same
  split) is held out, and every prefix of each predicts the item after it. These scores are on the job's own
  hold-out, so they compare only with versions trained on the same data: such a version (`scored_on: job_data`)
  is never promoted to `production` automatically, and neither is one warm-started from it.
- `base_version`: warm start from that version's `weights.npz`; its sizes (`dim`, `hidden_size`) are kept, and a
  job that asks for other ones is refused. It becomes the new version's parent.

The candidate is what `build` registers: `rnn.onnx` plus `weights.npz`, metrics `recall_at_10` and `mrr_at_10`
(the served graph), the MF and popularity baselines on the same held-out sessions (`trainer.baseline_metrics`),
`held_out_examples` and `train_seconds`. Progress: every epoch, with the loss and the PyTorch model's
recall@10 on the held-out sessions.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.rnn import MODEL
from aiaas.rnn.model import SessionGRU
from aiaas.rnn.runtime import DEFAULT_K
from aiaas.rnn.sessions import Sessions, SessionsConfig, SessionsSplit, load_split
from aiaas.rnn.trainer import WEIGHTS_FILE, HeldOut, TrainParams, package, train
from aiaas.training.protocol import Candidate, ProgressCallback, scored_on_job_data
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal

__all__ = ["RnnTrainer", "MAX_SESSION_ITEMS", "MAX_TOTAL_ITEMS", "MIN_SESSIONS", "MAX_WIDTH"]

MAX_SESSION_ITEMS = 200
"""Longest session a job's data may hold (training pads a batch to its longest session)."""
MAX_TOTAL_ITEMS = 1_000_000
"""Most item views in a job's data, all sessions together."""
MIN_SESSIONS = 50
"""Fewest sessions a job's data may hold: a tenth of them is held out to score the model."""
MAX_WIDTH = 1024
"""Largest `dim` or `hidden_size` a job may ask for."""
_HELD_OUT_SHARE = 0.1
_HOLD_OUT_SEED = 7


class RnnTrainer:
    """Trains the session GRU for a training job."""

    model = MODEL
    metric = f"recall_at_{DEFAULT_K}"
    hyper_parameters: dict[str, type] = {"dim": int, "hidden_size": int}

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Check the data, train (or warm-start), export graph + weights, score the served graph and baselines."""
        stop = stop or StopSignal()
        params = replace(TrainParams(), **request.params)
        if max(params.dim, params.hidden_size) > MAX_WIDTH:
            raise InvalidJob(f"`dim` and `hidden_size` must be at most {MAX_WIDTH}")
        split, data_params = _split_for(request.data)
        initial, parent = None, None
        # The generated sessions are reproducible, so a job's own data may hold the built-in held-out ones: its
        # hold-out, and anything warm-started from a version scored on one, is the job's own data.
        job_data = request.data is not None
        if request.base_version is not None:
            initial, parent = _base_weights(registry, request.base_version, split.n_items)
            params = _sizes_of(initial, params, request.params, parent)
            job_data = job_data or scored_on_job_data(registry.resolve(MODEL, str(parent)))
        held_out = HeldOut(split.test, split.n_items)
        started = time.perf_counter()

        def on_epoch(epoch: int, steps: int, loss: float, model: SessionGRU) -> None:
            recall, _ = held_out.metrics(model)
            elapsed = time.perf_counter() - started
            progress(TrainingProgress(epoch=epoch, epochs=params.epochs, step=steps, loss=loss, metric=recall,
                                      metric_name=self.metric, eta_s=elapsed / epoch * (params.epochs - epoch)))

        stop.check()
        model = train(split, params, initial=initial, on_epoch=on_epoch, interrupt=stop)
        train_seconds = time.perf_counter() - started
        stop.check()
        artifact, weights, scores, profile = package(model, split, workdir, interrupt=stop)
        metrics = scores | {"train_seconds": round(train_seconds, 2)}
        return Candidate(artifact, metrics, asdict(params) | {"data": data_params}, split.data_hash(),
                         (weights,), parent, scored_on="job_data" if job_data else "reference", output_profile=profile)


def _split_for(data: dict[str, Any] | None) -> tuple[SessionsSplit, dict[str, Any]]:
    """The built-in split (and its config), or the job's sessions with a seeded tenth held out."""
    config = SessionsConfig()
    if data is None:
        return load_split(config), asdict(config)
    if set(data) == {"items"}:
        sessions = _listed_sessions(data["items"], config.n_items)
    elif set(data) == {"session_id", "item_id"}:
        sessions = _viewed_sessions(data["session_id"], data["item_id"], config.n_items)
    else:
        raise InvalidJob("rnn training data needs `items` (one session per row: a list of item ids in order) or "
                         f"`session_id` and `item_id` (one view per row); got {', '.join(sorted(data)) or 'nothing'}")
    _check_sizes(sessions)
    order = np.random.default_rng(_HOLD_OUT_SEED).permutation(len(sessions))
    held = round(_HELD_OUT_SHARE * len(sessions))
    split = SessionsSplit(config.n_items, sessions.take(np.sort(order[held:])), sessions.take(np.sort(order[:held])))
    return split, {"source": "job", "sessions": len(sessions), "items": len(sessions.items),
                   "distinct_items": int(np.count_nonzero(np.bincount(sessions.items, minlength=config.n_items)))}


def _listed_sessions(rows: Any, n_items: int) -> Sessions:
    """Sessions given one per row as lists of item ids (JSONL or Parquet), every value checked."""
    if not isinstance(rows, (list, tuple)):
        raise InvalidJob("rnn training data: `items` must be one list of item ids per session (JSONL rows "
                         "{\"items\": [3, 17, 42]}, or a Parquet list column); use `session_id` and `item_id` for "
                         "tensors or arrays")
    sessions, total = [], 0
    for number, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise InvalidJob(f"rnn training data: session {number} must be a list of integer item ids; "
                             f"got {_shown(row)}")
        total += len(row)
        if len(row) > MAX_SESSION_ITEMS:  # before the values: a huge row is refused without a pass over it
            raise InvalidJob(f"rnn training data: session {number} has {len(row)} items; at most {MAX_SESSION_ITEMS}")
        if total > MAX_TOTAL_ITEMS:
            raise InvalidJob(f"rnn training data: more than {MAX_TOTAL_ITEMS} item views in all")
        if not all(type(item) is int for item in row):
            raise InvalidJob(f"rnn training data: session {number} must be a list of integer item ids; "
                             f"got {_shown(row)}")
        if row and (min(row) < 0 or max(row) >= n_items):
            raise InvalidJob(f"rnn training data: session {number} has item ids outside 0..{n_items - 1} "
                             "(the built-in item space)")
        sessions.append(np.array(row, dtype=np.int64))
    return Sessions.from_lists(sessions)


def _shown(value: Any) -> str:
    """A short description of a bad value for a message (never the whole of a huge one)."""
    return f"{type(value).__name__} {str(value)[:60]}"


def _viewed_sessions(session_ids: Any, item_ids: Any, n_items: int) -> Sessions:
    """Sessions from one view per row: each session's rows in order, sessions by ascending id."""
    sessions, items = _ints(session_ids, "session_id"), _ints(item_ids, "item_id")
    if len(sessions) != len(items):
        raise InvalidJob(f"rnn training data: {len(sessions)} session_id and {len(items)} item_id values (they must "
                         "be of one length)")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise InvalidJob(f"rnn training data: `item_id` must be within 0..{n_items - 1} (the built-in item space); "
                         f"got {items.min()}..{items.max()}")
    order = np.argsort(sessions, kind="stable")  # stable: a session's views keep their order
    ordered = sessions[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    offsets = np.r_[starts, len(ordered)].astype(np.int64)
    return Sessions(items[order], offsets)


def _ints(value: Any, name: str) -> np.ndarray:
    """A one-dimensional integer column as int64 (booleans, floats, text and nested lists refused)."""
    if isinstance(value, (str, bytes)):
        raise InvalidJob(f"rnn training data: `{name}` must be a list or array, not a single string")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidJob(f"rnn training data: `{name}` cannot be read as integers ({exc})") from exc
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InvalidJob(f"rnn training data: `{name}` must be a one-dimensional column of integers; got "
                         f"{array.dtype} of shape {list(array.shape)}")
    if array.dtype == np.uint64 and len(array) and array.max() > np.iinfo(np.int64).max:
        raise InvalidJob(f"rnn training data: `{name}` holds integers beyond int64")
    return array.astype(np.int64)


def _check_sizes(sessions: Sessions) -> None:
    """Enough sessions to hold some out, none too short to teach anything or too long, not too much in all."""
    lengths = sessions.lengths
    if len(lengths) and lengths.min() < 2:
        first = int(np.flatnonzero(lengths < 2)[0])
        raise InvalidJob(f"rnn training data: session {first} has {lengths[first]} item; every session needs at least "
                         "2 (one to predict from, one to predict)")
    if len(lengths) and lengths.max() > MAX_SESSION_ITEMS:
        raise InvalidJob(f"rnn training data: a session has {lengths.max()} items; at most {MAX_SESSION_ITEMS}")
    if len(lengths) < MIN_SESSIONS:
        raise InvalidJob(f"rnn training data: {len(lengths)} sessions; at least {MIN_SESSIONS} are needed (a tenth "
                         "is held out for evaluation)")
    if len(sessions.items) > MAX_TOTAL_ITEMS:
        raise InvalidJob(f"rnn training data: {len(sessions.items)} item views; at most {MAX_TOTAL_ITEMS}")


def _base_weights(registry: Registry, ref: str, n_items: int) -> tuple[dict[str, np.ndarray], int]:
    """The weights of the version to warm-start from, checked against a network of their sizes over `n_items`."""
    base = registry.resolve(MODEL, ref)
    files = registry.load_companions(base)
    if WEIGHTS_FILE not in files:
        raise InvalidJob(f"rnn v{base.version} has no {WEIGHTS_FILE} to start from; train without `base_version`")
    with np.load(io.BytesIO(files[WEIGHTS_FILE]), allow_pickle=False) as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    try:
        dim, hidden = weights["embedding.weight"].shape[1], weights["gru.weight_hh_l0"].shape[1]
        expected = {name: tuple(t.shape) for name, t in SessionGRU(n_items, dim, hidden).state_dict().items()}
    except (KeyError, IndexError) as exc:
        raise InvalidJob(f"rnn v{base.version}'s {WEIGHTS_FILE} is not a session GRU's ({exc})") from exc
    if {name: array.shape for name, array in weights.items()} != expected:
        raise InvalidJob(f"rnn v{base.version}'s {WEIGHTS_FILE} does not fit a session GRU over {n_items} items "
                         f"with dim {dim} and hidden_size {hidden}")
    return weights, base.version


def _sizes_of(weights: dict[str, np.ndarray], params: TrainParams, asked: dict[str, Any], parent: int) -> TrainParams:
    """The params with the base's sizes; InvalidJob when the job asked for other ones."""
    sizes = {"dim": int(weights["embedding.weight"].shape[1]), "hidden_size": int(weights["gru.weight_hh_l0"].shape[1])}
    for name, size in sizes.items():
        if name in asked and asked[name] != size:
            raise InvalidJob(f"`{name}` {asked[name]} differs from rnn v{parent}'s {size}: a warm start keeps the "
                             "base's sizes (leave it out, or train without `base_version`)")
    return replace(params, **sizes)
