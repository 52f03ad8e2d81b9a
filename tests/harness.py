"""The one process harness: a local Kafka broker and the Python child processes (services, trainers, readers, load
generators) that the integration tests, the fault suite and the benchmarks start.

Everything started here is registered, and `stop_all()` (also run at exit) stops what still runs, newest first, so
a failed or interrupted run leaves no broker, service or reader behind. Each method that waits comes in two forms:
plain (tests, benchmarks) and `_async` (the fault suite, whose load and monitor keep running meanwhile).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["REPO", "KAFKA_SH", "LocalBroker", "ChildProcess", "service_env", "stop_all", "wait_for"]

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
_live: list[LocalBroker | ChildProcess] = []


def service_env(bootstrap: str, prefix: str, home: Path, extra: dict[str, str] | None = None, *,
                export_traces: bool = True) -> dict[str, str]:
    """A child's environment: this run's broker, topic prefix and AIAAS_HOME; no inherited OTEL_* choice.

    Other AIAAS_* variables pass through (so a setting such as AIAAS_VISION_MAX_BATCH can be varied and measured).
    `export_traces=False`: spans are still made, not exported (`OTEL_TRACES_EXPORTER=none`), for runs that measure
    delivery rather than tracing.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"AIAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AIAAS_KAFKA_TOPIC_PREFIX": prefix, "AIAAS_HOME": str(home),
            "PYTHONUNBUFFERED": "1"}
    if not export_traces:
        env["OTEL_TRACES_EXPORTER"] = "none"
    return env | (extra or {})


