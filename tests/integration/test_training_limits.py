"""Training jobs are untrusted input: limits, stops, failures and promotion, with the trainer as a process on the
real broker."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from aiaas.client.client import AiaasClient
from aiaas.contract.envelopes import Tensor
from aiaas.vision.data import load_split
from tests.integration.conftest import ServiceProcess
from tests.integration.test_training_end_to_end import env, home  # noqa: F401 - the same fixtures
from tests.integration.test_vision_end_to_end import read_topic

pytestmark = pytest.mark.integration




def trainer(env, tmp_path, module: str | None = None, **settings) -> ServiceProcess:
    extra = {f"AIAAS_TRAINER_{k.upper()}": str(v) for k, v in settings.items()}
    return ServiceProcess(env | extra, tmp_path / "trainer.log", "training", "vision", module=module)


def dead_letter_types(records) -> list[str]:
    return [dict(r.headers)["aiaas.error.type"].decode() for r in records]


async def test_a_job_past_its_time_limit_fails_and_the_next_one_trains(kafka_settings, env, tmp_path, topic_prefix):
    # A limit well above what a 1-epoch job needs on a busy 2-core machine, far below what 1000 epochs take.
    training = trainer(env, tmp_path, max_train_s=12, stop_grace_s=2).start()
    try:
        async with AiaasClient(kafka_settings) as client:
            endless = await client.train("vision", {"epochs": 1000})
            quick = await client.train("vision", {"epochs": 1})
            started = time.time()
            timed_out = await endless.result(timeout=60)
            took = time.time() - started
            done = await quick.result(timeout=60)
    finally:
        training.stop()
    assert timed_out.status == "failed" and timed_out.error.type == "TimeLimitExceeded", timed_out
    assert not timed_out.error.retriable and took < 40, f"the limit is 12 s; the job ended after {took:.1f}s"
    assert done.status == "succeeded"
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=1)
    assert dead_letter_types(dead) == ["TimeLimitExceeded"] and dead[0].key == endless.job_id.encode()


async def test_sigterm_stops_training_between_steps_and_the_job_runs_again_after_restart(kafka_settings, env,
                                                                                       tmp_path, topic_prefix):
    training = trainer(env, tmp_path).start()
    async with AiaasClient(kafka_settings) as client:
        job = await client.train("vision", {"epochs": 120})
        async for event in job.events(timeout=60):
            if event.status == "running":
                break
        stopping = time.time()
        assert training.signal(signal.SIGTERM, timeout=30) == 0
        stopped_in = time.time() - stopping
        assert "not committed, it runs again" in training.log_text()
        training.start()
        events = [event async for event in job.events(timeout=240)]
    training.stop()
    assert stopped_in < 10, f"SIGTERM took {stopped_in:.1f}s to stop a 120-epoch job"
    accepted = [e for e in events if e.status == "accepted"]
    assert [e.outputs["attempt"] for e in accepted] == [1], "a stop does not count as an attempt"
    assert events[-1].status == "succeeded"
    assert await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=1, timeout=2) == []


async def test_any_error_inside_a_trainer_fails_the_job_with_a_dead_letter_and_the_trainer_goes_on(
        kafka_settings, env, tmp_path, topic_prefix):
    training = trainer(env, tmp_path, module="tests.integration.faulty_trainer", max_train_s=12,
                       stop_grace_s=1).start()
    faults = ["OSError", "MemoryError", "SystemExit", "KeyError", "hang"]
    try:
        async with AiaasClient(kafka_settings) as client:
            failing = [await client.train("vision", {"epochs": 1}, attributes={"fault": f}) for f in faults]
            good = await client.train("vision", {"epochs": 1})
            outcomes = [await handle.result(timeout=60) for handle in (*failing, good)]
        assert training.proc.poll() is None, "the trainer exited on a job"
    finally:
        training.stop()
    assert [o.status for o in outcomes] == ["failed"] * 5 + ["succeeded"]
    assert [o.error.type for o in outcomes[:5]] == ["TrainingFailed"] * 4 + ["TimeLimitExceeded"]
    assert [o.error.message.split(":")[0] for o in outcomes[:4]] == ["OSError", "MemoryError", "SystemExit", "KeyError"]
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=5)
    assert sorted(dead_letter_types(dead)) == ["TimeLimitExceeded"] + ["TrainingFailed"] * 4
    assert {r.key for r in dead} == {h.job_id.encode() for h in failing}


async def test_data_outside_the_roots_is_refused_without_saying_whether_it_exists(kafka_settings, env, home,
                                                                                   tmp_path, topic_prefix):
    data_root = home.root.parent / "data"  # the default root: <AIAAS_HOME>/data
    data_root.mkdir()
    split = load_split()
    rows = [{"image": split.train_x[i][0].tolist(), "label": int(split.train_y[i])} for i in range(50)]
    (data_root / "digits.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    outside = tmp_path / "outside.jsonl"
    outside.write_text((data_root / "digits.jsonl").read_text())
    (data_root / "link.jsonl").symlink_to(outside)
    training = trainer(env, tmp_path).start()
    try:
        async with AiaasClient(kafka_settings) as client:
            handles = [await client.train("vision", {"data_uri": uri, "epochs": 1}) for uri in (
                str(outside), str(tmp_path / "missing.jsonl"), str(data_root / "link.jsonl"),
                str(data_root / ".." / ".." / "outside.jsonl"), (data_root / "digits.jsonl").as_uri())]
            outcomes = [await handle.result(timeout=60) for handle in handles]
    finally:
        training.stop()
    assert [o.status for o in outcomes] == ["failed"] * 4 + ["succeeded"]
    messages = [o.error.message for o in outcomes[:4]]
    assert all("is not a file under the trainer's data roots" in m and o.error.type == "InvalidJob"
               for m, o in zip(messages, outcomes, strict=False))
    assert messages[0].replace("outside.jsonl", "X") == messages[1].replace("missing.jsonl", "X")  # exists or not
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=4)
    assert dead_letter_types(dead) == ["InvalidJob"] * 4


async def test_a_version_scored_on_the_jobs_own_data_is_registered_on_staging_only(kafka_settings, env, home,
                                                                                   tmp_path):
    split = load_split()  # a job that trains on the held-out digits would score about 100 % on them
    images = np.concatenate([split.train_x, split.test_x]).reshape(-1, 8, 8)
    labels = np.concatenate([split.train_y, split.test_y])
    training = trainer(env, tmp_path).start()
    try:
        async with AiaasClient(kafka_settings) as client:
            job = await client.train("vision", {"epochs": 15, "images": Tensor.from_numpy(images),
                                                "labels": Tensor.from_numpy(labels)})
            final = await job.result(timeout=180)
    finally:
        training.stop()
    assert final.status == "succeeded", final
    assert final.outputs["aliases"] == ["staging"] and final.outputs["scored_on"] == "job_data"
    assert "never made production automatically" in final.outputs["promotion"]
    assert home.aliases("vision")["production"] == 1  # though it beats v1 (3 epochs) by far
    assert final.outputs["metric.accuracy"] > home.resolve("vision", "1").metrics["accuracy"]
    assert home.resolve("vision", str(final.outputs["version"])).params["scored_on"] == "job_data"
