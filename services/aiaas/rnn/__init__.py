"""RNN service: session-based next-item recommendations from a GRU over the items a visitor viewed (GRU4Rec).

Entry point: `python -m aiaas.rnn` (the service). Build the model: `aiaas models build rnn`.
Topics: `aiaas.rnn.infer` → `aiaas.rnn.results`. Contract: task `next_items`, inputs `items` (a 1-D
integer tensor: the session's item ids in the order they were viewed, 1..max_session_items of them, each
within the recsys item space 0..n_items-1), `k` (int 1..max_k, default 10) and `exclude_seen` (bool,
default true: the session's own items are left out). Outputs: `items` (int64 tensor [≤k], best first)
and `scores` (float32 tensor, same length: the model's probability that each is the session's next item).
The session data is generated with a fixed seed (`sessions.py`); training jobs may bring their own.
"""

MODEL = "rnn"

__all__ = ["MODEL"]
