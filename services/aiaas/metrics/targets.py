"""Target files: how Prometheus (file-based service discovery) and `aiaas top` find the aiaas processes of a host.

Each process with a metrics endpoint writes `<AIAAS_HOME>/metrics/targets/<role>-<model>-<host>-<pid>.json` in
Prometheus' `file_sd_configs` format (the host name too: processes of several containers sharing one AIAAS_HOME
volume are each pid 1), one target with labels, and removes it when it stops. A file whose process is gone (killed
with -9) is skipped by `list_targets` and removed; Prometheus marks its target down.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Target", "TargetFile", "targets_dir", "list_targets"]


def targets_dir(home: Path) -> Path:
    """The folder of target files under an AIAAS_HOME."""
    return home / "metrics" / "targets"


@dataclass(frozen=True)
class Target:
    """One process's metrics endpoint, as its target file says."""

    address: str  # host:port
    model: str
    role: str  # "service" or "trainer"
    instance: str
    pid: int

    @property
    def url(self) -> str:
        """Base URL of its endpoint (append /metrics, /healthz, /readyz)."""
        return f"http://{self.address}"


class TargetFile:
    """This process's target file: written by `write`, removed by `remove` (also safe to call twice)."""

    def __init__(self, home: Path, *, role: str, model: str, instance: str, host: str, port: int) -> None:
        self.path = targets_dir(home) / f"{role}-{model}-{socket.gethostname()}-{os.getpid()}.json"
        # A wildcard bind is reached on the loopback address from this host.
        address = f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"
        self._entry = [{"targets": [address], "labels": {
            "aiaas_model": model, "aiaas_role": role, "aiaas_instance": instance, "aiaas_pid": str(os.getpid())}}]

    def write(self) -> None:
        """Write it atomically (Prometheus may read the folder at any moment)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self._entry))
        partial.replace(self.path)

    def remove(self) -> None:
        """Remove it (the process stops)."""
        self.path.unlink(missing_ok=True)


def list_targets(home: Path) -> list[Target]:
    """The live processes' targets under `home`, by role, model and instance; stale files are removed."""
    found: list[Target] = []
    for path in sorted(targets_dir(home).glob("*.json")):
        try:
            entry = json.loads(path.read_text())[0]
            labels = entry["labels"]
            target = Target(entry["targets"][0], labels["aiaas_model"], labels["aiaas_role"],
                            labels["aiaas_instance"], int(labels["aiaas_pid"]))
        except (OSError, ValueError, LookupError, TypeError):
            continue  # being written, or not ours
        if not _alive(target.pid):
            path.unlink(missing_ok=True)
            continue
        found.append(target)
    return sorted(found, key=lambda t: (t.role, t.model, t.instance, t.pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
