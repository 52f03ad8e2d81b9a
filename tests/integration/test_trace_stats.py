"""`aiaas trace --stats <model>`: a model's jobs' time, hop by hop, from their traces in the local span store: the
CLI publishes and reads results, the service answers, both store their spans; the hops of each job add up to its
end-to-end time."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from aiaas.tracing.hops import HOPS, job_times
from aiaas.tracing.span_store import load_spans
from tests.harness import REPO, service_env, wait_for
from tests.integration.conftest import ServiceProcess

pytestmark = pytest.mark.integration

JOBS = 40


def test_trace_stats_gives_each_hops_percentiles_and_the_hops_add_up_to_each_jobs_time(
        kafka_broker, topic_prefix, vision_registry, tmp_path):
    home = tmp_path / "home"  # a span store of this test's own: only its jobs are counted
    shutil.copytree(vision_registry.root, home / "registry")
    env = service_env(kafka_broker, topic_prefix, home, {"AIAAS_VISION_MAX_BATCH": "32"})
    service = ServiceProcess(env, tmp_path / "vision.log").start()
    try:
        submitted = subprocess.run([sys.executable, "-m", "aiaas.cli", "submit", "vision", "--digits-sample",
                                    str(JOBS), "--rate", "400", "--wait", "--timeout", "60", "--quiet"],
                                   env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        def every_job_whole():  # the CLI stored its spans as it exited; the service stores them every 0.5 s
            times = job_times(load_spans(home / "spans"), "vision")
            return times if len(times) == JOBS and all(len(t.hops) == len(HOPS) for t in times) else None

        times = wait_for(every_job_whole, 20, what=f"all {JOBS} jobs' spans, every hop")
    finally:
        service.stop()

    # Each job's end to end as its hops say, against the latency the publisher itself saw (`submit --wait` prints
    # the p50 of its own clock, publish → result received): the two agree to within the CLI's rounding.
    seen = float(re.search(r"latency p50 / p99\s+([0-9.]+) ms", submitted.stdout).group(1))
    ends = sorted(t.hops["end to end"] * 1000 for t in times)
    assert ends[len(ends) // 2 - 1] - 1 <= seen <= ends[len(ends) // 2] + 1, (seen, ends, submitted.stdout)
    for job in times:
        assert job.hops["model call"] > 0 and job.hops["publish"] > 0 and job.hops["result publish"] > 0, job
        # A consumer may take a record before its sender handled the broker's acknowledgement, so `in partition` and
        # `to reader` may read below 0 alone; with the hop before them, time only goes forward.
        assert min(s for hop, s in job.hops.items() if hop not in ("in partition", "to reader")) >= 0, job
        assert job.hops["publish"] + job.hops["in partition"] > 0, job
        assert job.hops["result publish"] + job.hops["to reader"] > 0, job

    shown = subprocess.run([sys.executable, "-m", "aiaas.cli", "trace", "--stats", "vision", "--since", "10m"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"vision: {JOBS} jobs, milliseconds"
    rows = {line[:15].strip(): line[15:].split() for line in lines[2 : 2 + len(HOPS)]}
    assert list(rows) == list(HOPS)
    for hop, (jobs, p50, p90, p99, most) in rows.items():
        assert int(jobs) == JOBS and float(p50) <= float(p90) <= float(p99) <= float(most), (hop, shown.stdout)
    assert "the slowest 1 % (1 jobs, end to end at or above its p99)" in shown.stdout
    assert "most of it: " in lines[-1]
