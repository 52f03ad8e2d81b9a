"""What the benchmarks read about the processes they start: CPU time per process and thread, the broker's
version and JVM options, other work on the machine.

The broker and the child processes themselves are the shared harness's (`tests/harness.py`: `LocalBroker`,
`ChildProcess`, `service_env`, `stop_all`), the same ones the integration tests and the fault suite start;
they are named here too for the benchmarks' imports.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.harness import KAFKA_SH, REPO, ChildProcess, LocalBroker, service_env, stop_all

__all__ = ["REPO", "LocalBroker", "ChildProcess", "OtherWork", "busy_cpu_seconds", "service_env", "cpu_seconds",
           "kafka_version", "broker_jvm_opts", "thread_cpu_seconds", "stop_all", "pin", "pin_beside_broker",
           "split_cores", "core_meter", "MACHINE"]

def kafka_version() -> str:
    """The broker version pinned in infra/kafka/pom.xml."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", (REPO / "infra" / "kafka" / "pom.xml").read_text())
    return found.group(1) if found else "?"


def broker_jvm_opts() -> str:
    """The JVM options kafka.sh starts the broker with: AIAAS_KAFKA_JVM_OPTS, or kafka.sh's default."""
    found = re.search(r'AIAAS_KAFKA_JVM_OPTS:-([^}"]+)\}', KAFKA_SH.read_text())
    return os.environ.get("AIAAS_KAFKA_JVM_OPTS") or (found.group(1) if found else "?")


def split_cores() -> tuple[set[int], set[int]]:
    """This machine's cores split for `--pin`: (the last one, for the service under test; all the others, for the
    broker, the load generator and its results reader)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    return {cores[-1]}, set(cores[:-1])


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process `pid` onto `cores` (threads it starts later inherit it from the thread that starts
    them), until a pass finds no thread it had not pinned. `taskset -a`, without needing util-linux."""
    pinned: set[str] = set()
    while True:
        try:
            threads = {task.name for task in Path(f"/proc/{pid}/task").iterdir()} - pinned
        except FileNotFoundError:  # the process ended
            return
        if not threads:
            return
        for thread in threads:
            try:
                os.sched_setaffinity(int(thread), cores)
            except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
                pass
        pinned |= threads


def pin_beside_broker(broker: LocalBroker, cores: set[int], pids: list[int]) -> None:
    """`--pin`: the broker and the processes `pids` (the benchmark's own, its readers) on `cores`, those the service
    under test does not have."""
    if broker.pid is None:
        raise SystemExit("--pin: the broker's process id is unknown, so it cannot be pinned")
    for pid in [*pids, broker.pid]:
        pin(pid, cores)


def thread_cpu_seconds(pid: int) -> dict[tuple[int, str], float]:
    """User + system CPU each thread of a process has used so far, by (thread id, thread name)."""
    used = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        used[(int(task.name), name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MACHINE = "machine"
"""The key of a `core_meter` record for the whole machine's busy cores."""


def core_meter(pids: Mapping[str, int | None]) -> Callable[[], dict[str, float]]:
    """Starts measuring what ran on the cores: returns a function that gives, for the time since this call, the cores
    each named process used (its CPU seconds per second; a process that is gone or None is left out) and, under
    `MACHINE`, the cores the whole machine was busy (`busy_cpu_seconds`)."""

    def used(pid: int) -> float | None:
        try:
            return cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            return None

    named = {name: pid for name, pid in pids.items() if pid is not None}
    before = {name: used(pid) for name, pid in named.items()}
    busy, started = busy_cpu_seconds(), time.monotonic()

    def since() -> dict[str, float]:
        elapsed = max(time.monotonic() - started, 1e-9)
        cores = {}
        for name, pid in named.items():
            now, was = used(pid), before[name]
            if now is not None and was is not None:
                cores[name] = (now - was) / elapsed
        return cores | {MACHINE: (busy_cpu_seconds() - busy) / elapsed}

    return since


def busy_cpu_seconds() -> float:
    """CPU time all cores of the machine have spent working for this VM so far: user, nice, system, irq and softirq
    (not idle or I/O wait, not steal: the hypervisor's time for other guests; guest time is within user and nice)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in
                                                        Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class OtherWork(threading.Thread):
    """Samples, every `interval` s, the CPU used by processes that are not this run's.

    "This run's" = this process, its descendants (services, consumers) and the broker (`extra_pids`).
    The figure is in cores (1.0 = one core busy all the time), from utime+stime in /proc/<pid>/stat.
    """

    def __init__(self, extra_pids: Callable[[], set[int]] = set, interval: float = 2.0) -> None:
        super().__init__(name="other-work", daemon=True)
        self._extra, self._interval = extra_pids, interval
        self._stop_event = threading.Event()
        self.samples: list[float] = []
        self.stolen: float | None = None

    @staticmethod
    def _snapshot() -> dict[int, tuple[int, int]]:
        """pid → (ppid, CPU ticks)."""
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return found

    def _ours(self, snapshot: dict[int, tuple[int, int]]) -> set[int]:
        ours = {os.getpid(), *self._extra()}
        changed = True
        while changed:  # descendants of ours
            grown = {pid for pid, (ppid, _) in snapshot.items() if ppid in ours} - ours
            ours |= grown
            changed = bool(grown)
        return ours

    @staticmethod
    def _steal_ticks() -> int:
        """CPU ticks the hypervisor gave to other guests (the `steal` column of /proc/stat), all cores."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            return int(fields[8]) if len(fields) > 8 else 0
        except (OSError, ValueError):
            return 0

    def run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        before, at = self._snapshot(), time.monotonic()
        self._steal_start, self._steal_since = self._steal_ticks(), at
        while not self._stop_event.wait(self._interval):
            now, now_at = self._snapshot(), time.monotonic()
            ours = self._ours(now)
            ticks = sum(cpu - before[pid][1] for pid, (_, cpu) in now.items() if pid in before and pid not in ours)
            self.samples.append(max(ticks, 0) / hz / (now_at - at))
            before, at = now, now_at

    def stop(self) -> tuple[float, float] | None:
        """Stop sampling; (mean, max) cores used by other work, None if nothing was sampled.

        `stolen` is then the mean number of cores the hypervisor took for other guests (a VM's invisible load).
        """
        self._stop_event.set()
        self.join(timeout=5)
        elapsed = time.monotonic() - getattr(self, "_steal_since", time.monotonic())
        if elapsed > 0 and hasattr(self, "_steal_start"):
            self.stolen = (self._steal_ticks() - self._steal_start) / os.sysconf("SC_CLK_TCK") / elapsed
        return (sum(self.samples) / len(self.samples), max(self.samples)) if self.samples else None
