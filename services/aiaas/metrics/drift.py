"""Model monitoring: how the outputs a version serves are spread now, against how they were spread on its held-out
set when it was trained.

A runtime names each answer's categories (`output_categories`: its predicted labels, or its top score's bin from
`ScoreBins`) and carries its version's reference shares (`ModelVersion.output_profile`, which its trainer computes
with `output_profile` from the same runtime's answers on the held-out set). `OutputDrift` keeps the categories of the
last `window` answers and gives their shares and the Jensen-Shannon distance to the reference: 0 when the spreads
match, 1 when they share nothing. It is bounded and symmetric, and stays defined when a category is missing on one
side (unlike the KL divergence or PSI), so one alert threshold fits every model.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from aiaas.contract.envelopes import Tensor

__all__ = ["OutputDrift", "ScoreBins", "js_distance", "output_profile"]

Answer = TypeVar("Answer")


class OutputDrift:
    """The last `window` output categories of one version, and their distance from its reference shares."""

    def __init__(self, reference: Mapping[str, float], window: int = 1000) -> None:
        self.reference = dict(reference)
        self._window: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()

    def add(self, category: str) -> None:
        """One more answer (the oldest one leaves a full window)."""
        self.add_many((category,))

    def add_many(self, categories: Sequence[str]) -> None:
        """More answers, in order (the oldest leave a full window)."""
        window = self._window
        leaving = max(0, len(window) + len(categories) - (window.maxlen or 0))
        if leaving:
            gone = [window[i] for i in range(min(leaving, len(window)))]
            self._counts.subtract(gone)
            self._counts = +self._counts  # drops the categories no longer in the window
        window.extend(categories)
        size = window.maxlen or len(categories)
        self._counts.update(categories[-size:] if len(categories) > size else categories)

    def __len__(self) -> int:
        return len(self._window)

    def shares(self) -> dict[str, float]:
        """Each category's share of the window."""
        total = len(self._window)
        return {category: n / total for category, n in self._counts.items()} if total else {}

    def distance(self) -> float | None:
        """Jensen-Shannon distance (base 2) between the window and the reference; None without either."""
        if not self.reference or not self._window:
            return None
        return js_distance(self.shares(), self.reference)


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (the square root of the divergence, base 2) of two distributions over categories."""
    p_total, q_total = sum(p.values()), sum(q.values())
    divergence = 0.0
    for category in set(p) | set(q):
        a, b = p.get(category, 0.0) / p_total, q.get(category, 0.0) / q_total
        middle = (a + b) / 2
        divergence += (a * math.log2(a / middle) if a else 0.0) / 2 + (b * math.log2(b / middle) if b else 0.0) / 2
    return math.sqrt(max(0.0, min(1.0, divergence)))


def output_profile(categories_of: Callable[[Answer], Sequence[str]], answers: Iterable[Answer]) -> dict[str, float]:
    """Each category's share of the categories `categories_of` names for `answers`: a version's `output_profile`
    when the answers are its runtime's on the held-out set."""
    counts = Counter(category for answer in answers for category in categories_of(answer))
    total = sum(counts.values())
    return {category: round(n / total, 6) for category, n in sorted(counts.items())} if total else {}


class ScoreBins:
    """Bins of a score among ascending `edges`, each named by its bounds (`"[0.25, 0.5)"`, `"[-inf, 0.1)"`); the
    names are made once, a score's is looked up (it runs for every answer)."""

    def __init__(self, edges: Sequence[float]) -> None:
        self.edges = tuple(edges)
        bounds = ["-inf", *(f"{edge:g}" for edge in self.edges), "inf"]
        self.names = tuple(f"[{lower}, {upper})" for lower, upper in zip(bounds, bounds[1:], strict=False))

    def __call__(self, score: float) -> str:
        return self.names[bisect.bisect_right(self.edges, score)]

    def of_top(self, scores: object) -> str | None:
        """The bin of an answer's top score: the first of its ranked `scores` tensor; None when it has none."""
        if not isinstance(scores, Tensor) or not scores.shape or not scores.shape[0]:
            return None
        return self(float(scores.to_numpy()[0]))
