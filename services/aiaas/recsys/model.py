"""Matrix factorisation (PyTorch) and the graph that serves it (exported to ONNX).

`MatrixFactorization` learns a vector per user and per item plus an item bias, so that
`score(u, i) = user[u] · item[i] + bias[i]` is near 1 for what a user rated and near 0 for
the rest (implicit feedback, weighted by the rating). `ServingGraph` wraps a trained model
for export: both tasks in one graph, with the ranking (TopK) inside it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MatrixFactorization", "ServingGraph", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("user_id", "exclude", "item_id")
"""Graph inputs: users [B] int64, items to leave out per user [B, n_items] bool, query items [C] int64.
The export adds one more, `top_k` (runtime.TOP_K_INPUT): how many items each output row ranks."""
OUTPUT_NAMES = ("recommend_items", "recommend_scores", "similar_items", "similar_scores")
"""Graph outputs: the best `top_k` items, best first, per user [B, top_k] and per query item [C, top_k]."""


class MatrixFactorization(nn.Module):
    """User and item factors of `dim` numbers each, plus a per-item bias (it absorbs popularity)."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.user_factors = nn.Parameter(torch.randn(n_users, dim) * init_scale)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim) * init_scale)
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    def scores(self) -> torch.Tensor:
        """Every user's score for every item, [n_users, n_items]."""
        return self.user_factors @ self.item_factors.T + self.item_bias

    def implicit_loss(self, observed: torch.Tensor, weights: torch.Tensor, negative_weight: float) -> torch.Tensor:
        """Mean weighted squared error over the whole user × item matrix (target 1 where rated, else 0).

        `observed` holds flat cell indices (`user * n_items + item`), `weights` their weights. The
        sum of squares over *all* cells comes from the Gram matrices (the iALS trick), so the loss
        is exact without materialising a weight matrix or sampling negatives: deterministic and fast.
        """
        users, items = self.user_factors, self.item_factors
        everything = ((users.T @ users) * (items.T @ items)).sum() \
            + 2 * users.sum(0) @ (items.T @ self.item_bias) + len(users) * (self.item_bias @ self.item_bias)
        predicted = self.scores().reshape(-1)[observed]
        correction = (weights * (1 - predicted) ** 2 - negative_weight * predicted**2).sum()
        return (negative_weight * everything + correction) / (len(users) * len(items))

    def regulariser(self) -> torch.Tensor:
        """Mean squared norm of the user and item vectors (keeps rarely seen ones small)."""
        return self.user_factors.pow(2).sum(1).mean() + self.item_factors.pow(2).sum(1).mean()


class ServingGraph(nn.Module):
    """Both tasks of the service over one trained model; outputs are rankings, best first.

    Traced with a ranking of every item; the export makes its length the `top_k` input (a partial sort of
    the best k is much cheaper than sorting all items (bench/ceilings.py), and jobs ask for 10 by default).

    `recommend`: `user · item + bias` with the `exclude`d items pushed to -inf.
    `similar_items`: cosine between item vectors, the query item itself pushed to -inf.
    The runtime keeps the first k finite entries of each row.
    """

    def __init__(self, model: MatrixFactorization) -> None:
        super().__init__()
        self.user_factors = nn.Parameter(model.user_factors.detach().clone(), requires_grad=False)
        self.item_factors = nn.Parameter(model.item_factors.detach().clone(), requires_grad=False)
        self.item_bias = nn.Parameter(model.item_bias.detach().clone(), requires_grad=False)
        normed = nn.functional.normalize(self.item_factors, dim=1)
        self.item_directions = nn.Parameter(normed, requires_grad=False)

    def forward(self, user_id: torch.Tensor, exclude: torch.Tensor, item_id: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(recommend_items, recommend_scores, similar_items, similar_scores); see OUTPUT_NAMES."""
        n_items = self.item_factors.shape[0]
        affinity = self.user_factors[user_id] @ self.item_factors.T + self.item_bias
        rec_scores, rec_items = torch.topk(affinity.masked_fill(exclude, float("-inf")), n_items, dim=1)
        cosine = self.item_directions[item_id] @ self.item_directions.T
        itself = torch.arange(n_items)[None, :] == item_id[:, None]
        sim_scores, sim_items = torch.topk(cosine.masked_fill(itself, float("-inf")), n_items, dim=1)
        return rec_items, rec_scores, sim_items, sim_scores
