"""SeenFile: the durable set of processed job ids a results reader resumes with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aiaas.client.client import SeenFile
from aiaas.client.seen_file import COMPACT_MIN_LINES
from aiaas.errors import SeenFileLocked


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


def test_discard_appends_a_line_and_survives_reopening(tmp_path):
    path = tmp_path / "ids"
    with SeenFile(path) as seen:
        for job_id in "abc":
            seen.add(job_id)
        seen.discard("b")
        seen.discard("missing")
        seen.add("d")
    assert path.read_text() == "a\nb\nc\n-\tb\nd\n"
    with SeenFile(path) as seen:
        assert set(seen) == {"a", "c", "d"}
        seen.add("b")  # back in after a discard
    assert set(SeenFile(path)) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("bad", ["", "two\nlines", "cr\r", "tab\tinside", "nul\x00", "-\tlooks-discarded"])
def test_ids_must_be_one_line(tmp_path, bad):
    with SeenFile(tmp_path / "ids") as seen, pytest.raises(ValueError):
        seen.add(bad)


# -- fsync ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [False, True])
def test_fsync_syncs_every_change_and_only_then(tmp_path, monkeypatch, fsync):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with SeenFile(tmp_path / "ids", fsync=fsync) as seen:
        for i in range(10):
            seen.add(f"id-{i}")
        seen.add("id-0")  # already in: nothing written, nothing synced
        seen.discard("id-1")
    assert len(synced) == (11 if fsync else 0)


# -- one SeenFile per file ---------------------------------------------------------------------------------


def test_a_second_seen_file_on_the_same_path_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "ids"
    first = SeenFile(path)
    first.add("a")
    with pytest.raises(SeenFileLocked, match=f"{path} is in use by another SeenFile \\(process {os.getpid()}\\)"):
        SeenFile(path)
    first.add("b")  # the refused opener changed nothing
    first.close()
    with SeenFile(path) as again:
        assert set(again) == {"a", "b"}


def test_another_process_gets_a_clear_error(tmp_path):
    path = tmp_path / "ids"
    opener = ("import sys\nfrom aiaas.client import SeenFile, SeenFileLocked\n"
              "try:\n    SeenFile(sys.argv[1])\nexcept SeenFileLocked as exc:\n    print(exc)\n    sys.exit(3)\n")
    with SeenFile(path):
        refused = subprocess.run([sys.executable, "-c", opener, str(path)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3, refused.stderr
    assert f"in use by another SeenFile (process {os.getpid()})" in refused.stdout
    accepted = subprocess.run([sys.executable, "-c", opener, str(path)], capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr  # the lock went with the first one


def test_the_lock_outlives_compaction(tmp_path):
    path = tmp_path / "ids"
    with SeenFile(path) as seen:
        seen.add("a")
        seen.compact()  # a new file under the same name: a lock on the old one would not hold
        with pytest.raises(SeenFileLocked):
            SeenFile(path)


# -- compaction --------------------------------------------------------------------------------------------


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_discards_are_compacted_away_once_they_outnumber_the_ids(tmp_path):
    path = tmp_path / "ids"
    keep = [f"keep-{i}" for i in range(10)]
    with SeenFile(path) as seen:
        seen |= set(keep)
        for i in range(COMPACT_MIN_LINES):  # a window of ids that moves: each added, later discarded
            seen.add(f"gone-{i}")
            seen.discard(f"gone-{i}")
        assert len(lines(path)) < COMPACT_MIN_LINES + len(keep)  # compacted on the way, not 2049 + 10 lines
        assert set(seen) == set(keep)
    with SeenFile(path) as reopened:
        assert set(reopened) == set(keep)
    assert not (tmp_path / "ids.compacting").exists()


def test_a_file_full_of_repeated_ids_is_compacted_when_opened(tmp_path):
    path = tmp_path / "ids"
    path.write_text("a\nb\n" * COMPACT_MIN_LINES + "-\tb\n")  # e.g. written by an older version, or appended to
    with SeenFile(path) as seen:
        assert set(seen) == {"a"}
    assert lines(path) == ["a"]


def test_few_dead_lines_are_left_alone(tmp_path):
    path = tmp_path / "ids"
    path.write_text("a\nb\n-\tb\nc\n")
    with SeenFile(path) as seen:
        assert set(seen) == {"a", "c"}
    assert lines(path) == ["a", "b", "-\tb", "c"]


def test_compact_keeps_the_ids_in_order_and_appending_goes_on(tmp_path):
    path = tmp_path / "ids"
    with SeenFile(path) as seen:
        seen |= {"x"}
        seen.add("y")
        seen.add("z")
        seen.discard("y")
        seen.compact()
        assert lines(path) == ["x", "z"]
        seen.add("w")
    assert lines(path) == ["x", "z", "w"]


def test_a_crash_during_compaction_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "ids"
    path.write_text("a\nb\n")
    (tmp_path / "ids.compacting").write_text("half")  # a compaction killed before its os.replace
    with SeenFile(path) as seen:
        assert set(seen) == {"a", "b"}
        seen.compact()
    assert lines(path) == ["a", "b"]
