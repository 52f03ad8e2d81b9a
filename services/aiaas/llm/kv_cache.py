"""The keys and values of every running sequence, one row each, for the engine's continuous batching.

Rows are right-aligned: every decode step writes column `length` of every row at once, so one forward serves
sequences of any lengths. A row's columns before its `start` belong to no token of it: the attention mask
hides them (they hold zeros, never stale values: 0 x NaN would poison a masked softmax). Rows join (a prefilled
newcomer's keys and values are placed to end at the last column; if it is longer, everyone else moves right),
leave (the last row moves into the hole, so a leave copies one row, not the cache), and the columns no row
needs any more are dropped now and then.

`RowLayer` is a Transformers cache layer: the model's own attention writes into it and reads back the filled
columns. Storage grows by doubling, so a step writes in place instead of concatenating the whole cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["RowLayer", "RowCache"]


class RowLayer(DynamicLayer):
    """One model layer's keys and values: [rows, kv heads, columns, head dim], filled up to `length`."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        shape = list(key_states.shape)
        self.rows = shape[0]
        self._keys = key_states.new_zeros(shape[0], shape[1], max(16, shape[2]), shape[3])
        self._values = torch.zeros_like(self._keys)
        self.is_initialized = True

    def _reserve(self, rows: int, columns: int) -> None:
        """Room for `rows` rows of `columns` columns (doubling; existing contents kept in place)."""
        assert self._keys is not None and self._values is not None
        have_rows, _, have_cols, _ = self._keys.shape
        if rows <= have_rows and columns <= have_cols:
            return
        new_rows, new_cols = max(have_rows, rows), have_cols
        while new_cols < columns:
            new_cols *= 2
        if rows > have_rows:
            new_rows = max(rows, 2 * have_rows)
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            grown = old.new_zeros(new_rows, old.shape[1], new_cols, old.shape[3])
            grown[:self.rows, :, :self.length] = old[:self.rows, :, :self.length]
            setattr(self, name, grown)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        added = key_states.shape[-2]
        self._reserve(self.rows, self.length + added)
        assert self._keys is not None and self._values is not None
        self._keys[:self.rows, :, self.length:self.length + added] = key_states
        self._values[:self.rows, :, self.length:self.length + added] = value_states
        self.length += added
        self.keys = self._keys[:self.rows, :, :self.length]
        self.values = self._values[:self.rows, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def join(self, other: RowLayer) -> int:
        """Take `other`'s rows, right-aligned with these; how far this layer's rows moved right."""
        assert other._keys is not None and other._values is not None
        if not self.is_initialized:
            self.lazy_initialization(other._keys[:other.rows, :, :other.length],
                                     other._values[:other.rows, :, :other.length])
            self.rows = 0
        if not self.rows:
            self.length = 0  # nobody left to keep columns for
        length = max(self.length, other.length)
        shift = length - self.length
        self._reserve(self.rows + other.rows, length)
        assert self._keys is not None and self._values is not None
        for mine, theirs in ((self._keys, other._keys), (self._values, other._values)):
            if shift and self.rows:
                mine[:self.rows, :, shift:length] = mine[:self.rows, :, :self.length].clone()
                mine[:self.rows, :, :shift] = 0
            new = slice(self.rows, self.rows + other.rows)
            mine[new, :, :length - other.length] = 0
            mine[new, :, length - other.length:length] = theirs[:other.rows, :, :other.length]
        self.rows += other.rows
        self.length = length
        self._views()
        return shift

    def remove(self, row: int) -> None:
        """Drop `row`: the last row takes its place."""
        assert self._keys is not None and self._values is not None
        last = self.rows - 1
        if row != last:
            self._keys[row, :, :self.length] = self._keys[last, :, :self.length]
            self._values[row, :, :self.length] = self._values[last, :, :self.length]
        self.rows = last
        self._views()

    def clear_before(self, row: int, column: int) -> None:
        """Zero `row`'s columns before `column` (columns its attention mask hides)."""
        assert self._keys is not None and self._values is not None
        self._keys[row, :, :column] = 0
        self._values[row, :, :column] = 0

    def drop_columns(self, count: int) -> None:
        """Drop the first `count` columns (no row needs them)."""
        assert self._keys is not None and self._values is not None
        for store in (self._keys, self._values):
            store[:self.rows, :, :self.length - count] = store[:self.rows, :, count:self.length].clone()
        self.length -= count
        self._views()

    def _views(self) -> None:
        assert self._keys is not None and self._values is not None
        self.keys = self._keys[:self.rows, :, :self.length]
        self.values = self._values[:self.rows, :, :self.length]


class RowCache(Cache):
    """A Transformers cache of `RowLayer`s (one per model layer) with row-level join, remove and trim."""

    def __init__(self, layers: int) -> None:
        super().__init__(layers=[RowLayer() for _ in range(layers)])

    @property
    def row_layers(self) -> Sequence[RowLayer]:
        return self.layers  # type: ignore[return-value]

    @property
    def rows(self) -> int:
        return self.row_layers[0].rows

    @property
    def length(self) -> int:
        return self.row_layers[0].length

    def join(self, other: RowCache) -> int:
        """Append `other`'s rows (after these); how many columns this cache's rows moved right."""
        shifts = {layer.join(theirs) for layer, theirs in zip(self.row_layers, other.row_layers, strict=True)}
        assert len(shifts) == 1
        return shifts.pop()

    def remove(self, row: int) -> None:
        """Drop `row`; the last row moves into its place."""
        for layer in self.row_layers:
            layer.remove(row)

    def clear_before(self, row: int, column: int) -> None:
        """Zero `row`'s columns before `column`, which its mask hides (never stale or NaN values there)."""
        if column > 0:
            for layer in self.row_layers:
                layer.clear_before(row, column)

    def drop_columns(self, count: int) -> None:
        """Drop the first `count` columns, which every row's mask hides."""
        if count > 0:
            for layer in self.row_layers:
                layer.drop_columns(count)
