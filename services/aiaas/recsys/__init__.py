"""Recsys service: matrix-factorisation recommendations over a generated ratings data set.

Entry point: `python -m aiaas.recsys` (the service). Build the model: `aiaas models build recsys`.
Topics: `aiaas.recsys.infer` → `aiaas.recsys.results`. Contract: `Job.task` picks the task —
`recommend` (inputs `user_id` int, `k` int 1..max_k default 10, `exclude_seen` bool default true)
or `similar_items` (inputs `item_id` int, `k`). Outputs: `items` (int64 tensor [≤k], best first),
`scores` (float32 tensor, same length) and `strategy`: `collaborative` (the model),
`popularity` (a user the model never saw: most popular items) or `item_cosine` (similar items).
"""

MODEL = "recsys"

__all__ = ["MODEL"]
