"""A real vision service's /metrics, /healthz and /readyz; Prometheus scraping it through its target file; and
`aiaas top` in a terminal (tmux) showing it, as a person would see it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.metrics.targets import list_targets, targets_dir
from tests.harness import wait_for
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import digit_jobs

pytestmark = pytest.mark.integration


def endpoint_of(service: ServiceProcess, home: Path) -> str:
    """The base URL the service announced in its target file."""
    (target,) = [t for t in list_targets(home) if t.pid == service.pid]
    return target.url


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(base: str, line_start: str) -> float | None:
    """The value of the first exported series whose line starts with `line_start` (name and labels)."""
    for line in get(base + "/metrics")[1].splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def submit(kafka_settings, n: int) -> None:
    async with AiaasClient(kafka_settings) as client:
        handles = await asyncio.gather(*(client.submit("vision", {"image": image}) for image, _ in digit_jobs(n)))
        await asyncio.gather(*(h.result(timeout=60) for h in handles))


async def test_a_service_reports_ready_counts_its_jobs_and_dead_letters_and_withdraws_its_target_on_exit(
        kafka_settings, vision_service, session_registry):
    home = session_registry.root.parent
    vision_service.start()
    base = endpoint_of(vision_service, home)
    assert get(base + "/healthz") == (200, "ok\n")
    wait_for(lambda: get(base + "/readyz")[0] == 200, 20, what="/readyz to answer 200")

    await submit(kafka_settings, 40)
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(f"{kafka_settings.topic_prefix}.vision.infer", b"\x93not a job", key=b"junk-1")
    finally:
        await producer.stop()
    ok = 'aiaas_jobs_total{model="vision",status="ok",task="",tenant=""}'
    wait_for(lambda: sample(base, ok) == 40 and sample(base, "aiaas_dead_letters_total") == 1, 20,
             what="40 jobs and one dead letter counted")
    assert sample(base, 'aiaas_dead_letters_total{error_type="UndecodableMessage"') == 1
    assert sample(base, 'aiaas_job_duration_seconds_count{model="vision"}') == 40
    assert sample(base, 'aiaas_batch_size_sum{model="vision"}') == 40  # the junk record never reaches the model
    assert sample(base, 'aiaas_model_info{model="vision",serving="production",version="1"}') == 1
    topic = f"{kafka_settings.topic_prefix}.vision.infer"
    infer = f'aiaas_consumer_lag_records{{model="vision",partition="0",topic="{topic}"}}'
    wait_for(lambda: sample(base, infer) == 0, 10, what="the lag of a partition to read 0")
    assert sample(base, "process_resident_memory_bytes") > 0
    # The service samples its event loop's lag (every 50 ms since it started) and times its garbage collections.
    assert sample(base, "aiaas_event_loop_lag_seconds_count") >= 10
    assert sample(base, 'aiaas_gc_pause_seconds_count{generation="2"}') >= 1  # the one before its first job

    pid = vision_service.pid
    assert list(targets_dir(home).glob(f"service-vision-*-{pid}.json"))
    vision_service.stop()
    assert not list(targets_dir(home).glob(f"*-{pid}.json"))


async def test_model_monitoring_shows_the_answers_drifting_when_only_one_kind_of_digit_comes(
        kafka_settings, vision_service, session_registry):
    home = session_registry.root.parent
    vision_service.start()
    base = endpoint_of(vision_service, home)
    drift = 'aiaas_model_output_drift{model="vision",version="1"}'
    await submit(kafka_settings, 300)  # held-out digits: spread as the held-out set was when v1 was built
    wait_for(lambda: sample(base, drift) is not None, 10, what="the drift gauge")
    assert sample(base, drift) < 0.2
    ones = [image for image, label in digit_jobs(360) if label == 1]
    async with AiaasClient(kafka_settings) as client:  # then only ones, many times over: the window fills with 1s
        handles = await asyncio.gather(*(client.submit("vision", {"image": ones[i % len(ones)]}) for i in range(1000)))
        await asyncio.gather(*(h.result(timeout=60) for h in handles))
    ones_share = 'aiaas_model_output_share{category="1",model="vision",version="1"}'
    wait_for(lambda: (sample(base, ones_share) or 0) > 0.95, 10, what="1s to fill the window")  # sampled each second
    assert sample(base, drift) > 0.6


async def test_prometheus_finds_the_service_by_its_target_file_and_scrapes_its_job_counters(
        kafka_settings, service_env, vision_registry, session_registry, observe_prometheus, tmp_path):
    home = observe_prometheus.home
    if not (home / "registry").exists():
        (home / "registry").symlink_to(session_registry.root)  # the service loads the session's model from there
    service = ServiceProcess(service_env | {"AIAAS_HOME": str(home)}, tmp_path / "vision.log").start()
    try:
        await submit(kafka_settings, 25)

        def scraped() -> float:
            found = observe_prometheus.query(f'sum(aiaas_jobs_total{{aiaas_model="vision",aiaas_pid="{service.pid}"}})')
            return float(found[0]["value"][1]) if found else 0.0

        wait_for(lambda: scraped() == 25, 30, what="Prometheus to scrape 25 jobs")
        (up,) = observe_prometheus.query(f'up{{aiaas_pid="{service.pid}"}}')
        assert up["metric"]["aiaas_role"] == "service" and up["value"][1] == "1"
    finally:
        service.stop()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="the top test drives a terminal with tmux (apt install tmux)")
async def test_top_shows_the_running_service_live_in_a_terminal(kafka_settings, vision_service, session_registry):
    home = session_registry.root.parent
    vision_service.start()
    session = f"aiaas-top-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TMUX"))} | {
        "AIAAS_HOME": str(home), "OTEL_TRACES_EXPORTER": "none", "TERM": "xterm-256color"}
    top = [sys.executable, "-m", "aiaas.cli", "top"]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "30", *top], env=env, check=True)
    try:
        load = asyncio.create_task(submit_steadily(kafka_settings, seconds=12))

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                  check=True).stdout

        def vision_row() -> list[str] | None:
            rows = [line for line in screen().splitlines() if line.startswith("│ vision")]
            return [cell.strip() for cell in rows[0].split("│")[1:-1]] if rows else None

        deadline = time.monotonic() + 30
        cells = None
        while time.monotonic() < deadline:  # until the row shows jobs flowing (a few refreshes in)
            cells = vision_row()
            if cells and float(cells[3].replace(",", "")) > 0:
                break
            await asyncio.sleep(0.5)
        await load
        assert cells is not None, screen()
        model, replicas, ready, jobs_per_s, p50, p99 = cells[:6]
        assert (model, replicas, ready, cells[10]) == ("vision", "1", "1", "v1"), screen()
        assert float(jobs_per_s.replace(",", "")) > 0 and float(p99.replace(",", "")) >= float(p50.replace(",", ""))
        assert "services (last 10 s)" in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        wait_for(lambda: subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0,
                 10, what="top to exit on Ctrl-C")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


async def submit_steadily(kafka_settings, seconds: float) -> None:
    """About 40 jobs a second for `seconds`, each waited for."""
    images = [image for image, _ in digit_jobs(40)]
    async with AiaasClient(kafka_settings) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            handles = await asyncio.gather(*(client.submit("vision", {"image": image}) for image in images[:8]))
            await asyncio.gather(*(h.result(timeout=30) for h in handles))
            await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
