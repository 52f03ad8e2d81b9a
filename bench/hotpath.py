"""Where a service spends its CPU per job, saturated or at an offered rate: a sampling profile of its process.

    .venv/bin/python bench/hotpath.py --model vision [--seconds 15] [--out bench/results]
    .venv/bin/python bench/hotpath.py --model recsys --offered 4000   # at partial load: an open loop at 4,000 jobs/s

Starts its own broker, builds the model, starts `python -m aiaas.<model>` (tracing on, spans to
the local store, as in the benchmark; `--noop`: the transport ceiling's no-op model service), keeps it
saturated with bursts from the raw load generator (or, with `--offered`, publishes to it at that steady rate: the
open loop of the latency measurements), and records the service process with py-spy
(`pip install py-spy`; sampling from outside the process, so the service runs unmodified and at
full speed) for `--seconds`.

Every sample is charged to one stage of the hot path by its innermost recognised frame:
Kafka in (aiokafka fetch and record parsing), decode (msgpack envelope), validate (pydantic),
prepare (the runtime's per-job preparation), model (the runtime's batch call), result
(building result objects), encode, tracing (span creation, context propagation), tracing
export (the span processor thread serialising and writing spans), Kafka out (aiokafka
producer), pipeline (batch assembly, in-flight window, commits), event loop (asyncio's own
scheduling) and other. The table gives each stage's share and its CPU microseconds per job
(samples ÷ rate ÷ jobs finished during the recording; with `--offered`, the jobs offered meanwhile),
so a before/after of a change to the hot path is one command per side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.registry.store import Registry
from aiaas.settings import KafkaSettings
from bench.load import RawLoad, burst, cycling, open_loop
from bench.procs import ChildProcess, LocalBroker, cpu_seconds, service_env, stop_all
from bench.report import MachineInfo
from bench.workloads import MODELS, Payload, build_model, payloads

__all__ = ["STAGES", "charge", "stage_of", "Profile", "parse_collapsed"]

STAGES: list[tuple[str, tuple[str, ...]]] = [
    # (stage, substrings of a frame "function (/full/path.py:line)"), most specific first; a frame is charged to the
    # first stage it matches.
    ("tracing export", ("/aiaas/tracing/span_store.py", "/opentelemetry/sdk/trace/export/", "/json/")),
    ("tracing", ("/opentelemetry/", "/aiaas/tracing/")),
    ("decode", ("/aiaas/contract/codec.py:", "/msgpack/")),
    ("validate", ("/pydantic/", "/pydantic_core/", "/aiaas/contract/envelopes.py")),
    ("prepare", ("prepare (",)),
    ("model", ("/onnxruntime/", "/aiaas/serving/onnx_session.py", " infer (")),
    ("result", ("_outcome (", "_fail (", "_seal (")),
    ("Kafka out", ("/aiokafka/producer/", "/aiaas/kafka/sink.py", "KafkaSink.")),
    ("Kafka in", ("/aiokafka/",)),
    ("pipeline", ("/aiaas/",)),
    ("event loop", ("/asyncio/", "/selectors.py", "/concurrent/futures/", "/threading.py")),
]
_ENTRY = ("run_service (", "/__main__.py:")
"""Frames at the root of every stack of a service process (`python -m aiaas.<model>` → `asyncio.run`): they say
nothing about the work, like the no-op service's `bench/transport.py` frames (else the event loop's own samples
would be charged to the pipeline in the service's profile, and to the event loop in the no-op's)."""
_ORDER = [name for name, _ in STAGES] + ["other"]
_EVENT_LOOP = "event loop"


def stage_of(frame: str) -> str | None:
    """The stage a single frame belongs to, or None if it says nothing (a library helper, a builtin, an entry point)."""
    if any(entry in frame for entry in _ENTRY):
        return None
    for name, needles in STAGES:
        if any(needle in frame for needle in needles):
            return name
    return None


def charge(frames: list[str]) -> str:
    """The stage a sample is charged to: its innermost frame with a stage other than the event loop's.

    Asyncio frames sit at the root of every coroutine's stack and under many calls (futures, tasks, socket
    writes); they are the event loop's own only when nothing of ours or of a library's is on the stack.
    """
    seen_loop = False
    for frame in reversed(frames):
        stage = stage_of(frame)
        if stage == _EVENT_LOOP:
            seen_loop = True
        elif stage is not None:
            return stage
    return _EVENT_LOOP if seen_loop else "other"


def short(frame: str) -> str:
    """A frame as `function (path:line)`, its path cut to the part after site-packages, the Python library or the
    project's services folder."""
    for marker in ("site-packages/", "/lib/python3", "/services/"):
        head, sep, tail = frame.partition(marker)
        if sep:
            tail = tail.split("/", 1)[1] if marker == "/lib/python3" else tail
            name, paren, _path = head.partition(" (")
            return f"{name}{paren}{tail}"
    return frame


