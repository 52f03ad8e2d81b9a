"""Text service: sentence embeddings, similarity and topic classification (all-MiniLM-L6-v2).

Entry point: `python -m aiaas.text` (the service). Build the model: `aiaas models build text`.
Topics: `aiaas.text.infer` → `aiaas.text.results`. One contract, three tasks (`Job.task`):

* `embed` — input `texts` (list of strings) → `embeddings` float32 [n, 384], unit length;
* `similarity` — inputs `left` and `right` (lists of equal length) → `scores` float32 [n], cosine;
* `classify` — input `texts` → `labels` (list of topic names), `scores` float32 [n, topics],
  `label_names`.

Every result also carries `truncated` (bool [n]): texts longer than `max_seq_len` tokens are
cut to fit, never refused.
"""

MODEL = "text"

__all__ = ["MODEL"]
