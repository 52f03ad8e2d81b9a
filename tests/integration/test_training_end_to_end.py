"""Training jobs on the real broker: trainer and service as processes, promotion, hot reload, crashes, DLQ."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result
from aiaas.metrics.fleet import scrape
from aiaas.metrics.targets import list_targets
from aiaas.registry.store import Registry
from aiaas.tracing.span_store import job_trace, load_spans
from aiaas.vision.trainer import TrainParams, build
from tests.harness import wait_for
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import digit_jobs, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path) -> Registry:
    """A registry of this test's own, with a deliberately weak vision v1 (3 epochs) to improve on."""
    registry = Registry(tmp_path / "home" / "registry")
    build(registry, TrainParams(epochs=3))
    return registry


@pytest.fixture
def env(service_env, home) -> dict[str, str]:
    return service_env | {"AIAAS_HOME": str(home.root.parent)}


def trainer(env, tmp_path, **settings) -> ServiceProcess:
    extra = {f"AIAAS_TRAINER_{k.upper()}": str(v) for k, v in settings.items()}
    return ServiceProcess(env | extra, tmp_path / "trainer.log", "training", "vision")


async def test_a_training_job_promotes_a_version_that_inference_switches_to_without_a_failed_job(
        kafka_settings, env, home, tmp_path):
    service = ServiceProcess(env, tmp_path / "vision.log").start()
    training = trainer(env, tmp_path).start()
    images = [image for image, _ in digit_jobs(50)]
    try:
        async with AiaasClient(kafka_settings) as client:
            enough = asyncio.Event()

            async def steady_stream(rate: float) -> list:
                handles = []
                while not enough.is_set():
                    handles.append(await client.submit("vision", {"image": images[len(handles) % len(images)]}))
                    await asyncio.sleep(1 / rate)
                return handles

            stream = asyncio.create_task(steady_stream(rate=100))
            await asyncio.sleep(0.5)
            job = await client.train("vision", {"epochs": 8, "learning_rate": 1e-3, "base_version": "production"})
            events = [event async for event in job.events(timeout=120)]
            await asyncio.sleep(2.0)  # the stream goes on after the promotion
            enough.set()
            handles = await stream
            results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        # The trainer's metrics say what it did; the service's, that it took the new version without a restart.
        by_pid = {t.pid: t for t in list_targets(home.root.parent)}
        trained = scrape(by_pid[training.pid])
        assert trained.total("aiaas_training_jobs_total", status="succeeded") == 1
        assert trained.total("aiaas_training_epochs_total") == 8
        assert trained.total("aiaas_training_metric", metric="accuracy") > 0.9
        wait_for(lambda: scrape(by_pid[service.pid]).total("aiaas_model_reloads_total") == 1, 5,
                 what="the service's reload count")
        assert scrape(by_pid[service.pid]).label_values("aiaas_model_info", "version") == {"2"}
    finally:
        service.stop()
        training.stop()

    statuses = [e.status for e in events]
    assert statuses[0] == "accepted" and statuses[-1] == "succeeded", events[-1]
    assert [e.progress.epoch for e in events if e.status == "running"] == list(range(1, 9))
    assert events[-1].outputs["version"] == 2 and "production" in events[-1].outputs["aliases"]
    assert home.resolve("vision", "v2").parent == 1 and home.resolve("vision", "v2").job_id == job.job_id

    assert len(results) > 200 and [r.status for r in results].count("ok") == len(results)  # none failed or lost
    versions = [r.model_version for r in results]
    assert versions[0] == "1" and versions[-1] == "2", "results switch from v1 to v2"

    stored: list = []
    deadline = time.time() + 15
    while time.time() < deadline:  # processes export spans every 0.5 s
        stored = job_trace(load_spans(home.root.parent / "spans"), job.job_id)
        if any(s.name.startswith("load vision") for s in stored):
            break
        await asyncio.sleep(0.25)
    hops = {(s.service, s.name.split(" ")[0]) for s in stored}
    assert {("aiaas-vision-trainer", "process"), ("aiaas-vision-trainer", "train"),
            ("aiaas-vision-trainer", "register"), ("aiaas-vision", "process"), ("aiaas-vision", "load")} <= hops, hops
    assert len({s.trace_id for s in stored}) == 1


