"""Tokenising texts and grouping them by length so a model call pads as little as possible.

A batch of jobs holds texts of very different lengths. Padding every text to the longest one
wastes model time on pad tokens; sorting the batch's texts by token count and cutting it into
chunks of similar length (each under a token budget) keeps the waste small. `padding_waste`
measures it, so the benchmark can report before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from aiaas.serving.length_groups import length_groups as serving_length_groups
from aiaas.serving.length_groups import padding_waste

__all__ = ["TextTokenizer", "Tokenized", "length_groups", "padding_waste", "pad", "DEFAULT_CALL_OVERHEAD_TOKENS"]

DEFAULT_CALL_OVERHEAD_TOKENS = 256
"""One encoder call's cost in token slots where it is not measured (callers without an encoder at hand, and GPU
encoders until measured on one): the value before the CPU runtime measured its own (bench/text_padding.py times
the two)."""


@dataclass(frozen=True)
class Tokenized:
    """One text's token ids (already cut to the limit) and whether it was cut."""

    ids: list[int]
    truncated: bool


class TextTokenizer:
    """The model's WordPiece tokenizer (from its `tokenizer.json`), cutting at `max_seq_len` tokens."""

    def __init__(self, tokenizer_json: str, max_seq_len: int) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # cut ourselves: we must know which texts were cut
        self.max_seq_len = max_seq_len

    def encode(self, texts: Sequence[str]) -> list[Tokenized]:
        """Token ids per text with [CLS] … [SEP], at most `max_seq_len` of them."""
        out = []
        for encoding in self._tokenizer.encode_batch(list(texts)):
            ids = encoding.ids
            if len(ids) > self.max_seq_len:
                out.append(Tokenized(ids[: self.max_seq_len - 1] + ids[-1:], True))  # keep [SEP] last
            else:
                out.append(Tokenized(ids, False))
        return out


def length_groups(lengths: Sequence[int], max_batch_tokens: int,
                  call_overhead_tokens: int = DEFAULT_CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices grouped by similar length, shortest first (`serving.length_groups`, in token slots). The text runtime
    measures one call's cost on a CPU encoder (`runtime.measure_call_overhead`); the default is for the rest."""
    return serving_length_groups(lengths, max_batch_tokens, call_overhead_tokens)


def pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded `input_ids` and `attention_mask`, int64 [rows, longest]."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    present = np.arange(lengths.max()) < lengths[:, None]
    ids = np.zeros(present.shape, dtype=np.int64)
    ids[present] = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(lengths.sum()))
    return ids, present.astype(np.int64)
