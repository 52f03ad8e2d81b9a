"""The attempts counter survives a crash mid-write, and a file it cannot read never takes the trainer down."""

from __future__ import annotations

import os

import pytest

from aiaas.training.attempts import AttemptCounter


def count_file(counter: AttemptCounter, job_id: str):
    counter.start(job_id)
    (path,) = [p for p in counter.root.iterdir() if not p.name.startswith(".")]
    counter.forget(job_id)
    return path


@pytest.mark.parametrize("content", [b"", b"1", b"garbage", b"\xff\xfe", b"-4", b"2.5", b"9" * 100, b"\x00\x00\x00"])
def test_a_corrupt_or_truncated_count_reads_as_no_start(tmp_path, content):
    counter = AttemptCounter(tmp_path)
    path = count_file(counter, "job")
    path.write_bytes(content)
    expected = 2 if content == b"1" else 1  # a readable count goes on; anything else starts again from 0
    assert counter.start("job") == expected
    assert path.read_bytes() == str(expected).encode()


def test_a_crash_before_the_rename_leaves_the_previous_count(tmp_path, monkeypatch):
    counter = AttemptCounter(tmp_path)
    assert counter.start("job") == 1

    def crash(*args):
        raise OSError("the trainer was killed here")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        counter.start("job")
    monkeypatch.undo()
    assert [p.name.startswith(".") for p in tmp_path.iterdir()] == [False]  # no temporary file left behind
    assert counter.start("job") == 2  # the old count was intact: 1, then this start


def test_a_crash_while_the_new_count_is_written_leaves_the_previous_count(tmp_path, monkeypatch):
    counter = AttemptCounter(tmp_path)
    counter.start("job"), counter.start("job")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        counter.start("job")
    monkeypatch.undo()
    assert counter.start("job") == 3


def test_withdraw_takes_back_one_start(tmp_path):
    counter = AttemptCounter(tmp_path)
    counter.start("job"), counter.start("job")
    counter.withdraw("job")
    assert counter.start("job") == 2
    counter.withdraw("job"), counter.withdraw("job")
    assert list(tmp_path.iterdir()) == []  # back to no start at all: no file
    counter.withdraw("never-started")  # no error
    assert counter.start("job") == 1

