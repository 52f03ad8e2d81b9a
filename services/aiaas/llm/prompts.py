"""Prompts: chat messages through the model's chat template, or plain text, to token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ROLES", "chat_prompt_ids", "completion_prompt_ids"]

ROLES = ("system", "user", "assistant")


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The token ids of `messages` in the model's chat template, ready for the assistant's answer."""
    ids = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # some Transformers versions return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def completion_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The token ids of a plain prompt, continued as it is."""
    return [int(i) for i in tokenizer.encode(prompt, add_special_tokens=False)]
