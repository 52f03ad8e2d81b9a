"""The GRU4Rec network (PyTorch) and the graph that serves it (exported to ONNX).

`SessionGRU` reads a session item by item — item embedding → GRU → a linear layer over every item — and
after each item scores every item as the next one (trained with cross-entropy on the item that came next).
`ServingGraph` wraps a trained network for export: the scores after each session's *last* item, the
session's own items left out where asked, and the ranking (TopK) inside the graph.

Variable-length sessions travel right-padded: `items` [B, T] with `lengths` [B]. A unidirectional GRU's
state at position t depends on positions 0..t only, so whatever the padding after a session's end holds
cannot change its state at its last real position, `lengths - 1`, which is the state gathered: the same
answer as a packed sequence (`pack_padded_sequence`), in a graph that exports as one plain GRU node. The
padding's only cost is the work done on it (the runtime groups sessions by length to keep that small).
No pad id is needed either: padded positions may hold any item id, as they are never read.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SessionGRU", "ServingGraph", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("items", "lengths", "exclude")
"""Graph inputs: sessions int64 [B, T] right-padded, their lengths int64 [B] (1..T), items to leave out per session
bool [B, n_items]. The export adds one more, `top_k` (runtime.TOP_K_INPUT): how many items each output row ranks."""
OUTPUT_NAMES = ("next_items", "next_scores")
"""Graph outputs: the best `top_k` next items per session, best first [B, top_k] int64, and their probabilities
[B, top_k] float32 (-inf where an item was left out)."""


class SessionGRU(nn.Module):
    """Item embedding (`dim`) → one GRU layer (`hidden_size`) → a linear layer over the `n_items` items."""

    def __init__(self, n_items: int, dim: int = 64, hidden_size: int = 128) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_items, dim)
        self.gru = nn.GRU(dim, hidden_size, batch_first=True)
        self.output = nn.Linear(hidden_size, n_items)

    @property
    def n_items(self) -> int:
        """Items the network scores (ids 0..n_items-1)."""
        return self.embedding.num_embeddings

    def states(self, items: torch.Tensor) -> torch.Tensor:
        """The GRU's state after every position, [B, T, hidden_size], for sessions [B, T]."""
        states, _ = self.gru(self.embedding(items))
        return states

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item logits after every position, [B, T, n_items] (training reads them all)."""
        return self.output(self.states(items))

    def last_logits(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Next-item logits after each session's last real item, [B, n_items] (see the module docstring)."""
        states = self.states(items)
        # GatherElements rather than advanced indexing: one ONNX node, whatever B and T are.
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, states.shape[2])
        return self.output(states.gather(1, last).squeeze(1))


class ServingGraph(nn.Module):
    """What the service runs: probabilities of the next item after each session, ranked, best first.

    Traced with a ranking of every item; the export makes its length the `top_k` input, as recsys does (a partial
    sort of the best k costs less than sorting every item). Left-out items score -inf and rank last; the runtime
    keeps the first k finite entries of each row.
    """

    def __init__(self, model: SessionGRU) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(next_items, next_scores); see OUTPUT_NAMES."""
        probabilities = torch.softmax(self.model.last_logits(items, lengths), dim=1)
        scores, ranked = torch.topk(probabilities.masked_fill(exclude, float("-inf")), self.model.n_items, dim=1)
        return ranked, scores
