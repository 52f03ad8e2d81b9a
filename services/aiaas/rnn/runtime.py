"""The RNN model under ONNX Runtime (CUDA execution provider when present). No Kafka, no torch here.

`prepare` checks one `next_items` job; `infer` runs the sessions of a batch sorted by length and cut into
length groups, one session run per group, so that short sessions are not padded to the longest one of the
batch. Padding costs work and nothing else (see model.py: a session's answer does not depend on what is
padded after it); `padding` counts the slots run and how many were padding, for the benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.metrics.drift import ScoreBins
from aiaas.registry.store import Registry
from aiaas.rnn import MODEL
from aiaas.serving.job_inputs import TaskInputs, boolean_input, integer_input
from aiaas.serving.length_groups import length_groups
from aiaas.serving.onnx_session import open_session
from aiaas.serving.runtime import Outputs

__all__ = ["RnnRuntime", "RnnLimits", "PaddingCounter", "TASK", "INPUTS", "DEFAULT_K", "TOP_K_INPUT"]

TASK = "next_items"
INPUTS = ("items", "k", "exclude_seen")
"""The inputs a `next_items` job takes (`items` is required)."""
DEFAULT_K = 10
"""How many items a job gets when it does not say `k`."""
TOP_K_INPUT = "top_k"
"""The graph input, int64 [1], that says how many items each output row ranks (1..n_items); `trainer.export_onnx`
adds it."""

_TASK_INPUTS = TaskInputs(MODEL, {TASK: INPUTS})
TOP_SCORE_BINS = ScoreBins((0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8))
"""Edges of the bins of an answer's top score (the probability of its most likely next item) that model monitoring
counts; the held-out sessions' top scores spread from about 0.02 to 0.97, half of them under 0.2."""
_INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})


@dataclass(frozen=True)
class RnnLimits:
    """What one job may ask for, and how a batch is cut into session runs."""

    max_k: int = 100
    max_session_items: int = 50
    call_overhead_slots: int = 32
    """The fixed cost of one session run in (session × position) slots: a longer session joins a length group
    unless that adds more padded slots than this."""
    max_batch_slots: int = 16_384
    """Most slots (sessions × longest) in one session run; a bigger group is cut."""


@dataclass
class PaddingCounter:
    """What the session runs cost in padding, counted since the runtime was made (and for the last batch)."""

    sessions: int = 0
    session_runs: int = 0
    real_slots: int = 0
    """Positions that hold a session's item."""
    padded_slots: int = 0
    """Positions run that hold padding (the GRU's work on them is wasted)."""
    last_padding_share: float = 0.0
    """Share of the last batch's slots that were padding."""
    last_unsorted_padding_share: float = 0.0
    """What that share would have been with the whole batch in one run, padded to its longest session."""

    @property
    def padding_share(self) -> float:
        """Share of every slot run so far that was padding (0 = none)."""
        total = self.real_slots + self.padded_slots
        return self.padded_slots / total if total else 0.0


class _Request(NamedTuple):
    """One checked job: the session's items (int64, in order), how many items it wants, and whether its own are
    left out."""

    items: np.ndarray
    k: int
    exclude_seen: bool


