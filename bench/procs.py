"""The local Kafka broker and the child processes (services, consumers) a benchmark starts.

Everything started here is stopped by `stop_all()` (called from a `finally` in run.py, and at
exit), so a failed or interrupted run leaves no broker and no service behind.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["REPO", "LocalBroker", "ChildProcess", "OtherWork", "busy_cpu_seconds", "child_env", "cpu_seconds",
           "kafka_version", "broker_jvm_opts", "thread_cpu_seconds", "stop_all"]

REPO = Path(__file__).resolve().parents[1]
_KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
_started: list[ChildProcess | LocalBroker] = []


class LocalBroker:
    """`infra/kafka/kafka.sh start|stop` on its own port and state dir (never the test suite's 29092)."""

    def __init__(self, port: int, state_dir: Path) -> None:
        self.port, self.state_dir = port, state_dir
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state_dir)}
        self.running = False

    def start(self) -> LocalBroker:
        """Start it and wait until it answers (kafka.sh does the waiting)."""
        _started.append(self)
        done = subprocess.run([str(_KAFKA_SH), "start"], env=self._env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed (port {self.port}):\n{done.stdout}{done.stderr}")
        self.running = True
        return self

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id (from kafka.sh's pid file)."""
        try:
            return int((self.state_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop it cleanly (kafka.sh waits for the controlled shutdown)."""
        if self.running:
            subprocess.run([str(_KAFKA_SH), "stop"], env=self._env, capture_output=True, text=True)
            self.running = False


def child_env(bootstrap: str, prefix: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this run's broker, topic prefix and AIAAS_HOME; no inherited OTEL_* choice.

    Other AIAAS_* variables (e.g. AIAAS_VISION_MAX_BATCH) pass through, so a setting can be benchmarked;
    the report lists the ones that were set.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | {
        "AIAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AIAAS_KAFKA_TOPIC_PREFIX": prefix,
        "AIAAS_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
    } | (extra or {})


class ChildProcess:
    """A Python child (`-m aiaas.<model>` or a bench script) whose log is kept; ready once `marker` is logged."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, marker: str = " ready: ") -> None:
        self.args, self.env, self.log_path, self.marker = args, env, log_path, marker
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120) -> ChildProcess:
        """Start it and wait for the ready marker in its log."""
        _started.append(self)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, *self.args], env=self.env, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.marker not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(self.args)} did not become ready; its log:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def log_text(self) -> str:
        """What it has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (drain and leave the group), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_all() -> None:
    """Stop every child and the broker this process started, newest first."""
    while _started:
        thing = _started.pop()
        try:
            thing.stop()
        except Exception as exc:  # keep stopping the rest
            print(f"bench: stopping {thing!r} failed: {exc}", file=sys.stderr)


atexit.register(stop_all)


def kafka_version() -> str:
    """The broker version pinned in infra/kafka/pom.xml."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", (REPO / "infra" / "kafka" / "pom.xml").read_text())
    return found.group(1) if found else "?"


def broker_jvm_opts() -> str:
    """The JVM options kafka.sh starts the broker with: AIAAS_KAFKA_JVM_OPTS, or kafka.sh's default."""
    found = re.search(r'AIAAS_KAFKA_JVM_OPTS:-([^}"]+)\}', _KAFKA_SH.read_text())
    return os.environ.get("AIAAS_KAFKA_JVM_OPTS") or (found.group(1) if found else "?")


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
