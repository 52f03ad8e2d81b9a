"""The session data: shopping sessions generated here with a fixed seed (no download), over recsys's items.

A session is the ordered list of items one visitor looked at. The process (`generate_sessions`), so that
anyone can regenerate and check the numbers:

1. **Popularity.** Items 0..n_items-1 (the recsys item space, `RatingsConfig().n_items`) get popularity
   ranks by a random permutation and a weight `p[i] ∝ rank[i] ** -popularity_skew` (Zipf-like, as
   recsys's step 2): where a visitor lands when they jump.
2. **Routes.** `n_routes` routes, each `route_length` distinct items drawn uniformly: paths through the
   catalogue that visitors tend to follow in order (a camera → its lens → a bag → ...). Every item lies on
   about `n_routes · route_length / n_items` routes, so its *successors* are many, while the route a
   visitor is on, and so what comes next, shows only in the items before it: the structure a sequence
   model can learn and a bag of items (matrix factorisation) or the last item alone cannot.
3. **Length.** Session `s` has `L[s]` items, log-normal (median `median_length`, σ `length_sigma` in log
   space), rounded and clipped to `min_length..max_length`: many short sessions, a few long ones.
4. **Start.** A route drawn uniformly and a position on it drawn uniformly (not the last): the first item.
5. **Next item.** With probability `follow` the visitor goes on along the route: one position further,
   or two (a skipped item) with probability `skip`. Otherwise, or at the route's end (or a skip past it),
   they *jump*: the next item is the first of four popularity draws (step 1) that is not yet in the
   session (uniform over the unseen items in the rare case that all four are), and they go on along a
   route through it, one of its occurrences drawn uniformly (none when it lies on no route: they jump
   again). A route step onto an item already in the session counts as a jump too, so **a session never
   repeats an item**.
6. **Held out.** A random `held_out_share` of the sessions is kept out of training; a model is scored on
   predicting each of their items from the ones before it (every prefix): recall@10 and MRR@10.

Steps 1-5 draw from `numpy.random.default_rng(seed)` in a fixed order (all draws first, as arrays; the
walk itself draws nothing), step 6 from `default_rng(seed + 1)`, so a config gives the same sessions every
time (NumPy does not promise identical streams across its major versions: `SessionsSplit.data_hash`
records what a model version was trained on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aiaas.recsys.data import RatingsConfig

__all__ = ["SessionsConfig", "Sessions", "SessionsSplit", "generate_sessions", "split_sessions", "load_split",
           "next_item_examples"]

_JUMP_DRAWS = 4
"""Popularity draws made for every jump (step 5): the first one not yet in the session is taken."""


@dataclass(frozen=True)
class SessionsConfig:
    """Parameters of the generating process (see the module docstring for what each one does)."""

    n_items: int = RatingsConfig().n_items
    n_sessions: int = 20_000
    n_routes: int = 160
    route_length: int = 20
    popularity_skew: float = 1.0
    follow: float = 0.75
    skip: float = 0.2
    median_length: int = 6
    length_sigma: float = 0.6
    min_length: int = 2
    max_length: int = 20
    held_out_share: float = 0.1
    seed: int = 20240701


@dataclass(frozen=True)
class Sessions:
    """Ordered item sequences, ragged: session `s` is `items[offsets[s]:offsets[s + 1]]` (int64 both)."""

    items: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Items per session (int64, [len(self)])."""
        return np.diff(self.offsets)

    def session(self, index: int) -> np.ndarray:
        """Session `index`'s items, in order."""
        return self.items[self.offsets[index] : self.offsets[index + 1]]

    def as_lists(self) -> list[list[int]]:
        """Every session as a list of ints."""
        flat = self.items.tolist()
        bounds = self.offsets.tolist()
        return [flat[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    def take(self, indices: np.ndarray) -> Sessions:
        """The sessions at `indices`, in that order."""
        return Sessions.from_lists([self.session(int(i)) for i in indices])

    @classmethod
    def from_lists(cls, sessions: Sequence[Sequence[int] | np.ndarray]) -> Sessions:
        """Sessions from one sequence of item ids each."""
        lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions]) if len(sessions) else \
            np.zeros(0, np.int64)
        return cls(items.astype(np.int64), offsets)


@dataclass(frozen=True)
class SessionsSplit:
    """Training sessions and the held-out ones the model never sees, over items 0..n_items-1."""

    n_items: int
    train: Sessions
    test: Sessions

    def data_hash(self) -> str:
        """sha256 of the training sessions: what the model was trained on."""
        digest = hashlib.sha256()
        for array in (self.train.items, self.train.offsets):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def popularity(self) -> np.ndarray:
        """How often each item occurs in the training sessions (int64, [n_items])."""
        return np.bincount(self.train.items, minlength=self.n_items).astype(np.int64)


@dataclass(frozen=True)
class _Draws:
    """Every random number steps 3-5 use, drawn up front as arrays (the walk draws nothing itself)."""

    lengths: np.ndarray
    start_route: np.ndarray
    start_position: np.ndarray
    move: np.ndarray
    skip: np.ndarray
    jumps: np.ndarray
    landing: np.ndarray
    fallback: np.ndarray


