"""How a batch of variable-length items is cut into model calls: groups of similar length, so that short items are
not padded to the longest of the batch, and no more calls than padding less is worth (text, rnn)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["length_groups", "padding_waste"]


def length_groups(lengths: Sequence[int], max_slots: int, call_overhead_slots: int) -> list[list[int]]:
    """Indices grouped by similar length, shortest first.

    Greedy over the sorted lengths: an item joins the current group unless that would exceed `max_slots`
    (rows × longest), or would add more padded slots than a separate model call costs (`call_overhead_slots`,
    the fixed cost of one call expressed in slots: tokens for text, session positions for the rnn).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        length = lengths[index]  # sorted ascending: the longest of the group if it joins
        if current:
            too_big = (len(current) + 1) * length > max_slots
            too_padded = len(current) * (length - lengths[current[-1]]) > call_overhead_slots
            if too_big or too_padded:
                groups.append(current)
                current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def padding_waste(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> float:
    """Share of the slots fed to the model that are padding (0 = none)."""
    slots = sum(len(g) * max(lengths[i] for i in g) for g in groups if g)
    real = sum(lengths[i] for g in groups for i in g)
    return 1 - real / slots if slots else 0.0
