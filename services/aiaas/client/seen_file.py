"""SeenFile: the durable set of processed job ids a results reader resumes with.

An append-only text file, one line per change: a job id that was added, or `-<TAB><job id>` for one
that was discarded. Job ids hold no control characters (the contract's rule), so neither a tab nor a
line break is ever part of one. The file is rewritten (compacted) when most of its lines no longer
count, and locked so that a second process cannot append to it at the same time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, MutableSet
from pathlib import Path
from typing import IO

from aiaas.errors import SeenFileLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the lock is then not taken
    fcntl = None  # type: ignore[assignment]

__all__ = ["SeenFile", "SeenFileLocked"]

_DISCARDED = "-\t"
"""The prefix of a line that takes a job id out of the set again."""
_VALID_ID = re.compile(r"[^\x00-\x1f\x7f]+")
"""What a SeenFile holds: one non-empty line without control characters (every valid job id is one)."""
COMPACT_MIN_LINES = 1024
"""The file is compacted only once it holds at least this many lines that no longer count."""


class SeenFile(MutableSet[str]):
    """A durable set of job ids: an append-only file, one id a line, flushed on every `add`.

    The reader-side half of exactly-once processing. Pass it to `results(..., group_id=..., seen=...)`:
    the reader skips every job id already in it and adds each final result's job id just before
    handing the result over, so after a crash and restart (same group, same file) no result is
    handed over twice, even the ones whose offsets the crashed reader had not committed yet::

        seen = SeenFile("processed.ids")
        async for result in client.results("vision", group_id="billing", seen=seen):
            handle(result)

    A crash after the `add` and before `handle` finished skips that one result at the restart
    (at most once, for the result in hand). For exactly-once processing make the mark and the
    effect one durable step: give `seen` your own MutableSet over the store that `handle` writes
    to (`__contains__` asks that store, `add` does nothing) and record the job id in the same
    transaction as the effect.

    Durability: every `add` and `discard` is flushed to the operating system before it returns, so a
    crash of this process loses nothing. `fsync=True` also survives a power cut or a kernel crash, at
    the price of one fsync per change, which costs far more than the write itself and bounds how many
    results a second the reader can hand over (`bench/seen_file.py` measures both on your disk; the
    numbers are in `bench/results/`). Without it, a power cut may lose the last few seconds of ids,
    and those results are handed over a second time.

    One SeenFile at a time per file: opening a file that another SeenFile (in any process on this
    host) holds raises `SeenFileLocked` (an flock on `<path>.lock`, released when the file is closed
    or its process ends). On load, an incomplete last line (a crash mid-write) is ignored and cut
    off. `discard` appends a line rather than rewriting the file; the file is compacted (rewritten
    with only the ids it holds, atomically: a temporary file, then `os.replace`) when the lines that
    no longer count, discarded or repeated ids, outnumber the ids and number at least
    `COMPACT_MIN_LINES`, or at any time with `compact()`.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path)
        try:
            self._ids, lines = self._load()
            self._dead = lines - len(self._ids)
            self._file = self.path.open("a", encoding="utf-8", newline="\n")
            self._compact_if_worth_it()
        except BaseException:
            self._lock.close()
            raise

    def _load(self) -> tuple[dict[str, None], int]:
        """The ids the file holds (in the order they were first added) and how many complete lines it has."""
        if not self.path.exists():
            return {}, 0
        data = self.path.read_bytes()
        complete, newline, _ = data.rpartition(b"\n")
        if len(complete) + len(newline) < len(data):  # an id whose write was cut short: drop it
            with self.path.open("r+b") as file:
                file.truncate(len(complete) + len(newline))
        ids: dict[str, None] = {}
        lines = complete.decode("utf-8", errors="replace").split("\n") if newline else []
        for line in lines:
            if line.startswith(_DISCARDED):
                ids.pop(line[len(_DISCARDED):], None)
            elif line:
                ids[line] = None
        return ids, len(lines)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, job_id: str) -> None:
        """Record `job_id` (written and flushed before this returns); a no-op when it is already in."""
        if job_id in self._ids:
            return
        if not isinstance(job_id, str) or not _VALID_ID.fullmatch(job_id):
            raise ValueError(f"a job id for SeenFile must be one non-empty line without control characters, "
                             f"not {job_id!r}")
        self._write(job_id + "\n")
        self._ids[job_id] = None

    def discard(self, job_id: str) -> None:
        """Forget `job_id` (one line appended; the file is compacted once such lines outnumber the ids)."""
        if job_id not in self._ids:
            return
        self._write(f"{_DISCARDED}{job_id}\n")
        del self._ids[job_id]
        self._dead += 2  # the id's own line and the line that discards it
        self._compact_if_worth_it()

    def compact(self) -> None:
        """Rewrite the file with only the ids it holds: a new file beside it, synced, then moved over it."""
        tmp = self.path.with_name(self.path.name + ".compacting")
        with tmp.open("w", encoding="utf-8", newline="\n") as out:
            out.write("".join(f"{job_id}\n" for job_id in self._ids))
            out.flush()
            os.fsync(out.fileno())  # rare, and a rename over unsynced data can leave an empty file after a crash
        self._file.close()
        os.replace(tmp, self.path)
        if self._fsync:
            _fsync_dir(self.path.parent)
        self._file = self.path.open("a", encoding="utf-8", newline="\n")
        self._dead = 0

    def close(self) -> None:
        """Close the file (every change is already flushed) and release the lock."""
        self._file.close()
        self._lock.close()

    def __enter__(self) -> SeenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def _compact_if_worth_it(self) -> None:
        if self._dead >= COMPACT_MIN_LINES and self._dead > len(self._ids):
            self.compact()


def _lock(path: Path) -> IO[str]:
    """Hold an exclusive flock on `<path>.lock` (created if need be), or raise SeenFileLocked naming its holder.

    The lock is on a file of its own because `compact` replaces the data file: a lock on the old one
    would not stop a process that opens the new one.
    """
    handle = path.with_name(path.name + ".lock").open("a+", encoding="utf-8")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SeenFileLocked(f"{path} is in use by another SeenFile (process {holder}): "
                             "one reader at a time per file") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")  # for the error message a second opener gets
    handle.flush()
    return handle


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
