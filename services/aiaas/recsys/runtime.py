"""The recsys model under ONNX Runtime (CUDA execution provider when present). No Kafka, no torch here.

A batch is grouped by route — `collaborative` (recommend for a known user), `popularity`
(recommend for a user the model never saw) and `item_cosine` (similar items) — and each
ONNX route runs the session once for all of its jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.metrics.drift import ScoreBins
from aiaas.recsys import MODEL
from aiaas.recsys.data import SERVING_FILE, ServingTables
from aiaas.registry.store import Registry
from aiaas.serving.job_inputs import TaskInputs, boolean_input, integer_input
from aiaas.serving.onnx_session import open_session
from aiaas.serving.runtime import Outputs

__all__ = ["RecsysRuntime", "TASKS", "DEFAULT_K", "TOP_K_INPUT"]

TASKS = {"recommend": ("user_id", "k", "exclude_seen"), "similar_items": ("item_id", "k")}
"""Each task and the inputs it takes (the first one is required)."""
DEFAULT_K = 10
"""How many items a job gets when it does not say `k`."""
TOP_K_INPUT = "top_k"
"""The graph input, int64 [1], that says how many items each output row ranks (1..n_items). The export adds it
(`trainer.export_onnx`); graphs exported before it have none and rank every item."""


_TASK_INPUTS = TaskInputs(MODEL, TASKS)
TOP_SCORE_BINS = ScoreBins((0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
"""Edges of the bins of a collaborative recommendation's top score that model monitoring counts (a rated item
scores near 1, an unrated one near 0; the held-out users' top scores sit between about 0.45 and 1.8)."""


class _Request(NamedTuple):
    """One validated job: its task, the user or item it is about, and how many items it wants."""

    task: str
    subject: int
    k: int
    exclude_seen: bool = False


