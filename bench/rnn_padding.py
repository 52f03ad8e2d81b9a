"""What padding costs the rnn service: one padded session run per batch against length groups.

Run: `.venv/bin/python bench/rnn_padding.py` (builds the rnn model into a temporary registry unless AIAAS_HOME
points at one that has it). Prints a Markdown table; `--out FILE` writes it too.

The batches are the benchmark's rnn jobs (`rnn/workload.py`): prefixes of held-out sessions, every length real
traffic has, `max_batch` of them per batch as a saturated service cuts them. A session's answer does not depend on
what is padded after it (rnn/model.py), so padding costs GRU steps and nothing else. Each call-overhead value is
a way to cut a batch: a longer session joins a length group unless that pads more slots than the value, else it
starts a run of its own (0: one run per distinct length; a huge value: the whole batch in one run). The values
are timed in alternation over rounds, each round's median of several batches, against the whole batch in one run.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.registry.store import Registry
from aiaas.rnn.runtime import RnnRuntime
from aiaas.rnn.settings import RnnSettings
from aiaas.settings import HomeSettings
from bench.workloads import as_jobs, payloads

ONE_RUN = 10**9
"""A call overhead so large that every batch is one run, padded to its longest session."""


def registry_with_rnn() -> Registry:
    """AIAAS_HOME's registry when it has an rnn version, else a temporary one with one built."""
    registry = Registry(HomeSettings().registry_dir)
    if "rnn" in registry.models():
        return registry
    from aiaas.rnn.trainer import build

    registry = Registry(Path(tempfile.mkdtemp(prefix="rnn-padding-")) / "registry")
    build(registry)
    return registry


def measure(registry: Registry, overheads: list[int], batches: int, rounds: int) -> list[str]:
    """Markdown rows: per call overhead, session runs and padding per batch, ms per batch and speed vs one run."""
    settings = RnnSettings()
    runtimes = {o: RnnRuntime.from_registry(registry, providers="cpu", intra_op_threads=settings.session_threads(),
                                            limits=replace(settings.limits(), call_overhead_slots=o))
                for o in overheads}
    jobs = as_jobs("rnn", payloads("rnn", settings.max_batch * batches, registry, seed=1))
    items = [runtimes[ONE_RUN].prepare(job) for job in jobs]
    cut = [items[i : i + settings.max_batch] for i in range(0, len(items), settings.max_batch)]
    times: dict[int, list[float]] = {o: [] for o in overheads}
    for _ in range(rounds):
        for overhead in random.Random(len(times[overheads[0]])).sample(overheads, len(overheads)):
            samples = []
            for batch in cut:
                started = time.perf_counter()
                runtimes[overhead].infer(batch)
                samples.append((time.perf_counter() - started) * 1000)
            times[overhead].append(statistics.median(samples))
    lines = [f"{len(cut)} batches of {settings.max_batch} held-out session prefixes; {rounds} rounds, each value's "
             "median ms per batch per round; speed: median of each round's ratio to one run.", "",
             "| call overhead (slots) | session runs per batch | padding share | ms per batch | jobs/s "
             "| speed vs one run |",
             "|---|---:|---:|---:|---:|---:|"]
    for overhead in overheads:
        counter = runtimes[overhead].padding
        ms = statistics.median(times[overhead])
        speed = statistics.median(a / b for a, b in zip(times[ONE_RUN], times[overhead], strict=True))
        name = "one run (whole batch)" if overhead == ONE_RUN else f"{overhead}" + (
            " (default)" if overhead == RnnSettings.model_fields["call_overhead_slots"].default else "")
        lines.append(f"| {name} | {counter.session_runs / counter.sessions * settings.max_batch:.1f} | "
                     f"{counter.padding_share:.1%} | {ms:.2f} | {settings.max_batch / ms * 1000:,.0f} | {speed:.2f}x |")
    return lines


def main() -> None:
    """Build or find the model, measure, print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches per round (default 8)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of alternation (default 7)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    registry = registry_with_rnn()
    overheads = [ONE_RUN, 0, 8, 32, 128, 512]
    lines = [f"# rnn padding: one run per batch against length groups ({time.strftime('%Y-%m-%d')}, "
             f"{platform.processor() or platform.machine()})", "",
             "Command: `.venv/bin/python bench/rnn_padding.py`", "",
             *measure(registry, overheads, args.batches, args.rounds)]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
