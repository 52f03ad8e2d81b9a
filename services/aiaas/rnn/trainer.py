"""Generate the sessions, train the GRU, export it to ONNX, score it as served against two baselines, register it.

The held-out score is recall@10 and MRR@10 of the next item after every prefix of every held-out session
(`sessions.next_item_examples`), each prefix's own items left out (as the service does by default; a
generated session never repeats an item). The same examples score two baselines, recorded with the version:

- **popularity**: the items seen most often in the training sessions, the prefix's own left out;
- **MF**: recsys's matrix factorisation (`aiaas.recsys.trainer.train`) on the training sessions as users who
  "rated" each of their items 1 (a session × item matrix, order dropped), then an item-based fold-in: a prefix
  is scored as a user whose vector is the mean of its items' vectors (`mean(item[p]) · item[i] + bias[i]`),
  its own items left out. It knows which items go together, not in which order, nor which came last.
"""

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
from torch import nn

from aiaas.contract.envelopes import Job, Tensor
from aiaas.metrics.drift import output_profile
from aiaas.recsys.data import Ratings, RatingsSplit
from aiaas.recsys.trainer import TrainParams as MfParams
from aiaas.recsys.trainer import train as train_mf
from aiaas.registry.store import ModelVersion, Registry
from aiaas.rnn import MODEL
from aiaas.rnn.model import INPUT_NAMES, OUTPUT_NAMES, ServingGraph, SessionGRU
from aiaas.rnn.runtime import DEFAULT_K, TASK, TOP_K_INPUT, RnnLimits, RnnRuntime
from aiaas.rnn.sessions import Sessions, SessionsConfig, SessionsSplit, load_split, next_item_examples
from aiaas.serving.runtime import Outputs
from aiaas.training.onnx_export import rank_top_k_from_input

__all__ = ["TrainParams", "HeldOut", "train", "export_onnx", "weights_npz", "served_metrics", "baseline_metrics",
           "package", "build", "ONNX_FILE", "WEIGHTS_FILE", "MF_PARAMS"]

ONNX_FILE = "rnn.onnx"
WEIGHTS_FILE = "weights.npz"
"""The state dict as plain arrays, registered with every version: what a warm start begins from."""
MF_PARAMS = MfParams(dim=32)
"""The MF baseline's hyper-parameters: recsys's defaults with 32 factors instead of 12, which it scores clearly higher
with on sessions (64 factors and twice the steps score a little higher still, for about three times the time that
`build` would then spend on a baseline)."""


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of a training run."""

    dim: int = 64
    """Numbers per item embedding."""
    hidden_size: int = 128
    """Numbers in the GRU's state."""
    epochs: int = 3
    learning_rate: float = 0.008
    batch_size: int = 256
    seed: int = 0


EpochCallback = Callable[[int, int, float, SessionGRU], None]
"""Called after each epoch with (epoch, steps so far, mean loss, model)."""


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread, as recsys does: the same bytes for the same seed (reductions in one fixed order), and
    the GRU's matrices are small enough that more threads win little."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _padded(sessions: Sessions) -> tuple[torch.Tensor, torch.Tensor]:
    """Every session right-padded with item 0 (never read: see model.py), int64 [N, longest], and the lengths."""
    lengths = sessions.lengths
    present = np.arange(lengths.max()) < lengths[:, None]
    padded = np.zeros(present.shape, dtype=np.int64)
    padded[present] = sessions.items
    return torch.from_numpy(padded), torch.from_numpy(lengths)