def parse_collapsed(text: str) -> Counter[str]:
    """Samples per stage from py-spy's raw (collapsed) output: `frame;frame;...;frame count` per line."""
    stages: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stages[charge(stack.split(";"))] += int(count)
    return stages


def top_functions(text: str, n: int = 15) -> list[tuple[str, int]]:
    """The innermost frames with the most samples (self time)."""
    own: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[short(stack.split(";")[-1])] += int(count)
    return own.most_common(n)


@dataclass
class Profile:
    """One recording: samples per stage and the jobs finished (with `--offered`: offered) while it ran."""

    model: str
    seconds: float
    rate: int
    jobs: int
    stages: Counter[str]
    top: list[tuple[str, int]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process (service, broker, load generator) used while the jobs were counted."""

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    def markdown(self) -> str:
        total = sum(self.stages.values()) or 1
        lines = [f"{self.jobs:,} jobs in {self.seconds:.1f} s ({self.jobs_per_s:,.0f} jobs/s) while recorded; "
                 f"{total:,} samples at {self.rate}/s = the GIL held "
                 f"{total / self.rate / self.seconds:.0%} of the time "
                 f"({total / self.rate / self.jobs * 1e6:,.0f} µs per job holding the GIL)", "",
                 "CPU per job, whole processes (all threads; the machine's cores are shared by all three): "
                 + ", ".join(f"{name} {seconds / self.jobs * 1e6:,.0f} µs" for name, seconds in self.cpu.items()), "",
                 "| stage | share | µs per job |", "|---|---:|---:|"]
        for name in _ORDER:
            if self.stages.get(name):
                n = self.stages[name]
                lines.append(f"| {name} | {n / total:.1%} | {n / self.rate / self.jobs * 1e6:,.1f} |")
        lines += ["", "Top functions by own samples:", "", "| samples | frame |", "|---:|---|"]
        lines += [f"| {count:,} | `{frame}` |" for frame, count in self.top]
        return "\n".join(lines)


async def _record(service: ChildProcess, kafka: KafkaSettings, model: str, pool: list, seconds: float, rate: int,
                  raw: Path, cpu: dict[str, int], offered: float = 0) -> tuple[int, float, dict[str, float]]:
    """Saturate the service with bursts (or publish at `offered` jobs/s) while py-spy records it; returns (jobs
    finished, or offered, while it recorded; seconds recorded; CPU seconds per process meanwhile)."""
    load = RawLoad(kafka, model)
    await load.start()
    spy: subprocess.Popen | None = None
    try:
        if offered:
            return await _record_offered(service, load, cycling(pool), seconds, rate, raw, cpu, offered)
        for _ in range(2):  # warm-up: JIT-free Python, but caches, the broker and the model's first calls
            await burst(load, pool[:2000])
        spy = _spy(service, seconds, rate, raw)
        await asyncio.sleep(0.5)  # py-spy attaching
        started, jobs, cpu_used = time.perf_counter(), 0, _cpu_clock(cpu)
        used = cpu_used()
        while spy.poll() is None:
            done = await burst(load, pool)
            if spy.poll() is None:
                jobs += done.jobs
                used = cpu_used()
        elapsed = time.perf_counter() - started
        _check(spy)
        return jobs, elapsed, used
    finally:
        _end(spy)
        await load.stop()


async def _record_offered(service: ChildProcess, load: RawLoad, take: Callable[[int], list[Payload]],
                          seconds: float, rate: int, raw: Path, cpu: dict[str, int],
                          offered: float) -> tuple[int, float, dict[str, float]]:
    """One open loop at `offered` jobs/s, recorded in its middle for `seconds`: the jobs are those it offered
    meanwhile. Raises when the loop did not publish at that rate or ended before the recording did; its latency is
    logged (a service that fell behind the loop shows there, and then the jobs offered are not the jobs done)."""
    await open_loop(load, take(round(5 * offered)), rate=offered, share=0)  # warm-up
    running = asyncio.ensure_future(open_loop(load, take(round((seconds + 5) * offered)), rate=offered, share=0))
    spy: subprocess.Popen | None = None
    try:
        await asyncio.sleep(1.5)  # the jobs prepared and the loop under way
        spy = _spy(service, seconds, rate, raw)
        await asyncio.sleep(0.5)  # py-spy attaching
        started, cpu_used = time.perf_counter(), _cpu_clock(cpu)
        while spy.poll() is None:
            if running.done():
                raise RuntimeError("the open loop ended before the recording did: raise --offered's job count")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        used = cpu_used()
        _check(spy)
        point = await running
    finally:
        _end(spy)
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    print(f"open loop at {offered:,.0f} jobs/s: achieved {point.achieved_per_s:,.0f}/s, p50 {point.p50_ms:.1f} ms, "
          f"p99 {point.p99_ms:.1f} ms, publisher up to {point.max_lag_ms:,.0f} ms late", file=sys.stderr)
    if point.achieved_per_s < 0.97 * offered:
        raise RuntimeError(f"the open loop did not hold {offered:,.0f} jobs/s (achieved {point.achieved_per_s:,.0f}/s):"
                           " the jobs offered are not the jobs done")
    return round(offered * elapsed), elapsed, used


def _cpu_clock(cpu: dict[str, int]) -> Callable[[], dict[str, float]]:
    """From now: a call returns the CPU seconds each named process (name → pid) has used since."""
    before = {name: cpu_seconds(pid) for name, pid in cpu.items()}
    return lambda: {name: cpu_seconds(pid) - before[name] for name, pid in cpu.items()}


def _spy(service: ChildProcess, seconds: float, rate: int, raw: Path) -> subprocess.Popen:
    return subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record",
                             "--pid", str(service.pid), "--rate", str(rate), "--duration", str(int(seconds)),
                             "--format", "raw", "--nonblocking", "--gil", "--full-filenames", "--output", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _check(spy: subprocess.Popen) -> None:
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode(errors='replace')[-2000:]}")


def _end(spy: subprocess.Popen | None) -> None:
    """Stop py-spy if it still runs (the recording was cut short)."""
    if spy is not None and spy.poll() is None:
        spy.kill()
        spy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="vision")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--burst", type=int, default=3000, help="jobs per burst")
    parser.add_argument("--offered", type=float, default=0, metavar="JOBS_PER_S",
                        help="publish at this steady rate (an open loop) instead of saturating with bursts: where the "
                        "CPU goes at partial load")
    parser.add_argument("--port", type=int, default=29792)
    parser.add_argument("--noop", action="store_true",
                        help="profile the transport ceiling's service (bench/transport.py: the no-op model) instead")
    parser.add_argument("--label", default="", help="written into the report's title (e.g. before / after)")
    parser.add_argument("--out", type=Path, help="also write the report to this markdown file")
    parser.add_argument("--keep-raw", type=Path, help="copy py-spy's collapsed stacks here")
    args = parser.parse_args()
    if args.offered < 0:
        parser.error("--offered is a rate in jobs/s (0: saturate with bursts)")
    if not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="aiaas-hotpath-"))
    try:
        registry = Registry(tmp / "home" / "registry")
        build_model(args.model, registry)
        pool = payloads(args.model, args.burst, registry, seed=2)
        broker = LocalBroker(args.port, tmp / "kafka").start()
        prefix = f"profile-{os.getpid()}"
        env = service_env(broker.bootstrap, prefix, tmp / "home")
        command = ["bench/transport.py", "--model", args.model] if args.noop else ["-m", f"aiaas.{args.model}"]
        service = ChildProcess(command, env, tmp / "service.log").start()
        raw = tmp / "profile.txt"
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
        processes = {"service": service.pid, "broker": broker.pid, "load generator": os.getpid()}
        jobs, elapsed, used = asyncio.run(_record(service, kafka, args.model, pool, args.seconds, args.rate, raw,
                                                  processes, args.offered))
        text = raw.read_text()
        if args.keep_raw:
            shutil.copy(raw, args.keep_raw)
        profile = Profile(args.model, elapsed, args.rate, jobs, parse_collapsed(text), top_functions(text), used)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    info = MachineInfo.collect()
    title = (f"# {args.model} {'no-op (transport ceiling) ' if args.noop else ''}service profile"
             f"{f', {args.offered:,.0f} jobs/s offered' if args.offered else ', saturated'}"
             f"{' — ' + args.label if args.label else ''}")
    report = (f"{title}\n\n{time.strftime('%Y-%m-%d %H:%M')} · {info.cpu_described} · "
              f"`.venv/bin/python bench/hotpath.py {' '.join(sys.argv[1:])}`\n\n{profile.markdown()}\n")
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
