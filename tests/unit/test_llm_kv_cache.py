"""The row cache's bookkeeping, on small tensors: join right-aligned, remove by moving the last row, drop columns."""

from __future__ import annotations

import torch

from aiaas.llm.kv_cache import RowCache


def filled(rows: int, columns: int, first: float) -> RowCache:
    """A one-layer cache whose row r, column c holds first + 100 r + c (keys) and its negative (values)."""
    cache = RowCache(1)
    grid = first + 100 * torch.arange(rows)[:, None] + torch.arange(columns)[None, :]
    keys = grid.float()[:, None, :, None].expand(rows, 2, columns, 3).contiguous()
    cache.update(keys, -keys, 0)
    return cache


def column_values(cache: RowCache) -> list[list[float]]:
    return cache.layers[0].keys[:, 0, :, 0].tolist()


def test_a_step_writes_one_column_for_every_row_in_place():
    cache = filled(2, 3, 0)
    storage = cache.layers[0]._keys
    step = torch.full((2, 2, 1, 3), 7.0)
    keys, values = cache.update(step, -step, 0)
    assert keys.shape == (2, 2, 4, 3) and values.shape == (2, 2, 4, 3)
    assert cache.layers[0]._keys is storage  # written into, not concatenated
    assert column_values(cache) == [[0, 1, 2, 7], [100, 101, 102, 7]]
    assert cache.get_seq_length() == 4


def test_a_shorter_newcomer_ends_at_the_last_column_after_zeros():
    cache = filled(1, 4, 0)
    shift = cache.join(filled(1, 2, 50))
    assert shift == 0
    assert column_values(cache) == [[0, 1, 2, 3], [0, 0, 50, 51]]


def test_a_longer_newcomer_moves_the_running_rows_right():
    cache = filled(1, 2, 0)
    shift = cache.join(filled(2, 3, 50))
    assert shift == 1
    assert column_values(cache) == [[0, 0, 1], [50, 51, 52], [150, 151, 152]]
    assert cache.layers[0].values[0, 0, :, 0].tolist() == [0, -0.0, -1]


def test_removing_a_row_moves_the_last_one_into_its_place():
    cache = filled(3, 2, 0)
    cache.remove(0)
    assert column_values(cache) == [[200, 201], [100, 101]]
    cache.remove(1)
    assert column_values(cache) == [[200, 201]]


def test_dropping_columns_keeps_the_rest_in_order():
    cache = filled(2, 5, 0)
    cache.drop_columns(3)
    assert column_values(cache) == [[3, 4], [103, 104]]
    assert cache.length == 2


def test_an_emptied_cache_starts_over_at_the_newcomers_length():
    cache = filled(1, 6, 0)
    cache.remove(0)
    cache.join(filled(1, 2, 50))
    assert column_values(cache) == [[50, 51]]


def test_storage_grows_past_its_first_size_keeping_every_value():
    cache = filled(1, 3, 0)
    for i in range(40):
        step = torch.full((1, 2, 1, 3), float(10 + i))
        cache.update(step, -step, 0)
    assert column_values(cache)[0] == [0, 1, 2, *[float(10 + i) for i in range(40)]]
