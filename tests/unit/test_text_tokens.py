"""Tokenising and length grouping for the text service (no model needed)."""

from aiaas.text.encoder import package_dir
from aiaas.text.tokens import TextTokenizer, length_groups, pad, padding_waste


def tokenizer(max_len=16) -> TextTokenizer:
    return TextTokenizer((package_dir() / "tokenizer.json").read_text(), max_len)


def test_long_texts_are_cut_to_the_limit_keep_their_end_marker_and_say_so():
    short, long = tokenizer(16).encode(["a short one", "word " * 50])
    assert not short.truncated and short.ids[0] == 101 and short.ids[-1] == 102  # [CLS] … [SEP]
    assert long.truncated and len(long.ids) == 16 and long.ids[-1] == 102


def test_length_groups_cut_padding_and_respect_the_token_budget():
    lengths = [5, 60, 6, 58, 7, 61, 5, 59]
    groups = length_groups(lengths, max_batch_tokens=200)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= 200 or len(g) == 1 for g in groups)
    assert padding_waste(lengths, groups) < 0.1 < padding_waste(lengths, [list(range(len(lengths)))])


def test_a_text_longer_than_the_budget_still_gets_its_own_group():
    assert length_groups([500, 3], max_batch_tokens=100) == [[1], [0]]


def test_pad_right_pads_ids_and_mask():
    ids, mask = pad([[1, 2, 3], [4]])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_very_different_lengths_go_to_separate_calls_even_within_the_budget():
    lengths = [4] * 40 + [120] * 4
    groups = length_groups(lengths, max_batch_tokens=100_000, call_overhead_tokens=256)
    assert len(groups) == 2 and padding_waste(lengths, groups) == 0.0
    assert len(length_groups([10, 11, 12, 13], max_batch_tokens=100_000)) == 1  # close lengths share a call
