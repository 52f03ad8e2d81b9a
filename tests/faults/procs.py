"""The processes a fault scenario starts and breaks: the broker, vision service instances, the results reader.

Everything started here is registered, and `cleanup()` (also run at exit) stops what is still
running, so a failed or interrupted run leaves no broker, service or reader behind.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["REPO", "Broker", "Child", "cleanup", "base_env"]

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
_live: list[Broker | Child] = []


def base_env(bootstrap: str, prefix: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this run's broker, topic prefix and AIAAS_HOME; tracing export off.

    Other AIAAS_* variables pass through (so e.g. AIAAS_VISION_MAX_BATCH can be varied); inherited
    OTEL_* choices do not. Spans are still made; exporting them is switched off because the suite
    measures delivery, and on a small machine the local span store costs a third of the throughput.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | {
        "AIAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AIAAS_KAFKA_TOPIC_PREFIX": prefix,
        "AIAAS_HOME": str(home),
        "OTEL_TRACES_EXPORTER": "none",
        "PYTHONUNBUFFERED": "1",
    } | (extra or {})


class Broker:
    """`infra/kafka/kafka.sh start|stop` on its own port and state dir; a restart keeps the data."""

    def __init__(self, port: int, state_dir: Path) -> None:
        self.port, self.state_dir = port, state_dir
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state_dir)}
        self.running = False

    async def start(self, attempts: int = 5) -> None:
        """Start it (formatting the state dir the first time) and wait until it answers.

        Ports in the ephemeral range can be taken for a moment by some client's outgoing connection:
        a start that fails to bind is tried again.
        """
        if self not in _live:
            _live.append(self)
        for attempt in range(attempts):
            proc = await asyncio.create_subprocess_exec(str(KAFKA_SH), "start", env=self._env,
                                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = (await proc.communicate())[0].decode(errors="replace")
            if proc.returncode == 0:
                self.running = True
                return
            if "Address already in use" not in out or attempt == attempts - 1:
                raise RuntimeError(f"kafka.sh start failed (port {self.port}):\n{out[-5000:]}")
            await asyncio.sleep(1)

    async def stop(self) -> None:
        """Controlled shutdown (kafka.sh waits for it)."""
        proc = await asyncio.create_subprocess_exec(str(KAFKA_SH), "stop", env=self._env,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()
        self.running = False

    def stop_now(self) -> None:
        """The same, from synchronous code (cleanup)."""
        if self.running:
            subprocess.run([str(KAFKA_SH), "stop"], env=self._env, capture_output=True)
            self.running = False


class Child:
    """A Python child process whose log is kept; ready once its log shows one more `marker` line."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path,
                 marker: str = " ready: ") -> None:
        self.name, self.args, self.env, self.log_path, self.marker = name, args, env, log_path, marker
        self.proc: subprocess.Popen | None = None
        self.exits: list[tuple[str, int]] = []
        """(how it was stopped: `kill -9`, `SIGTERM` or `by itself`, exit status) for every run that ended."""
        self.starts = 0
        self.stopping = False
        """True while `terminate` waits for the exit it asked for (that exit is not `by itself`)."""
        self.frozen = False

    @property
    def alive(self) -> bool:
        """Running now."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything its runs have logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 120) -> None:
        """Start it and wait for its ready line (raises with the log tail when it does not come)."""
        self._note_unexpected_exit()
        if self not in _live:
            _live.append(self)
        marker = self.log_text().count(self.marker)
        with self.log_path.open("ab") as log:
            log.write(f"----- {time.strftime('%H:%M:%S')} start {self.name} -----\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, *self.args], env=self.env, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while self.log_text().count(self.marker) == marker:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop_now()
                raise RuntimeError(f"{self.name} did not become ready; its log:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive:
            self.proc.kill()
            self.exits.append(("kill -9", self.proc.wait()))

    async def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for it to exit (SIGKILL after `timeout`); its exit status."""
        if not self.alive:
            return None
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

    def freeze(self) -> None:
        """SIGSTOP: the process stops where it is (no heartbeats, no fetches) until `thaw`."""
        if self.alive:
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on from where it stopped."""
        if self.alive and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def _note_unexpected_exit(self) -> None:
        if self.stopping:
            return
        if self.proc is not None and self.proc.poll() is not None and not self._reaped():
            self.exits.append(("by itself", self.proc.returncode))

    def _reaped(self) -> bool:
        return len(self.exits) >= self.starts

    def unexpected_exits(self) -> list[int]:
        """Exit statuses of the runs that ended without being asked to."""
        self._note_unexpected_exit()
        return [rc for how, rc in self.exits if how == "by itself"]

    def stop_now(self) -> None:
        """SIGTERM, then SIGKILL after 30 s (synchronous: cleanup)."""
        if not self.alive:
            return
        self.thaw()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cleanup() -> None:
    """Stop every child and broker this process started that still runs, newest first."""
    while _live:
        thing = _live.pop()
        try:
            thing.stop_now()
        except Exception as exc:  # keep stopping the rest
            print(f"faults: stopping {thing!r} failed: {exc}", file=sys.stderr)


atexit.register(cleanup)
