"""The fault suite: every scenario in every delivery mode against a real broker; one table row each.

    python -m tests.faults.run [--jobs 10000] [--scenarios 1,2,3,4,5,6]
                               [--modes at-least-once,exactly-once] [--out tests/faults/results]

Starts its own broker (infra/kafka/kafka.sh, port --port (29492), state in a temporary folder), and for the
scenarios that need one (12) a local 3-node cluster instead (`kafka.sh cluster`, nodes on --cluster-port
(default --port + 10), on it + 5 and on it + 10), each when a scenario first needs it, builds a
vision model into a temporary AIAAS_HOME (or uses --home), runs the scenarios one after the other,
prints each row as it is done, and writes the table with its definitions and details to
`<out>/<date>-<machine>.md`. Exit status 1 when a requirement is not met. Everything it started
is stopped at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.harness import LocalBroker, stop_all

from .cluster import LocalCluster
from .report import HEADER, RULE, machine, machine_slug, markdown, table, verdict
from .scenarios import MODES, SCENARIOS, Options, Row, Scenario, run_one


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="good jobs per scenario run (N)")
    parser.add_argument("--scenarios", default=",".join(map(str, SCENARIOS)), help="comma-separated numbers")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated delivery modes")
    parser.add_argument("--out", type=Path, default=Path("tests/faults/results"),
                        help="folder for the report ('-' for none)")
    parser.add_argument("--rate", type=float, default=500.0, help="jobs published per second")
    parser.add_argument("--seed", type=int, default=0, help="where the random faults land")
    parser.add_argument("--port", type=int, default=29492,
                        help="broker port (the controller uses port+1; port+2 is left free). Keep it below the "
                        "ephemeral range (32768+ on Linux): while the broker restarts, a client reconnecting to a "
                        "free port in that range can be given that very port as its own and connect to itself, "
                        "holding the port so the broker cannot bind it again")
    parser.add_argument("--cluster-port", type=int,
                        help="the 3-node cluster's base port (default --port + 10): node N listens on it "
                        "+ 5 x (N - 1), its controller on that + 1")
    parser.add_argument("--home", type=Path, help="AIAAS_HOME with a built vision model (default: build one)")
    parser.add_argument("--stall", type=float, default=60.0, help="give up on a run after this long without a result")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, reader files, broker data)")
    args = parser.parse_args(argv)
    args.scenarios = [SCENARIOS[int(s)] for s in args.scenarios.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    if args.cluster_port is None:
        args.cluster_port = args.port + 10
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    return args


def build_home(workdir: Path) -> Path:
    """A fresh AIAAS_HOME whose registry holds the vision model (trained here, a few seconds)."""
    from aiaas.registry.store import Registry
    from aiaas.vision.trainer import build

    home = workdir / "home"
    build(Registry(home / "registry"))
    return home


class Brokers:
    """The single node and the 3-node cluster, each started when a scenario first needs it.

    One of them runs at a time (the machine has few cores): starting one stops the other.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.single = LocalBroker(args.port, workdir / "kafka")
        self.cluster = LocalCluster(args.cluster_port, workdir / "cluster")
        self.current: LocalBroker | LocalCluster | None = None

    async def for_scenario(self, scenario: Scenario) -> LocalBroker | LocalCluster:
        """The broker `scenario` runs on, running (started again when a failed scenario left it down)."""
        want = self.cluster if scenario.cluster else self.single
        if self.current is not None and self.current is not want:
            await self.current.stop_async()
            self.current = None
        if self.current is None or not want.running:
            await want.start_async()
            self.current = want
        return want

    async def stop(self) -> None:
        if self.current is not None:
            await self.current.stop_async()
            self.current = None


async def main_async(args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Start the broker(s), run every scenario × mode, return the rows."""
    home = args.home or build_home(workdir)
    brokers = Brokers(args, workdir)
    opts = Options(jobs=args.jobs, home=home, workdir=workdir, rate=args.rate, seed=args.seed, stall_s=args.stall)
    print(f"machine: {machine(_kinds(args.scenarios))}\nwork folder: {workdir}\n\n{HEADER}\n{RULE}", flush=True)
    rows = []
    try:
        for scenario in args.scenarios:
            for mode in args.modes:
                row = await run_one(scenario, mode, opts, await brokers.for_scenario(scenario))
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                for line in ([f"failed: {row.error}"] if row.error else []) + row.notes:
                    print(f"    {line}", flush=True)
    finally:
        await brokers.stop()
    return rows


def _kinds(scenarios: list[Scenario]) -> set[str]:
    """Which brokers the scenarios run on: `single`, `cluster`."""
    return {"cluster" if s.cluster else "single" for s in scenarios}


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the report; 1 when a requirement is not met."""
    args = _parse(argv)
    # aiokafka logs every failed reconnection while the broker is away (scenario 3): the rows say what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started, t0 = datetime.now(), time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aiaas-faults-"))
    try:
        rows = asyncio.run(main_async(args, workdir))
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    command = "python -m tests.faults.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = markdown(rows, command=command.strip(), jobs=args.jobs, rate=args.rate, seed=args.seed,
                      started=started.strftime("%Y-%m-%d %H:%M"), total_s=time.monotonic() - t0,
                      load=os.getloadavg(), brokers=_kinds(args.scenarios))
    broken = verdict(rows)
    print("\nrequirements: " + ("all met" if not broken else "NOT met:\n  " + "\n  ".join(broken)))
    if str(args.out) != "-":
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{started:%Y-%m-%d}-{machine_slug()}.md"
        path.write_text(report + "\n")
        print(f"report: {path}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
