"""The ratings data: generated here with a fixed seed from a latent-factor process (no download).

The process (`generate_ratings`), so that anyone can regenerate and check the numbers:

1. **Tastes.** Every user `u` and item `i` gets a hidden taste vector of `latent_dim` numbers
   drawn i.i.d. from N(0, 1/latent_dim); the affinity `a[u, i] = user[u] · item[i]` is then
   standardised to mean 0 and standard deviation 1 over the whole users × items matrix.
2. **Popularity skew.** Items are given popularity ranks by a random permutation (so an
   item's id says nothing about its popularity) and a popularity bias
   `p[i] = -popularity_skew · log(rank[i])` (Zipf-like: rank 1 is the most popular).
3. **Activity.** User `u` rates `n[u]` items, `n[u]` log-normal (median `median_activity`,
   σ 0.6 in log space), rounded and clipped to `min_activity..max_activity`: a few heavy raters, many light ones.
4. **Choice.** The items a user rates are drawn without replacement with probability
   proportional to `exp(taste_strength · a[u, i] + p[i])` (Gumbel top-k: add Gumbel noise to
   the log-weights and keep the `n[u]` largest).
5. **Rating.** `round(3 + rating_slope · a[u, i] + noise)` clipped to 1..5, noise ~ N(0, rating_noise²):
   users rate what they like higher, with noise.
6. **Held out.** For every user, `held_out_per_user` of their ratings, picked at random, are
   kept out of training; a recommender is scored on whether it finds them (hit-rate@k).

User and item ids are the row and column numbers: users 0..n_users-1, items 0..n_items-1.
`ServingTables` holds what the service needs from the training data besides the model:
each user's rated items (to leave them out) and each item's popularity (the fallback).

Steps 1-5 draw from `numpy.random.default_rng(seed)` in a fixed order and step 6 from
`default_rng(seed + 1)`, so a config gives the same arrays every time (NumPy does not promise
identical streams across its major versions: `RatingsSplit.data_hash` records what a model
version was trained on).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RatingsConfig", "Ratings", "RatingsSplit", "ServingTables", "SERVING_FILE",
    "generate_ratings", "split_ratings", "load_split",
]

SERVING_FILE = "serving.npz"
"""Name of the companion file (registered with every version) that holds the `ServingTables`."""


@dataclass(frozen=True)
class RatingsConfig:
    """Parameters of the generating process (see the module docstring for what each one does)."""

    n_users: int = 1000
    n_items: int = 400
    latent_dim: int = 8
    popularity_skew: float = 1.0
    taste_strength: float = 2.5
    median_activity: int = 24
    min_activity: int = 8
    max_activity: int = 120
    rating_slope: float = 1.0
    rating_noise: float = 0.6
    held_out_per_user: int = 2
    seed: int = 20240611


@dataclass(frozen=True)
class Ratings:
    """(user, item, rating) triples as three parallel arrays (int64, int64, float32)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def take(self, mask: np.ndarray) -> Ratings:
        """The triples where `mask` is true."""
        return Ratings(self.users[mask], self.items[mask], self.ratings[mask])


@dataclass(frozen=True)
class RatingsSplit:
    """Training ratings and, per user, the held-out ones the model never sees."""

    n_users: int
    n_items: int
    train: Ratings
    test: Ratings

    def data_hash(self) -> str:
        """sha256 of the training triples: what the model was trained on."""
        digest = hashlib.sha256()
        for array in (self.train.users, self.train.items, self.train.ratings):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def popularity(self) -> np.ndarray:
        """How many users rated each item in training (int64, [n_items])."""
        return np.bincount(self.train.items, minlength=self.n_items).astype(np.int64)

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Training items per user as CSR (`indptr` [n_users+1], `indices`).

        User u's items are `indices[indptr[u]:indptr[u+1]]`, in ascending order.
        """
        order = np.lexsort((self.train.items, self.train.users))
        counts = np.bincount(self.train.users, minlength=self.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return indptr, self.train.items[order].astype(np.int64)

    def held_out(self) -> dict[int, set[int]]:
        """User → the items held out for them."""
        found: dict[int, set[int]] = {}
        for user, item in zip(self.test.users.tolist(), self.test.items.tolist(), strict=True):
            found.setdefault(user, set()).add(item)
        return found


def _choices(rng: np.random.Generator, logits: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, `counts[row]` columns drawn without replacement ∝ exp(logits) (Gumbel top-k)."""
    keys = logits + rng.gumbel(size=logits.shape)
    ranked = np.argsort(-keys, axis=1, kind="stable")
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = np.concatenate([ranked[r, :c] for r, c in enumerate(counts)])
    return rows.astype(np.int64), cols.astype(np.int64)