class LocalBroker:
    """`infra/kafka/kafka.sh start|stop` on its own port and state dir; a restart keeps the data."""

    def __init__(self, port: int, state_dir: Path) -> None:
        self.port, self.state_dir = port, state_dir
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state_dir)}
        self.running = False

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id (from kafka.sh's pid file)."""
        try:
            return int((self.state_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kafka.log"

    def start(self, attempts: int = 5) -> LocalBroker:
        """Start it (formatting the state dir the first time) and wait until it answers (kafka.sh waits).

        Ports in the ephemeral range can be taken for a moment by some client's outgoing connection: a start that
        fails to bind is tried again.
        """
        self._register()
        for attempt in range(attempts):
            done = subprocess.run([str(KAFKA_SH), "start"], env=self._env, capture_output=True, text=True)
            if self._started(done.returncode, done.stdout + done.stderr, attempt, attempts):
                return self
            time.sleep(1)
        return self

    async def start_async(self, attempts: int = 5) -> LocalBroker:
        """`start`, without blocking the event loop."""
        self._register()
        for attempt in range(attempts):
            proc = await asyncio.create_subprocess_exec(str(KAFKA_SH), "start", env=self._env,
                                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = (await proc.communicate())[0].decode(errors="replace")
            if self._started(proc.returncode, out, attempt, attempts):
                return self
            await asyncio.sleep(1)
        return self

    def stop(self) -> None:
        """Controlled shutdown (kafka.sh waits for it)."""
        if self.running:
            subprocess.run([str(KAFKA_SH), "stop"], env=self._env, capture_output=True)
            self.running = False

    async def stop_async(self) -> None:
        """`stop`, without blocking the event loop."""
        proc = await asyncio.create_subprocess_exec(str(KAFKA_SH), "stop", env=self._env,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()
        self.running = False

    def _register(self) -> None:
        if self not in _live:
            _live.append(self)

    def _started(self, returncode: int | None, output: str, attempt: int, attempts: int) -> bool:
        if returncode == 0:
            self.running = True
            return True
        if "Address already in use" not in output or attempt == attempts - 1:
            raise RuntimeError(f"kafka.sh start failed (port {self.port}):\n{output[-5000:]}")
        return False


class ChildProcess:
    """A Python child (`python <args>`, run in the repository) whose log is kept; ready once its log shows one more
    `marker` line. It can be started again (a restart appends to the same log) and broken on purpose (kill -9,
    SIGSTOP); `exits` says how every run ended."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, *, name: str | None = None,
                 marker: str = " ready: ") -> None:
        self.args, self.env, self.log_path, self.marker = args, env, log_path, marker
        self.name = name or " ".join(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[tuple[str, int]] = []
        """(how it was stopped: `kill -9`, `SIGTERM` or `by itself`, exit status) for every run that ended."""
        self.starts = 0
        self.stopping = False
        """True while a stop waits for the exit it asked for (that exit is not `by itself`)."""
        self.frozen = False

    @property
    def alive(self) -> bool:
        """Running now."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        """Everything its runs have logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 120) -> ChildProcess:
        """Start it and wait for its ready line (raises with the log tail when it does not come)."""
        ready, deadline = self._launch(), time.monotonic() + timeout
        while not ready():
            self._check_starting(deadline, ready)
            time.sleep(0.1)
        return self

    async def start_async(self, timeout: float = 120) -> ChildProcess:
        """`start`, without blocking the event loop."""
        ready, deadline = self._launch(), time.monotonic() + timeout
        while not ready():
            self._check_starting(deadline, ready)
            await asyncio.sleep(0.1)
        return self

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit; its status."""
        assert self.proc is not None
        self.stopping = True
        try:
            self.thaw()
            self.proc.send_signal(sig)
            status = self.proc.wait(timeout)
        finally:
            self.stopping = False
        self.exits.append((signal.Signals(sig).name, status))
        return status

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (it drains and leaves its group), then SIGKILL if it does not exit in time."""
        if not self.alive:
            return
        try:
            self.signal(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    async def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for the exit (SIGKILL after `timeout`) without blocking the event loop; its status."""
        if not self.alive:
            return None
        assert self.proc is not None
        self.stopping = True
        try:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.exits.append((f"SIGTERM, then kill -9 after {timeout:.0f} s", self.proc.wait()))
            else:
                self.exits.append(("SIGTERM", self.proc.returncode))
        finally:
            self.stopping = False
        return self.exits[-1][1]

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.exits.append(("kill -9", self.proc.wait()))

    def freeze(self) -> None:
        """SIGSTOP: the process stops where it is (no heartbeats, no fetches) until `thaw`."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on from where it stopped."""
        if self.alive and self.frozen:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def unexpected_exits(self) -> list[int]:
        """Exit statuses of the runs that ended without being asked to."""
        self._note_unexpected_exit()
        return [rc for how, rc in self.exits if how == "by itself"]

    def _launch(self) -> Callable[[], bool]:
        """Start a run; returns whether it has logged its ready line yet."""
        self._note_unexpected_exit()
        if self not in _live:
            _live.append(self)
        seen = self.log_text().count(self.marker)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"----- {time.strftime('%H:%M:%S')} start {self.name} -----\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, *self.args], env=self.env, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.starts += 1
        return lambda: self.log_text().count(self.marker) > seen

    def _check_starting(self, deadline: float, ready: Callable[[], bool]) -> None:
        assert self.proc is not None
        if (self.proc.poll() is not None or time.monotonic() > deadline) and not ready():  # its last line may be it
            self.stop(timeout=30)
            raise RuntimeError(f"{self.name} did not become ready; its log:\n{self.log_text()[-3000:]}")

    def _note_unexpected_exit(self) -> None:
        if self.stopping or self.proc is None or self.proc.poll() is None:
            return
        if len(self.exits) < self.starts:
            self.exits.append(("by itself", self.proc.returncode))


def stop_all() -> None:
    """Stop every child and broker this process started that still runs, newest first."""
    while _live:
        thing = _live.pop()
        try:
            thing.stop()
        except Exception as exc:  # keep stopping the rest
            print(f"harness: stopping {thing!r} failed: {exc}", file=sys.stderr)


atexit.register(stop_all)


def wait_for(check, timeout: float, interval: float = 0.5, what: str = "the condition"):
    """Call `check()` until it returns something true (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s (last: {value!r})")
        time.sleep(interval)
