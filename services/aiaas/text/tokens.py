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
    """Indices grouped by similar length, shortest first.

    Greedy over the sorted lengths: a text joins the current group unless that would exceed
    `max_batch_tokens` (rows × longest), or would add more padding than a separate model call
    costs (`call_overhead_tokens`, the fixed cost of one call expressed in token slots). The text runtime
    measures that cost on a CPU encoder (`runtime.measure_call_overhead`); the default is for the rest.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        length = lengths[index]  # sorted ascending: the longest of the group if it joins
        if current:
            longest = lengths[current[-1]]
            too_big = (len(current) + 1) * length > max_batch_tokens
            too_padded = len(current) * (length - longest) > call_overhead_tokens
            if too_big or too_padded:
                groups.append(current)
                current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def padding_waste(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> float:
    """Share of the token slots fed to the model that are padding (0 = none)."""
    slots = sum(len(g) * max(lengths[i] for i in g) for g in groups if g)
    real = sum(lengths[i] for g in groups for i in g)
    return 1 - real / slots if slots else 0.0


def pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded `input_ids` and `attention_mask`, int64 [rows, longest]."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    present = np.arange(lengths.max()) < lengths[:, None]
    ids = np.zeros(present.shape, dtype=np.int64)
    ids[present] = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(lengths.sum()))
    return ids, present.astype(np.int64)