def generate_ratings(config: RatingsConfig = RatingsConfig()) -> Ratings:
    """Every rating of the generating process (steps 1-5 of the module docstring), user-major order."""
    rng = np.random.default_rng(config.seed)
    scale = 1.0 / np.sqrt(config.latent_dim)
    tastes_u = rng.normal(0.0, scale, (config.n_users, config.latent_dim))
    tastes_i = rng.normal(0.0, scale, (config.n_items, config.latent_dim))
    affinity = tastes_u @ tastes_i.T
    affinity = (affinity - affinity.mean()) / affinity.std()
    rank = rng.permutation(config.n_items) + 1
    popularity = -config.popularity_skew * np.log(rank)
    activity = np.exp(rng.normal(np.log(config.median_activity), 0.6, config.n_users))
    counts = np.clip(np.rint(activity), config.min_activity, min(config.max_activity, config.n_items)).astype(int)
    users, items = _choices(rng, config.taste_strength * affinity + popularity[None, :], counts)
    noise = rng.normal(0.0, config.rating_noise, len(users))
    ratings = np.clip(np.rint(3.0 + config.rating_slope * affinity[users, items] + noise), 1, 5)
    return Ratings(users, items, ratings.astype(np.float32))


def split_ratings(ratings: Ratings, config: RatingsConfig = RatingsConfig()) -> RatingsSplit:
    """Step 6: hold out `held_out_per_user` random ratings of every user (seeded; never trained on)."""
    rng = np.random.default_rng(config.seed + 1)
    held = np.zeros(len(ratings), dtype=bool)
    starts = np.flatnonzero(np.r_[True, ratings.users[1:] != ratings.users[:-1]])
    ends = np.r_[starts[1:], len(ratings)]
    for start, end in zip(starts, ends, strict=True):
        held[start + rng.choice(end - start, size=config.held_out_per_user, replace=False)] = True
    return RatingsSplit(config.n_users, config.n_items, ratings.take(~held), ratings.take(held))


def load_split(config: RatingsConfig = RatingsConfig()) -> RatingsSplit:
    """The generated ratings, split: the same arrays for the same config every time."""
    return split_ratings(generate_ratings(config), config)


@dataclass(frozen=True)
class ServingTables:
    """Training facts the service needs besides the graph: who rated what, and how popular each item is."""

    seen_indptr: np.ndarray
    """int64 [n_users + 1]: user u's rated items are `seen_items[seen_indptr[u]:seen_indptr[u + 1]]`."""
    seen_items: np.ndarray
    """int64: every user's rated (training) items, user after user."""
    popularity: np.ndarray
    """int64 [n_items]: how many users rated each item in training."""

    @property
    def n_users(self) -> int:
        """Users the model was trained on (ids 0..n_users-1)."""
        return len(self.seen_indptr) - 1

    @property
    def n_items(self) -> int:
        """Items the model knows (ids 0..n_items-1)."""
        return len(self.popularity)

    def seen(self, user: int) -> np.ndarray:
        """The items `user` rated in training (empty for users the model never saw)."""
        if not 0 <= user < self.n_users:
            return self.seen_items[:0]
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    @classmethod
    def from_split(cls, split: RatingsSplit) -> ServingTables:
        """The tables of a split's training part."""
        indptr, items = split.seen_csr()
        return cls(indptr, items, split.popularity())

    def to_bytes(self) -> bytes:
        """An .npz file (plain arrays only, so it loads without pickle)."""
        buffer = io.BytesIO()
        np.savez(buffer, seen_indptr=self.seen_indptr, seen_items=self.seen_items, popularity=self.popularity)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ServingTables:
        """Read `to_bytes` output; pickled objects are refused (allow_pickle=False)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            tables = cls(*(arrays[name].astype(np.int64) for name in ("seen_indptr", "seen_items", "popularity")))
        if tables.seen_indptr[-1] != len(tables.seen_items) or np.any(np.diff(tables.seen_indptr) < 0):
            raise ValueError(f"{SERVING_FILE}: seen_indptr does not index seen_items")
        return tables
