"""A small held-out check of the LLM: questions whose greedy answer must contain a word.

Shipped with the project (no data set is downloaded). The build records the pass rate as the version's metric
(`pass_rate`, higher is better), which promotion compares, and refuses a conversion that answers none.
"""

from __future__ import annotations

__all__ = ["EVAL_PROMPTS"]

EVAL_PROMPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What planet do we live on?", ("Earth",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What color is the sky on a clear day?", ("blue", "Blue")),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2", "Carbon dioxide")),
    ("How many days are in a week?", ("seven", "7", "Seven")),
    ("What is frozen water called?", ("ice", "Ice")),
)
"""(question, words of which the answer must contain one)."""
