"""SeenFile: the durable set of processed job ids a results reader resumes with."""

from __future__ import annotations

import pytest

from aiaas.client import SeenFile


def test_add_is_durable_and_idempotent(tmp_path):
    path = tmp_path / "seen" / "ids"
    with SeenFile(path) as seen:
        seen.add("a")
        seen.add("b")
        seen.add("a")
        assert "a" in seen and "c" not in seen and len(seen) == 2
        assert path.read_text() == "a\nb\n"  # flushed on add, before close
    assert set(SeenFile(path)) == {"a", "b"}


def test_reopened_file_keeps_appending(tmp_path):
    path = tmp_path / "ids"
    with SeenFile(path) as seen:
        seen.add("a")
    with SeenFile(path) as seen:
        seen.add("b")
        seen.add("a")
    assert path.read_text() == "a\nb\n"


def test_incomplete_last_line_is_ignored_and_cut_off(tmp_path):
    path = tmp_path / "ids"
    path.write_bytes(b"a\nb\nhalf-writ")  # a crash in the middle of an add
    with SeenFile(path) as seen:
        assert set(seen) == {"a", "b"}
        seen.add("c")
    assert path.read_text() == "a\nb\nc\n"


def test_a_file_holding_only_a_partial_line_is_empty(tmp_path):
    path = tmp_path / "ids"
    path.write_bytes(b"partial")
    with SeenFile(path) as seen:
        assert len(seen) == 0
        seen.add("x")
    assert path.read_text() == "x\n"


def test_discard_rewrites_the_file(tmp_path):
    path = tmp_path / "ids"
    with SeenFile(path) as seen:
        seen |= {"a", "b", "c"}
        seen.discard("b")
        seen.discard("missing")
        seen.add("d")
    assert set(SeenFile(path)) == {"a", "c", "d"}


@pytest.mark.parametrize("bad", ["", "two\nlines", "cr\r"])
def test_ids_must_be_one_line(tmp_path, bad):
    with SeenFile(tmp_path / "ids") as seen, pytest.raises(ValueError):
        seen.add(bad)
