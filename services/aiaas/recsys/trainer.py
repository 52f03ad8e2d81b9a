"""Generate the ratings, train the factorisation, export it to ONNX, score it as served, register it."""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from aiaas.contract.envelopes import Job, Tensor
from aiaas.metrics.drift import output_profile
from aiaas.recsys import MODEL
from aiaas.recsys.data import (
    SERVING_FILE,
    RatingsConfig,
    RatingsSplit,
    ServingTables,
    load_split,
)
from aiaas.recsys.model import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    MatrixFactorization,
    ServingGraph,
)
from aiaas.recsys.runtime import TOP_K_INPUT, RecsysRuntime
from aiaas.registry.store import ModelVersion, Registry
from aiaas.serving.runtime import Outputs
from aiaas.training.onnx_export import rank_top_k_from_input

__all__ = ["TrainParams", "train", "export_onnx", "read_factors", "package", "hit_rates", "popularity_top_k", "build",
           "ONNX_FILE", "FACTOR_NAMES"]

ONNX_FILE = "recsys.onnx"
FACTOR_NAMES = ("user_factors", "item_factors", "item_bias")
"""The trained tensors; the exported graph keeps them as initializers of these names (a warm start reads them)."""


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of a training run."""

    dim: int = 12
    epochs: int = 100
    learning_rate: float = 0.05
    rating_weight: float = 1.0
    """A rated cell weighs `1 + rating_weight · rating`; an unrated one weighs `negative_weight`."""
    negative_weight: float = 1.0
    regularisation: float = 0.01
    seed: int = 0


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread: on small matrices extra threads cost more than they give, and the
    reductions then run in one fixed order (same bytes for the same seed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(split: RatingsSplit, params: TrainParams, initial: Mapping[str, np.ndarray] | None = None,
          on_step: Callable[[int, float, MatrixFactorization], None] | None = None,
          interrupt: Callable[[], None] | None = None) -> MatrixFactorization:
    """Full-batch Adam on the weighted implicit loss (model.py); deterministic on CPU for a seed.

    `params.epochs` is the number of optimiser steps; each step sees every training rating (one
    step is one epoch). `initial` (the FACTOR_NAMES arrays) replaces the seeded random start: a
    warm start. `on_step(step, loss, model)` is called after every step, inside the training.
    `interrupt()` is called before every step; it raises to end the run there (a trainer that is
    stopping, a job out of time).
    """
    torch.manual_seed(params.seed)
    model = MatrixFactorization(split.n_users, split.n_items, params.dim)
    if initial is not None:
        with torch.no_grad():
            for name in FACTOR_NAMES:
                getattr(model, name).copy_(torch.from_numpy(np.asarray(initial[name], dtype=np.float32)))
    observed = torch.from_numpy(split.train.users * split.n_items + split.train.items)
    weights = 1.0 + params.rating_weight * torch.from_numpy(split.train.ratings)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    with _one_thread():
        for step in range(1, params.epochs + 1):
            if interrupt is not None:
                interrupt()
            optimiser.zero_grad()
            loss = model.implicit_loss(observed, weights, params.negative_weight) \
                + params.regularisation * model.regulariser()
            loss.backward()
            optimiser.step()
            if on_step is not None:
                on_step(step, float(loss.detach()), model)
    return model.eval()


def export_onnx(model: MatrixFactorization, path: Path) -> None:
    """ONNX with dynamic batch axes; inputs and outputs as named in model.py."""
    graph = ServingGraph(model).eval()
    n_items = model.item_factors.shape[0]
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(2, n_items, dtype=torch.bool),
               torch.zeros(2, dtype=torch.int64))
    axes = {"user_id": {0: "users"}, "exclude": {0: "users"}, "item_id": {0: "queries"},
            "recommend_items": {0: "users"}, "recommend_scores": {0: "users"},
            "similar_items": {0: "queries"}, "similar_scores": {0: "queries"}}
    # The TorchScript exporter, as for vision: fast, no torch.export tracing, a small opset-17 graph.
    # No constant folding at export, so the factors stay initializers named as in FACTOR_NAMES (folding
    # would store `item_factors` transposed under a generated name); ONNX Runtime folds at load anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, example, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=False)
    _rank_top_k(path)


def _rank_top_k(path: Path) -> None:
    """Both TopK nodes of the exported graph take their k from the graph input TOP_K_INPUT (default: every item).

    Ranking only the k a batch needs costs much less than ranking every item when k is small (the runtime ceiling,
    bench/ceilings.py; tables in bench/results/); the unit tests check that a row is a prefix of the full ranking
    on ONNX Runtime's CPU kernel."""
    import onnx

    exclude = next(i for i in onnx.load(str(path)).graph.input if i.name == "exclude")
    rank_top_k_from_input(path, TOP_K_INPUT, exclude.type.tensor_type.shape.dim[1].dim_value, expected_top_ks=2)