def train(split: SessionsSplit, params: TrainParams, *, initial: Mapping[str, np.ndarray] | None = None,
          on_epoch: EpochCallback | None = None, interrupt: Callable[[], None] | None = None) -> SessionGRU:
    """Adam on next-item cross-entropy at every position of every training session; deterministic on CPU for a seed.

    A batch is padded to its longest session; the loss leaves the padding out (a mask), so it only costs time.
    `initial` (a state dict as arrays) replaces the seeded random start: a warm start. `interrupt()` is called
    before every optimiser step; it raises to end the run there (a trainer that is stopping, a job out of time).
    """
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = SessionGRU(split.n_items, params.dim, params.hidden_size)
    if initial is not None:
        model.load_state_dict({name: torch.from_numpy(np.asarray(value)) for name, value in initial.items()})
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    padded, lengths = _padded(split.train)
    steps = 0
    with _one_thread():
        for epoch in range(1, params.epochs + 1):
            model.train()
            order = torch.randperm(len(lengths), generator=generator)
            losses = []
            for start in range(0, len(order), params.batch_size):
                if interrupt is not None:
                    interrupt()
                rows = order[start : start + params.batch_size]
                losses.append(_step(model, optimiser, padded[rows], lengths[rows]))
                steps += 1
            if on_epoch is not None:
                on_epoch(epoch, steps, float(np.mean(losses)), model.eval())
    return model.eval()


def _step(model: SessionGRU, optimiser: torch.optim.Optimizer, sessions: torch.Tensor, lengths: torch.Tensor) -> float:
    """One optimiser step on a batch of sessions: every item but the last predicts the one after it."""
    longest = int(lengths.max())
    batch = sessions[:, :longest]
    targets = torch.arange(longest - 1)[None, :] < (lengths - 1)[:, None]
    optimiser.zero_grad()
    loss = nn.functional.cross_entropy(model(batch[:, :-1])[targets], batch[:, 1:][targets])
    loss.backward()
    optimiser.step()
    return loss.item()


def weights_npz(model: SessionGRU, path: Path) -> None:
    """The weights as plain arrays (`weights.npz`, no pickle): what a warm start begins from."""
    np.savez(path, **{name: t.detach().numpy() for name, t in model.state_dict().items()})