def _draws(rng: np.random.Generator, config: SessionsConfig, popularity: np.ndarray) -> _Draws:
    """Steps 3-5's random numbers, in a fixed order."""
    shape = (config.n_sessions, config.max_length)
    raw = np.exp(rng.normal(np.log(config.median_length), config.length_sigma, config.n_sessions))
    lengths = np.clip(np.rint(raw), config.min_length, config.max_length).astype(np.int64)
    return _Draws(
        lengths=lengths,
        start_route=rng.integers(config.n_routes, size=config.n_sessions),
        start_position=rng.integers(config.route_length - 1, size=config.n_sessions),
        move=rng.random(shape), skip=rng.random(shape),
        jumps=rng.choice(config.n_items, size=(*shape, _JUMP_DRAWS), p=popularity),
        landing=rng.random(shape), fallback=rng.random(shape),
    )


def generate_sessions(config: SessionsConfig = SessionsConfig()) -> Sessions:
    """Every session of the generating process (steps 1-5 of the module docstring), in order."""
    rng = np.random.default_rng(config.seed)
    rank = rng.permutation(config.n_items) + 1
    popularity = rank.astype(np.float64) ** -config.popularity_skew
    popularity /= popularity.sum()
    routes = np.stack([rng.permutation(config.n_items)[: config.route_length] for _ in range(config.n_routes)])
    draws = _draws(rng, config, popularity)
    on_routes: list[list[tuple[int, int]]] = [[] for _ in range(config.n_items)]
    for route, items in enumerate(routes.tolist()):
        for position, item in enumerate(items):
            on_routes[item].append((route, position))
    walk = _Walk(config, routes.tolist(), on_routes, draws)
    return Sessions.from_lists([walk.session(s) for s in range(config.n_sessions)])


class _Walk:
    """Step 5 for one session at a time, reading the pre-drawn numbers of `_Draws`."""

    def __init__(self, config: SessionsConfig, routes: list[list[int]], on_routes: list[list[tuple[int, int]]],
                 draws: _Draws) -> None:
        self._config, self._routes, self._on_routes, self._draws = config, routes, on_routes, draws

    def session(self, s: int) -> list[int]:
        """Session `s`: its start (step 4), then one step 5 per further item."""
        d = self._draws
        route, position = int(d.start_route[s]), int(d.start_position[s])
        items = [self._routes[route][position]]
        seen = set(items)
        for step in range(1, int(d.lengths[s])):
            ahead = 2 if d.skip[s, step] < self._config.skip else 1
            on_route = route >= 0 and position + ahead < self._config.route_length
            if on_route and d.move[s, step] < self._config.follow \
                    and self._routes[route][position + ahead] not in seen:
                position += ahead
                item = self._routes[route][position]
            else:
                item = self._jump(s, step, seen)
                route, position = self._land(s, step, item)
            items.append(item)
            seen.add(item)
        return items

    def _jump(self, s: int, step: int, seen: set[int]) -> int:
        for item in self._draws.jumps[s, step].tolist():
            if item not in seen:
                return int(item)
        unseen = [i for i in range(self._config.n_items) if i not in seen]
        return unseen[int(self._draws.fallback[s, step] * len(unseen))]

    def _land(self, s: int, step: int, item: int) -> tuple[int, int]:
        """The (route, position) the visitor goes on from after jumping to `item`; (-1, -1): on no route."""
        occurrences = self._on_routes[item]
        if not occurrences:
            return -1, -1
        return occurrences[int(self._draws.landing[s, step] * len(occurrences))]


def split_sessions(sessions: Sessions, config: SessionsConfig = SessionsConfig()) -> SessionsSplit:
    """Step 6: hold out a random `held_out_share` of the sessions (seeded; never trained on)."""
    order = np.random.default_rng(config.seed + 1).permutation(len(sessions))
    held = np.sort(order[: round(config.held_out_share * len(sessions))])
    kept = np.sort(order[round(config.held_out_share * len(sessions)) :])
    return SessionsSplit(config.n_items, sessions.take(kept), sessions.take(held))


def load_split(config: SessionsConfig = SessionsConfig()) -> SessionsSplit:
    """The generated sessions, split: the same arrays for the same config every time."""
    return split_sessions(generate_sessions(config), config)


def next_item_examples(sessions: Sessions) -> tuple[list[np.ndarray], np.ndarray]:
    """Every prefix of every session and the item that follows it: what recall@10 and MRR@10 score.

    A session of L items gives L - 1 examples (its first item predicts the second, its first two the
    third, ...). Returns (the prefixes, the next items as int64 [examples]).
    """
    prefixes, following = [], []
    for s in range(len(sessions)):
        items = sessions.session(s)
        for end in range(1, len(items)):
            prefixes.append(items[:end])
            following.append(int(items[end]))
    return prefixes, np.array(following, dtype=np.int64)