class RecsysRuntime:
    """Recommends items for users and finds similar items; one ONNX Runtime run per route per batch."""

    model = MODEL

    def __init__(self, onnx_bytes: bytes, tables: ServingTables, version: str, *, aliases: Sequence[str] = (),
                 providers: str = "auto", intra_op_threads: int = 0, max_k: int = 100,
                 output_profile: Mapping[str, float] | None = None) -> None:
        # Without warnings: ONNX Runtime warns at every load that `top_k`, an initializer, is also a graph input.
        # It is one by design, a default that a run may override (TOP_K_INPUT).
        self._session = open_session(onnx_bytes, providers, intra_op_threads, warnings=False)
        inputs = {i.name: i for i in self._session.get_inputs()}
        graph_items = inputs["exclude"].shape[1]
        if graph_items != tables.n_items:
            raise ValueError(f"the graph ranks {graph_items} items but {SERVING_FILE} describes {tables.n_items}")
        # An input with a default (an initializer of its name) is listed among the overridable initializers only.
        self._takes_top_k = TOP_K_INPUT in inputs or any(
            i.name == TOP_K_INPUT for i in self._session.get_overridable_initializers())
        """Graphs exported since the top_k input rank only the k a batch needs; earlier ones rank every item."""
        self._tables = tables
        self._known = (np.diff(tables.seen_indptr) > 0).tolist()
        """Per user id: whether the user rated anything in training (else the popularity route)."""
        # Unknown users get the most popular items; stable sort so ties keep a fixed order.
        self._popular = np.argsort(-tables.popularity, kind="stable")
        self._popular_share = (tables.popularity / max(tables.n_users, 1)).astype(np.float32)
        self.max_k = min(max_k, tables.n_items)
        self._default_k = min(DEFAULT_K, self.max_k)
        self.version = version
        self._refs = {version, f"v{version}", *aliases}
        self.output_profile = dict(output_profile or {})
        """Shares of `output_categories` on the held-out users when this version was built (model monitoring)."""
        self.session_runs = 0
        """ONNX Runtime runs so far (at most one per route per batch)."""
        self._runners: dict[str, Callable[[RecsysRuntime, list[_Request]], list[Outputs]]] = {  # unbound: no cycle
            "collaborative": RecsysRuntime._recommend, "popularity": RecsysRuntime._by_popularity,
            "item_cosine": RecsysRuntime._similar,
        }

    @classmethod
    def from_registry(cls, registry: Registry, ref: str = "production", **kwargs: Any) -> RecsysRuntime:
        """Load a sha256-verified version (or alias) and its serving tables from the registry."""
        version, data = registry.load_verified(MODEL, ref)
        tables = ServingTables.from_bytes(registry.load_companions(version)[SERVING_FILE])
        aliases = [a for a, v in registry.aliases(MODEL).items() if v == version.version]
        return cls(data, tables, str(version.version), aliases=aliases, output_profile=version.output_profile,
                   **kwargs)

    @staticmethod
    def output_categories(outputs: Mapping[str, object]) -> list[str]:
        """What model monitoring counts of a recommendation: its top score's bin (`TOP_SCORE_BINS`) when the model
        ranked it, `popularity` when the user was unknown to it (a rising share of those is drift too). Similar
        items are not watched."""
        strategy = outputs.get("strategy")
        if strategy == "popularity":
            return ["popularity"]
        top = TOP_SCORE_BINS.of_top(outputs.get("scores")) if strategy == "collaborative" else None
        return [f"collaborative {top}"] if top else []

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._session.get_providers()

    @property
    def n_items(self) -> int:
        """Items the model knows (ids 0..n_items-1)."""
        return self._tables.n_items

    def serves(self, ref: str) -> bool:
        """True for this version's number or one of its aliases."""
        return ref in self._refs

    def prepare(self, job: Job) -> _Request:
        """Check the task and its inputs; raise InvalidJob naming what is valid."""
        task = _TASK_INPUTS.check(job)
        k = integer_input(job, "k", self._default_k)
        if not 1 <= k <= self.max_k:
            raise InvalidJob(f"`k` must be within 1..{self.max_k}; got {k}")
        if task == "similar_items":
            return _Request(task, self._item(job), k)
        user = integer_input(job, "user_id")
        if user < 0:
            raise InvalidJob(f"`user_id` must be a non-negative integer; got {user}")
        return _Request(task, user, k, boolean_input(job, "exclude_seen", True))

    def _item(self, job: Job) -> int:
        item = integer_input(job, "item_id")
        if not 0 <= item < self.n_items:
            raise InvalidJob(f"unknown `item_id` {item}: items are 0..{self.n_items - 1}")
        return item

    def infer(self, items: Sequence[_Request]) -> list[Outputs]:
        """Top-k items and scores for every request, in order; one session run per ONNX route."""
        routes: dict[str, list[int]] = {}
        for index, request in enumerate(items):
            routes.setdefault(self._route(request), []).append(index)
        outputs: list[Outputs] = [{} for _ in items]
        for route, indices in routes.items():
            for index, out in zip(indices, self._runners[route](self, [items[i] for i in indices]), strict=True):
                outputs[index] = out
        return outputs

    def _route(self, request: _Request) -> str:
        if request.task == "similar_items":
            return "item_cosine"
        known = 0 <= request.subject < len(self._known) and self._known[request.subject]
        return "collaborative" if known else "popularity"

    def _recommend(self, batch: list[_Request]) -> list[Outputs]:
        users = np.array([r.subject for r in batch], dtype=np.int64)
        ks = [r.k for r in batch]
        ranked, scores = self._run(["recommend_items", "recommend_scores"], max(ks), user_id=users,
                                   exclude=self._exclusions(batch, users))
        return _tops(ranked, scores, ks, "collaborative")

    def _exclusions(self, batch: list[_Request], users: np.ndarray) -> np.ndarray:
        """[len(batch), n_items] bool: each row's user's training items where the job says exclude_seen.

        One scatter for the batch: the rows' CSR slices of the seen items, gathered at once."""
        exclude = np.zeros((len(batch), self.n_items), dtype=bool)
        rows = np.flatnonzero([r.exclude_seen for r in batch])
        if rows.size:
            indptr = self._tables.seen_indptr
            starts = indptr[users[rows]]
            counts = indptr[users[rows] + 1] - starts
            firsts = np.cumsum(counts) - counts  # where each row's run begins in the gathered list
            gathered = np.arange(counts.sum()) + np.repeat(starts - firsts, counts)
            exclude[np.repeat(rows, counts), self._tables.seen_items[gathered]] = True
        return exclude

    def _similar(self, batch: list[_Request]) -> list[Outputs]:
        query = np.array([r.subject for r in batch], dtype=np.int64)
        ks = [r.k for r in batch]
        ranked, scores = self._run(["similar_items", "similar_scores"], max(ks), item_id=query)
        return _tops(ranked, scores, ks, "item_cosine")

    def _by_popularity(self, batch: list[_Request]) -> list[Outputs]:
        # A user the model never saw has no seen items to leave out, so exclude_seen changes nothing.
        return [_top(self._popular, self._popular_share[self._popular], r.k, "popularity") for r in batch]

    def _run(self, names: list[str], k: int, **feeds: np.ndarray) -> list[np.ndarray]:
        """One session run for one route, ranking the best `k` items; the other route's inputs are fed empty."""
        empty = {"user_id": np.zeros(0, np.int64), "exclude": np.zeros((0, self.n_items), bool),
                 "item_id": np.zeros(0, np.int64)}
        if self._takes_top_k:
            empty[TOP_K_INPUT] = np.array([min(k, self.n_items)], np.int64)
        self.session_runs += 1
        return self._session.run(names, empty | feeds)


def _tops(ranked: np.ndarray, scores: np.ndarray, ks: list[int], strategy: str) -> list[Outputs]:
    """`_top` for every row at once: the kept entries of a row are a prefix of it (scores are ranked, the -inf of
    left-out items come last), so each row's outputs are slices of one conversion. A row where they are not a
    prefix goes through `_top`."""
    width = min(max(ks), ranked.shape[1])
    ranked, scores = ranked[:, :width].astype(np.int64), scores[:, :width].astype(np.float32)
    columns = np.arange(width)[None, :]
    keep = np.isfinite(scores) & (columns < np.asarray(ks)[:, None])
    counts = keep.sum(axis=1)
    prefix = (keep == (columns < counts[:, None])).all(axis=1)
    lengths = counts.tolist()
    items, item_scores = Tensor.row_prefixes(ranked, lengths), Tensor.row_prefixes(scores, lengths)
    return [{"items": i, "scores": s, "strategy": strategy} if ok else _top(ranked[row], scores[row], ks[row], strategy)
            for row, (i, s, ok) in enumerate(zip(items, item_scores, prefix.tolist(), strict=True))]


def _top(ranked: np.ndarray, scores: np.ndarray, k: int, strategy: str) -> Outputs:
    """The first k ranked entries whose score is finite (-inf marks left-out items), and the route's name."""
    keep = np.isfinite(scores[:k])
    return {"items": Tensor.from_numpy(ranked[:k][keep].astype(np.int64)),
            "scores": Tensor.from_numpy(scores[:k][keep].astype(np.float32)), "strategy": strategy}