def read_factors(onnx_bytes: bytes) -> dict[str, np.ndarray] | None:
    """The FACTOR_NAMES arrays kept in an exported graph; None when it lacks one (exported with folding)."""
    import onnx
    from onnx import numpy_helper

    initializers = {i.name: i for i in onnx.load_model_from_string(onnx_bytes).graph.initializer}
    if not set(FACTOR_NAMES) <= set(initializers):
        return None
    return {name: numpy_helper.to_array(initializers[name]).astype(np.float32) for name in FACTOR_NAMES}


def popularity_top_k(tables: ServingTables, user: int, k: int) -> np.ndarray:
    """The baseline: the k items most rated in training that `user` has not rated."""
    popularity = tables.popularity.astype(np.float64)
    popularity[tables.seen(user)] = -np.inf
    return np.argsort(-popularity, kind="stable")[:k]


def hit_rates(runtime: RecsysRuntime, split: RatingsSplit, k: int = 10, batch: int = 256,
              answers: list[Outputs] | None = None) -> dict[str, float]:
    """Share of users with a held-out item in their top k: the served model vs. the popularity baseline. The
    served answers are added to `answers` when given."""
    held_out = split.held_out()
    users = sorted(held_out)
    model_hits = []
    for start in range(0, len(users), batch):
        jobs = [Job(job_id=f"eval-{u}", model=MODEL, task="recommend", inputs={"user_id": u, "k": k})
                for u in users[start : start + batch]]
        outputs = runtime.infer([runtime.prepare(job) for job in jobs])
        if answers is not None:
            answers += outputs
        model_hits += [bool(set(cast(Tensor, out["items"]).to_numpy().tolist())
                            & held_out[cast(int, job.inputs["user_id"])])
                       for job, out in zip(jobs, outputs, strict=True)]
    tables = ServingTables.from_split(split)
    baseline_hits = [bool(set(popularity_top_k(tables, u, k).tolist()) & held_out[u]) for u in users]
    return {f"hit_rate_at_{k}": float(np.mean(model_hits)),
            f"popularity_hit_rate_at_{k}": float(np.mean(baseline_hits))}


def package(model: MatrixFactorization, split: RatingsSplit,
            folder: Path) -> tuple[Path, Path, dict[str, float], dict[str, float]]:
    """Export the graph and the serving tables into `folder` and score the graph as served.

    Returns (the ONNX artifact, the `SERVING_FILE` companion, the hit rates of `hit_rates`, the served answers'
    `output_profile`).
    """
    tables = ServingTables.from_split(split)
    graph, serving = folder / ONNX_FILE, folder / SERVING_FILE
    export_onnx(model, graph)
    serving.write_bytes(tables.to_bytes())
    runtime = RecsysRuntime(graph.read_bytes(), tables, "candidate", providers="cpu")
    answers: list[Outputs] = []
    scores = hit_rates(runtime, split, answers=answers)
    return graph, serving, scores, output_profile(RecsysRuntime.output_categories, answers)


def build(registry: Registry, params: TrainParams = TrainParams(),
          data: RatingsConfig = RatingsConfig()) -> ModelVersion:
    """Generate, train, export, score the served graph and register a new recsys version (aliased `production`)."""
    split = load_split(data)
    started = time.perf_counter()
    model = train(split, params)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        graph, serving, scores, profile = package(model, split, Path(tmp))
        metrics = scores | {"train_seconds": round(train_seconds, 2)}
        return registry.register(
            MODEL, graph, companions=(serving,), metrics=metrics, output_profile=profile,
            params=asdict(params) | {"data": asdict(data)}, data_hash=split.data_hash(),
        )