async def test_a_trainer_killed_mid_job_runs_it_again_after_restart(kafka_settings, env, tmp_path):
    training = trainer(env, tmp_path).start()
    async with AiaasClient(kafka_settings) as client:
        job = await client.train("vision", {"epochs": 25})
        async for event in job.events(timeout=60):
            if event.status == "running":
                break
        training.signal(signal.SIGKILL)  # no drain, no commit: the job must come back
        training.start()
        events = [event async for event in job.events(timeout=180)]
    training.stop()
    accepted = [e for e in events if e.status == "accepted"]
    assert accepted and accepted[-1].outputs["attempt"] == 2
    assert events[-1].status == "succeeded"


async def test_training_longer_than_max_poll_interval_keeps_the_trainer_in_its_group(kafka_settings, env, tmp_path):
    training = trainer(env, tmp_path, max_poll_interval_ms=3000, poll_interval_s=0.5).start()
    async with AiaasClient(kafka_settings) as client:
        job = await client.train("vision", {"epochs": 40})
        started = time.time()
        events = [event async for event in job.events(timeout=120)]
    took = time.time() - started
    training.stop()
    assert events[-1].status == "succeeded" and took > 3 * 1.5, f"training took only {took:.1f}s"
    assert [e.outputs["attempt"] for e in events if e.status == "accepted"] == [1]  # never handed to another run
    assert training.log_text().count("Setting newly assigned partitions") == 1, "the trainer lost its group membership"


async def test_a_second_trainer_joining_mid_job_loses_no_queued_job(kafka_settings, env, tmp_path):
    first = trainer(env, tmp_path).start()
    second = ServiceProcess(env, tmp_path / "trainer-2.log", "training", "vision")
    async with AiaasClient(kafka_settings) as client:
        jobs = [await client.train("vision", {"epochs": 12, "seed": i}) for i in range(5)]
        async for event in jobs[0].events(timeout=60):  # whichever trainer, one job is training now
            if event.status == "running":
                break
        second.start()  # the group rebalances while that job trains
        finals = await asyncio.gather(*(job.result(timeout=240) for job in jobs))
    first.stop()
    second.stop()
    assert [f.status for f in finals] == ["succeeded"] * 5


async def test_after_max_attempts_the_job_fails_with_a_dead_letter(kafka_settings, env, tmp_path, topic_prefix):
    training = trainer(env, tmp_path, max_attempts=1).start()
    async with AiaasClient(kafka_settings) as client:
        job = await client.train("vision", {"epochs": 25})
        async for event in job.events(timeout=60):
            if event.status == "running":
                break
        training.signal(signal.SIGKILL)
        training.start()
        final = await job.result(timeout=60)
    training.stop()
    assert final.status == "failed" and final.error.type == "TooManyAttempts"
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=1)
    assert [dict(r.headers)["aiaas.error.type"] for r in dead] == [b"TooManyAttempts"]


async def test_a_bad_training_job_fails_with_a_dead_letter_and_the_next_one_trains(kafka_settings, env, home, tmp_path,
                                                                                  topic_prefix):
    data = home.root.parent / "data" / "digits.jsonl"  # under the trainer's default data root
    data.parent.mkdir()
    data.write_text('{"image": [[0]], "label": 1}\n')
    training = trainer(env, tmp_path).start()
    try:
        async with AiaasClient(kafka_settings) as client:
            wrong_sha = await client.train("vision", {"data_uri": data.as_uri(), "data_sha256": "0" * 64})
            bad_shape = await client.train("vision", {"data_uri": data.as_uri()})
            good = await client.train("vision", {"epochs": 1})
            outcomes = [await h.result(timeout=120) for h in (wrong_sha, bad_shape, good)]
    finally:
        training.stop()
    assert [o.status for o in outcomes] == ["failed", "failed", "succeeded"]
    assert "data_sha256" in outcomes[0].error.message and "[N, 8, 8]" in outcomes[1].error.message
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=2)
    assert {r.key for r in dead} == {wrong_sha.job_id.encode(), bad_shape.job_id.encode()}
    # accepted + failed twice, then accepted, running, succeeded
    results = await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=7)
    assert {decode_result(r.value, 1 << 20).status for r in results} >= {"accepted", "failed", "succeeded"}
