"""What `SeenFile(fsync=True)` costs: time per `add` with and without an fsync per id.

Run: `.venv/bin/python bench/seen_file.py [--ids 5000] [--rounds 5] [--dir DIR] [--out FILE]`. The two
settings alternate over rounds in one run, each round on a fresh file in DIR (default: a temporary folder
next to the current directory, so on the disk a reader's seen file would be on; /tmp may be memory).
Prints a Markdown table of medians over the rounds; `--out FILE` writes it too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from aiaas.client.seen_file import SeenFile


def one_round(folder: Path, ids: int, fsync: bool) -> float:
    """Seconds to add `ids` new job ids to a fresh SeenFile."""
    path = folder / f"seen-{fsync}-{time.monotonic_ns()}.ids"
    with SeenFile(path, fsync=fsync) as seen:
        started = time.perf_counter()
        for i in range(ids):
            seen.add(f"{i:032x}")  # the length of a UUID4 hex job id
        elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def filesystem(folder: Path) -> str:
    """The file system type of `folder`'s mount, from /proc/mounts (Linux), else 'unknown'."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(folder.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".seen-bench-") as tmp:
        for _ in range(args.rounds):
            for fsync in (False, True):
                times[fsync].append(one_round(Path(tmp), args.ids, fsync))
        fs = filesystem(Path(tmp))
    rows = {fsync: statistics.median(samples) for fsync, samples in times.items()}
    lines = [f"SeenFile.add: {args.ids} new ids per round, {args.rounds} rounds alternating, medians "
             f"({date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, file system {fs}, Python "
             f"{platform.python_version()})", "",
             "| fsync | seconds for all ids | µs per id | ids/s | vs no fsync |",
             "|---|---:|---:|---:|---:|"]
    for fsync, seconds in rows.items():
        lines.append(f"| {fsync} | {seconds:.3f} | {seconds / args.ids * 1e6:.1f} | {args.ids / seconds:,.0f} "
                     f"| {seconds / rows[False]:.1f}x |")
    lines.append("")
    lines.append("Rounds (seconds): " + "; ".join(
        f"fsync={fsync}: " + ", ".join(f"{s:.3f}" for s in samples) for fsync, samples in times.items()))
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