class RnnRuntime:
    """Ranks the next items of sessions; one ONNX Runtime run per length group per batch."""

    model = MODEL

    def __init__(self, onnx_bytes: bytes, version: str, *, aliases: Sequence[str] = (), providers: str = "auto",
                 intra_op_threads: int = 0, limits: RnnLimits = RnnLimits(),
                 output_profile: Mapping[str, float] | None = None) -> None:
        # Without warnings: ONNX Runtime warns at every load that `top_k`, an initializer, is also a graph input.
        # It is one by design, a default that a run may override (TOP_K_INPUT).
        self._session = open_session(onnx_bytes, providers, intra_op_threads, warnings=False)
        self.n_items = int(next(i for i in self._session.get_inputs() if i.name == "exclude").shape[1])
        self.max_k = min(limits.max_k, self.n_items)
        self._default_k = min(DEFAULT_K, self.max_k)
        self.limits = limits
        self.version = version
        self._refs = {version, f"v{version}", *aliases}
        self.padding = PaddingCounter()
        self.output_profile = dict(output_profile or {})
        """Shares of `output_categories` on the held-out sessions when this version was built (model monitoring)."""

    @classmethod
    def from_registry(cls, registry: Registry, ref: str = "production", **kwargs: Any) -> RnnRuntime:
        """Load a sha256-verified version (or alias) from the registry."""
        version, data = registry.load_verified(MODEL, ref)
        aliases = [a for a, v in registry.aliases(MODEL).items() if v == version.version]
        return cls(data, str(version.version), aliases=aliases, output_profile=version.output_profile, **kwargs)

    @staticmethod
    def output_categories(outputs: Mapping[str, object]) -> list[str]:
        """What model monitoring counts of an answer: its top score's bin (`TOP_SCORE_BINS`); none when every item
        was left out."""
        top = TOP_SCORE_BINS.of_top(outputs.get("scores"))
        return [top] if top else []

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._session.get_providers()

    def serves(self, ref: str) -> bool:
        """True for this version's number or one of its aliases."""
        return ref in self._refs

    def prepare(self, job: Job) -> _Request:
        """Check the task and its inputs; raise InvalidJob naming what is valid."""
        _TASK_INPUTS.check(job)
        k = integer_input(job, "k", self._default_k)
        if not 1 <= k <= self.max_k:
            raise InvalidJob(f"`k` must be within 1..{self.max_k}; got {k}")
        return _Request(self._items(job), k, boolean_input(job, "exclude_seen", True))

    def _items(self, job: Job) -> np.ndarray:
        """The session: a 1-D integer tensor of 1..max_session_items known item ids."""
        value, most = job.inputs.get("items"), self.limits.max_session_items
        what = f"a 1-D integer tensor of 1..{most} item ids (the session, in order)"
        if not isinstance(value, Tensor):
            got = "nothing" if value is None else type(value).__name__
            raise InvalidJob(f"task {TASK} needs `items`: {what}; got {got}")
        if value.dtype not in _INTEGER_DTYPES or len(value.shape) != 1:
            raise InvalidJob(f"`items` must be {what}; got {value.dtype} {value.shape}")
        if not 1 <= value.shape[0] <= most:
            raise InvalidJob(f"`items` holds {value.shape[0]} items; a session has 1..{most} "
                             "(AIAAS_RNN_MAX_SESSION_ITEMS)")
        try:
            items = value.to_numpy()
        except ValueError as exc:
            raise InvalidJob(f"`items`: {exc}") from exc
        low, high = int(items.min()), int(items.max())
        if low < 0 or high >= self.n_items:
            raise InvalidJob(f"`items` must be item ids within 0..{self.n_items - 1}; got {low}..{high}")
        return items.astype(np.int64)

    def infer(self, items: Sequence[_Request]) -> list[Outputs]:
        """The top-k next items and their probabilities for every session, in order; one run per length group."""
        lengths = [len(request.items) for request in items]
        groups = length_groups(lengths, self.limits.max_batch_slots, self.limits.call_overhead_slots)
        outputs: list[Outputs] = [{} for _ in items]
        for group in groups:
            for index, out in zip(group, self._run([items[i] for i in group]), strict=True):
                outputs[index] = out
        self._count(lengths, groups)
        return outputs

    def _run(self, batch: list[_Request]) -> list[Outputs]:
        """One session run for sessions of similar length, right-padded to the longest of them."""
        lengths = np.fromiter((len(r.items) for r in batch), dtype=np.int64, count=len(batch))
        present = np.arange(lengths.max()) < lengths[:, None]
        sessions = np.zeros(present.shape, dtype=np.int64)  # item 0 as padding: never read (model.py)
        flat = np.concatenate([r.items for r in batch])
        sessions[present] = flat
        exclude = np.zeros((len(batch), self.n_items), dtype=bool)
        leave_out = np.repeat([r.exclude_seen for r in batch], lengths)
        exclude[np.repeat(np.arange(len(batch)), lengths)[leave_out], flat[leave_out]] = True
        ks = [r.k for r in batch]
        ranked, scores = self._session.run(None, {"items": sessions, "lengths": lengths, "exclude": exclude,
                                                  TOP_K_INPUT: np.array([max(ks)], np.int64)})
        # Left-out items score -inf and TopK ranks them last: each row's kept entries are a prefix of it.
        kept = np.minimum(np.isfinite(scores).sum(axis=1), ks).tolist()
        return [{"items": i, "scores": s} for i, s in zip(
            Tensor.row_prefixes(ranked.astype(np.int64), kept),
            Tensor.row_prefixes(scores.astype(np.float32), kept), strict=True)]

    def _count(self, lengths: list[int], groups: list[list[int]]) -> None:
        """Add a batch's slots to `padding`."""
        real = sum(lengths)
        run = sum(len(group) * max(lengths[i] for i in group) for group in groups)
        counter = self.padding
        counter.sessions += len(lengths)
        counter.session_runs += len(groups)
        counter.real_slots += real
        counter.padded_slots += run - real
        counter.last_padding_share = 1 - real / run if run else 0.0
        unsorted = len(lengths) * max(lengths, default=0)
        counter.last_unsorted_padding_share = 1 - real / unsorted if unsorted else 0.0