def export_onnx(model: SessionGRU, path: Path) -> None:
    """ONNX with dynamic batch and length axes; inputs and outputs as named in model.py, TopK fed by `top_k`."""
    graph = ServingGraph(model).eval()
    example = (torch.zeros(2, 3, dtype=torch.int64), torch.tensor([3, 1], dtype=torch.int64),
               torch.zeros(2, model.n_items, dtype=torch.bool))
    axes = {"items": {0: "sessions", 1: "length"}, "lengths": {0: "sessions"}, "exclude": {0: "sessions"},
            "next_items": {0: "sessions"}, "next_scores": {0: "sessions"}}
    # The TorchScript exporter, as for vision and recsys: fast, no torch.export tracing, a small opset-17 graph
    # whose GRU is one ONNX GRU node. Its deprecation notice is noise here, and so is its warning that a GRU
    # exported with a batch of 2 may fail on other batch sizes: that is about initial states traced as constants,
    # and this graph has none (the GRU starts from zeros shaped by the batch at run time; the tests run 1..256).
    # The tracer's warnings come from nn.GRU's own checks of its input's size, which hold for any batch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1", UserWarning)
        torch.onnx.export(graph, example, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    # The runtime feeds the largest k of the length group it runs (TOP_K_INPUT), so ONNX Runtime sorts partially.
    rank_top_k_from_input(path, TOP_K_INPUT, model.n_items, expected_top_ks=1)


class HeldOut:
    """The held-out sessions, in chunks padded once, to score a PyTorch model during training.

    One GRU pass over a whole session gives its next-item logits after every position, so every prefix of it is
    scored at once: the work grows with the sessions' length, not with its square (as one run per prefix would),
    and a chunk holds at most `_EVALUATION_SLOTS` (session × position) slots, so memory stays bounded whatever
    sessions a training job brings."""

    def __init__(self, sessions: Sessions, n_items: int, k: int = DEFAULT_K) -> None:
        self._chunks = [_padded(sessions.take(chunk)) for chunk in _chunks_of(sessions.lengths, _EVALUATION_SLOTS)]
        self._examples = int((sessions.lengths - 1).sum())
        self._n_items, self.k = n_items, k

    def __len__(self) -> int:
        return self._examples

    def metrics(self, model: SessionGRU) -> tuple[float, float]:
        """(recall@k, MRR@k) of `model`'s rankings, each prefix's own items left out (as served by default)."""
        ranked, following = [], []
        with torch.no_grad(), _one_thread():
            for items, lengths in self._chunks:
                positions = torch.arange(items.shape[1])
                # A prefix ending at position t has the items at 0..t: those are left out of its ranking.
                seen = torch.zeros(*items.shape, self._n_items, dtype=torch.bool)
                seen.scatter_(2, items.unsqueeze(2), (positions < lengths[:, None]).unsqueeze(2))
                seen = seen.cumsum(dim=1) > 0
                predicts = positions[None, :] < (lengths - 1)[:, None]  # positions with an item after them
                scores = model(items).masked_fill(seen, float("-inf"))[predicts]
                ranked.append(torch.topk(scores, self.k, dim=1).indices.numpy())
                following.append(items[:, 1:][predicts[:, :-1]].numpy())
        return _recall_and_mrr(np.concatenate(ranked), np.concatenate(following))


_EVALUATION_SLOTS = 8192
"""Most (session × position) slots in one chunk of held-out sessions (HeldOut): its logits are slots × n_items."""


def _chunks_of(lengths: np.ndarray, max_slots: int) -> list[np.ndarray]:
    """Session indices in consecutive chunks whose padded size (sessions × longest) stays within `max_slots` (a
    session longer than that is a chunk of its own)."""
    chunks: list[np.ndarray] = []
    start, longest = 0, 0
    for index, length in enumerate(lengths.tolist()):
        longest = max(longest, length)
        if index > start and (index - start + 1) * longest > max_slots:
            chunks.append(np.arange(start, index))
            start, longest = index, length
    if len(lengths) > start:
        chunks.append(np.arange(start, len(lengths)))
    return chunks


def _recall_and_mrr(ranked: np.ndarray | list[np.ndarray], following: np.ndarray) -> tuple[float, float]:
    """Share of rows whose true next item is ranked (recall@k), and the mean of 1/its rank, 0 when unranked."""
    reciprocal = np.zeros(len(following))
    for row, (items, truth) in enumerate(zip(ranked, following.tolist(), strict=True)):
        where = np.flatnonzero(np.asarray(items) == truth)
        if where.size:
            reciprocal[row] = 1.0 / (where[0] + 1)
    return float(np.mean(reciprocal > 0)), float(np.mean(reciprocal))


def served_metrics(runtime: RnnRuntime, sessions: Sessions, k: int = DEFAULT_K, batch: int = 256,
                   answers: list[Outputs] | None = None) -> dict[str, float]:
    """recall@k and MRR@k of the served graph: every held-out prefix a `next_items` job, `batch` jobs a run. The
    served answers are added to `answers` when given."""
    prefixes, following = next_item_examples(sessions)
    ranked: list[np.ndarray] = []
    for start in range(0, len(prefixes), batch):
        jobs = [Job(job_id=f"eval-{start + i}", model=MODEL, task=TASK,
                    inputs={"items": Tensor.from_numpy(prefix), "k": k})
                for i, prefix in enumerate(prefixes[start : start + batch])]
        outputs = runtime.infer([runtime.prepare(job) for job in jobs])
        if answers is not None:
            answers += outputs
        ranked += [cast(Tensor, out["items"]).to_numpy() for out in outputs]
    recall, mrr = _recall_and_mrr(ranked, following)
    return {f"recall_at_{k}": recall, f"mrr_at_{k}": mrr}


def baseline_metrics(split: SessionsSplit, k: int = DEFAULT_K, mf: MfParams = MF_PARAMS,
                     interrupt: Callable[[], None] | None = None) -> dict[str, float]:
    """recall@k and MRR@k of the popularity and MF baselines (module docstring) on the held-out sessions."""
    prefixes, following = next_item_examples(split.test)
    popularity = split.popularity().astype(np.float64)
    item_vectors, item_bias = _mf_items(split, mf, interrupt)
    popular, factorised = [], []
    for prefix in prefixes:
        popular.append(_top_unseen(popularity.copy(), prefix, k))
        factorised.append(_top_unseen(item_vectors[prefix].mean(axis=0) @ item_vectors.T + item_bias, prefix, k))
    (pop_recall, pop_mrr), (mf_recall, mf_mrr) = (_recall_and_mrr(r, following) for r in (popular, factorised))
    return {f"popularity_recall_at_{k}": pop_recall, f"popularity_mrr_at_{k}": pop_mrr,
            f"mf_recall_at_{k}": mf_recall, f"mf_mrr_at_{k}": mf_mrr}


def _top_unseen(scores: np.ndarray, prefix: np.ndarray, k: int) -> np.ndarray:
    """The k best-scored items that are not in `prefix` (ties in id order)."""
    scores[prefix] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def _mf_items(split: SessionsSplit, params: MfParams,
              interrupt: Callable[[], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """recsys's factorisation trained on the training sessions as users (rating 1 for each item they hold)."""
    lengths = split.train.lengths
    sessions = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
    # An item a session holds twice (job data may) is one cell: the factorisation's loss counts cells once.
    cells = np.unique(sessions * split.n_items + split.train.items)
    ratings = Ratings(cells // split.n_items, cells % split.n_items, np.ones(len(cells), np.float32))
    nothing = Ratings(*(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.float32)))
    model = train_mf(RatingsSplit(len(lengths), split.n_items, ratings, nothing), params, interrupt=interrupt)
    return model.item_factors.detach().numpy().astype(np.float64), model.item_bias.detach().numpy()


def package(model: SessionGRU, split: SessionsSplit, folder: Path,
            interrupt: Callable[[], None] | None = None) -> tuple[Path, Path, dict[str, float], dict[str, float]]:
    """Export the graph and the weights into `folder`, score the graph as served and the baselines.

    Returns (the ONNX artifact, the WEIGHTS_FILE companion, the metrics of `served_metrics` and
    `baseline_metrics` and the number of held-out examples, the served answers' `output_profile`).
    """
    graph, weights = folder / ONNX_FILE, folder / WEIGHTS_FILE
    export_onnx(model, graph)
    weights_npz(model, weights)
    # The served checks, but sessions as long as the held-out ones (a job's own may be longer than a service takes).
    longest = int(split.test.lengths.max()) if len(split.test) else 1
    runtime = RnnRuntime(graph.read_bytes(), "candidate", providers="cpu", limits=RnnLimits(max_session_items=longest))
    answers: list[Outputs] = []
    metrics = served_metrics(runtime, split.test, answers=answers) | baseline_metrics(split, interrupt=interrupt)
    metrics["held_out_examples"] = float(len(next_item_examples(split.test)[1]))
    return graph, weights, metrics, output_profile(RnnRuntime.output_categories, answers)


def build(registry: Registry, params: TrainParams = TrainParams(), data: SessionsConfig | None = None) -> ModelVersion:
    """Generate (`data`, default `SessionsConfig()`), train, export, score the served graph and the baselines, and
    register a new rnn version (aliased `production`)."""
    data = data or SessionsConfig()
    split = load_split(data)
    started = time.perf_counter()
    model = train(split, params)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        graph, weights, scores, profile = package(model, split, Path(tmp))
        return registry.register(
            MODEL, graph, companions=(weights,), metrics=scores | {"train_seconds": round(train_seconds, 2)},
            params=asdict(params) | {"data": asdict(data)}, data_hash=split.data_hash(), output_profile=profile,
        )
