"""The LLM service as its own process on the real broker: streamed answers, cancel, deadlines, seeds, hostile
prompts, and a kill -9 mid-answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgpack
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiaas.client.client import AiaasClient, StreamRestart
from aiaas.contract.codec import decode_result
from aiaas.contract.envelopes import Result
from aiaas.metrics.fleet import scrape
from aiaas.metrics.targets import list_targets
from aiaas.settings import KafkaSettings
from tests.harness import service_env as service_env_for
from tests.harness import wait_for
from tests.integration.conftest import ServiceProcess

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
FINE_TUNING_STEPS = 10
"""Optimiser steps of the fine-tuning test: enough for the adapter to learn the built-in JSON shape."""


async def read_topic(settings: KafkaSettings, topic: str, isolation_level: str = "read_uncommitted") -> list:
    """Every record on `topic` now (from the beginning to its end offsets)."""
    consumer = AIOKafkaConsumer(**settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                isolation_level=isolation_level)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - a topic created a moment ago
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends, records = await consumer.end_offsets(parts), []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def llm_env(kafka_broker: str, llm_registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return service_env_for(kafka_broker, prefix, llm_registry.root.parent,
                           {"AIAAS_LLM_CHUNK_INTERVAL_MS": "20", "AIAAS_LLM_MAX_PROMPT_TOKENS": "256"})


@pytest.fixture(scope="module")
def llm_service(llm_env, tmp_path_factory: pytest.TempPathFactory):
    service = ServiceProcess(llm_env, tmp_path_factory.mktemp("llm") / "llm.log", model="llm").start(timeout=120)
    yield service
    service.stop()


@pytest.fixture
def settings(llm_env) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=llm_env["AIAAS_KAFKA_BOOTSTRAP_SERVERS"],
                         topic_prefix=llm_env["AIAAS_KAFKA_TOPIC_PREFIX"])


async def streamed(handle, timeout: float = 120) -> tuple[list[str], Result]:
    pieces: list[str] = []
    async for piece in handle.stream(timeout):
        if isinstance(piece, Result):
            return pieces, piece
        assert not isinstance(piece, StreamRestart)
        pieces.append(piece)
    raise AssertionError("the stream ended without a result")


async def test_an_answer_streams_in_order_and_adds_up_to_the_final_text(llm_service, settings, llm_env):
    async with AiaasClient(settings) as client:
        handle = await client.submit("llm", {}, task="chat", messages=STORY, generation={"max_tokens": 60})
        pieces, result = await streamed(handle)
    assert result.status == "ok" and result.outputs["finish_reason"] in ("stop", "length")
    assert len(pieces) > 2 and "".join(pieces) == result.outputs["text"]
    assert 0 < result.outputs["completion_tokens"] <= 60 and result.outputs["prompt_tokens"] > 5
    assert result.outputs["time_to_first_token_ms"] > 0
    records = await read_topic(settings, f"{settings.topic_prefix}.llm.results")
    chunks = [decode_result(r.value, 1 << 20) for r in records if r.key == handle.job_id.encode()]
    assert [c.status for c in chunks][-1] == "ok"
    seqs = [c.chunk.seq for c in chunks if c.status == "chunk"]
    assert seqs == list(range(len(seqs))) and len({c.chunk.run for c in chunks if c.chunk}) == 1
    # The generation's usage is in the service's metrics: tokens in and out, time to first token, per output token.
    (target,) = [t for t in list_targets(Path(llm_env["AIAAS_HOME"])) if t.pid == llm_service.pid]
    wait_for(lambda: scrape(target).total("aiaas_generation_tokens_total", direction="out") >= 1, 10,
             what="the LLM's token counter")
    metrics = scrape(target)
    assert metrics.total("aiaas_generation_tokens_total", direction="in") >= result.outputs["prompt_tokens"]
    assert metrics.total("aiaas_generation_time_to_first_token_seconds_count") >= 1
    assert metrics.total("aiaas_generation_time_per_output_token_seconds_count") >= 1


async def test_a_greedy_question_gets_the_right_answer_and_the_same_seed_the_same_text(llm_service, settings):
    async with AiaasClient(settings) as client:
        answer = await (await client.submit("llm", {}, task="chat", messages=QUESTION)).result(timeout=120)
        sampled = []
        for _ in range(2):  # one after the other: each runs alone
            handle = await client.submit("llm", {}, task="chat", messages=STORY,
                                         generation={"temperature": 0.9, "top_p": 0.95, "seed": 7, "max_tokens": 30})
            sampled.append((await handle.result(timeout=120)).outputs["text"])
        completion = await (await client.submit("llm", {"prompt": "The capital of France is"}, task="complete",
                                                generation={"max_tokens": 8})).result(timeout=120)
    assert answer.status == "ok" and "Paris" in answer.outputs["text"]
    assert sampled[0] == sampled[1] and sampled[0]
    assert completion.status == "ok" and completion.outputs["completion_tokens"] <= 8


async def test_a_cancelled_job_ends_at_once_with_the_text_so_far(llm_service, settings):
    async with AiaasClient(settings) as client:
        handle = await client.submit("llm", {}, task="chat", messages=STORY, generation={"max_tokens": 400})
        stream = handle.stream(120)
        first = await stream.__anext__()
        assert isinstance(first, str)
        await client.cancel(handle.job)
        rest = [piece async for piece in stream]
    result = rest[-1]
    assert isinstance(result, Result) and result.outputs["finish_reason"] == "cancelled"
    assert result.outputs["completion_tokens"] < 400
    assert first + "".join(p for p in rest[:-1] if isinstance(p, str)) == result.outputs["text"]


async def test_a_deadline_ends_a_running_generation(llm_service, settings):
    async with AiaasClient(settings) as client:
        handle = await client.submit("llm", {}, task="chat", messages=STORY, generation={"max_tokens": 400},
                                     deadline_s=3.0)
        result = await handle.result(timeout=120)
    assert result.status == "ok" and result.outputs["finish_reason"] == "deadline"
    assert 0 < result.outputs["completion_tokens"] < 400


async def test_hostile_prompts_get_error_results_and_the_service_goes_on(llm_service, settings):
    prefix = settings.topic_prefix
    bad = {
        "huge": {"messages": [{"role": "user", "content": "word " * 5000}]},
        "control": {"messages": [{"role": "user", "content": "hi\x00there"}]},
        "role": {"messages": [{"role": "wizard", "content": "hi"}]},
        "both": {"messages": QUESTION, "inputs": {"prompt": "x"}},
        "sampling": {"messages": QUESTION, "generation": {"temperature": -1}},
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for name, fields in bad.items():
            job = {"job_id": f"bad-{name}", "model": "llm", "task": "chat", "created_at": 0.0} | fields
            await producer.send_and_wait(f"{prefix}.llm.infer", msgpack.packb(job), key=job["job_id"].encode())
    finally:
        await producer.stop()
    async with AiaasClient(settings) as client:
        good = await (await client.submit("llm", {}, task="chat", messages=QUESTION)).result(timeout=120)
    assert good.status == "ok"
    results = {r.key.decode(): decode_result(r.value, 1 << 20)
               for r in await read_topic(settings, f"{prefix}.llm.results") if r.key.startswith(b"bad-")}
    assert set(results) == {f"bad-{name}" for name in bad}
    assert all(r.status == "error" and r.error.type == "InvalidJob" for r in results.values()), results
    assert "256" in results["bad-huge"].error.message and "U+0000" in results["bad-control"].error.message
    dead = [r.key for r in await read_topic(settings, f"{prefix}.dlq")]
    assert {f"bad-{name}".encode() for name in bad} <= set(dead)
    assert llm_service.alive


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_a_job_cut_off_by_kill_9_is_answered_once_after_the_restart(llm_registry, kafka_broker, tmp_path,
                                                                          delivery):
    """Chunks are progress and the final result the outcome, in both delivery modes: in exactly-once mode the
    chunks go out of the transactions (a read_committed reader streams them at once) and the final result in one."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = service_env_for(kafka_broker, prefix, llm_registry.root.parent,
                          {"AIAAS_LLM_CHUNK_INTERVAL_MS": "20", "AIAAS_LLM_DELIVERY": delivery,
                           "AIAAS_LLM_INSTANCE_ID": "llm-0"})
    settings = KafkaSettings(bootstrap_servers=kafka_broker, topic_prefix=prefix)
    service = ServiceProcess(env, Path(tmp_path) / "llm.log", model="llm").start(timeout=120)
    try:
        async with AiaasClient(settings) as client:
            handle = await client.submit("llm", {}, task="chat", messages=STORY,
                                         generation={"max_tokens": 120, "seed": 3})
            stream = handle.stream(120)
            assert isinstance(await stream.__anext__(), str)
            service.kill()
            service.start(timeout=120)
            pieces = [piece async for piece in stream]
        result = pieces[-1]
        assert isinstance(result, Result) and result.status == "ok"
        restarts = [p for p in pieces if isinstance(p, StreamRestart)]
        assert len(restarts) == 1  # the second run streamed from its start
        after = "".join(p for p in pieces[pieces.index(restarts[0]) + 1:-1] if isinstance(p, str))
        assert after == result.outputs["text"]
        await asyncio.sleep(1)
        records = await read_topic(settings, f"{prefix}.llm.results", isolation_level="read_committed")
        mine = [decode_result(r.value, 1 << 20) for r in records if r.key == handle.job_id.encode()]
        assert [r.status for r in mine if r.status != "chunk"] == ["ok"]
        runs = {r.chunk.run for r in mine if r.chunk is not None}
        assert len(runs) == 2  # both runs' chunks reached a read_committed reader
    finally:
        service.stop()
    if delivery == "exactly-once":
        assert "exactly-once as " in service.log_text()


async def test_a_tenant_cancels_on_its_own_new_cancel_topic_and_no_one_else_can(llm_service, settings):
    async with AiaasClient(settings) as client:
        handle = await client.submit("llm", {}, task="chat", messages=STORY, generation={"max_tokens": 1000},
                                     tenant="carol")
        received: list[tuple[float, object]] = []

        async def read() -> None:
            async for piece in handle.stream(120):
                received.append((time.monotonic(), piece))

        reader = asyncio.create_task(read())
        while not received:
            await asyncio.sleep(0.05)
        await client.cancel(handle.job_id, model="llm", tenant="dave")  # someone else's topic: ignored
        await client.cancel(handle.job_id, model="llm")  # the shared topic: not carol's either
        await asyncio.sleep(8)  # the service has found dave's new topic (it looks every 5 s) and read it
        generating_since = time.monotonic() - 1
        await client.cancel(handle.job)  # carol's topic, created just now: found, read from its start
        await asyncio.wait_for(reader, 120)
    result = received[-1][1]
    assert isinstance(result, Result) and result.outputs["finish_reason"] == "cancelled"
    assert result.outputs["completion_tokens"] < 1000
    assert any(isinstance(piece, str) for at, piece in received if at > generating_since)  # went on till carol's


async def test_a_fine_tuning_job_trains_an_adapter_the_running_service_swaps_to_without_a_failed_job(
        llm_registry, kafka_broker, tmp_path):
    """`aiaas train llm` on the built-in instruction set while chat jobs keep coming: progress events, an adapter
    version (the adapter alone, naming its base) that beats the base at the held-out task and is made production;
    the running service swaps to it between jobs (none fails), answers in the learned JSON shape, still serves the
    base to jobs pinned to it, and the training job's trace reaches the service's load of the adapter."""
    import json
    import shutil

    from aiaas.llm.adapters import ADAPTER_OF
    from aiaas.llm.instructions import instruction_split
    from aiaas.registry.store import Registry
    from aiaas.tracing.span_store import job_trace, load_spans

    home = Path(tmp_path) / "home"
    # This test's own registry (the versions it adds stay there), without the session registry's blob store.
    shutil.copytree(llm_registry.root, home / "registry", ignore=shutil.ignore_patterns(".blobs"))
    registry = Registry(home / "registry")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = service_env_for(kafka_broker, prefix, home, {"AIAAS_TRAINER_PROMOTE": "always"})
    settings = KafkaSettings(bootstrap_servers=kafka_broker, topic_prefix=prefix)
    service = ServiceProcess(env, Path(tmp_path) / "llm.log", model="llm").start(timeout=120)
    trainer = ServiceProcess(env, Path(tmp_path) / "trainer.log", "training", "llm").start(timeout=120)
    base = registry.resolve("llm", "production")
    _, held_out = instruction_split()
    try:
        async with AiaasClient(settings) as client:
            trained = asyncio.Event()

            async def steady_stream() -> list:
                handles = []
                while not trained.is_set():
                    handles.append(await client.submit("llm", {}, task="chat", messages=QUESTION,
                                                       generation={"max_tokens": 8}))
                    await asyncio.sleep(0.5)
                return handles

            stream = asyncio.create_task(steady_stream())
            job = await client.train("llm", {"max_steps": FINE_TUNING_STEPS, "seed": 0})
            events = [event async for event in job.events(timeout=600)]
            assert events[-1].status == "succeeded", events[-1]
            number = events[-1].outputs["version"]
            await asyncio.sleep(5)  # the stream goes on while the service loads the adapter and swaps
            trained.set()
            streamed = await asyncio.gather(*(h.result(timeout=300) for h in await stream))
            person = [{"role": "user", "content": held_out[1][0]}]  # a sentence form never trained on
            learned = await client.submit("llm", {}, task="chat", messages=person, generation={"max_tokens": 60})
            on_base = await client.submit("llm", {}, task="chat", messages=QUESTION, version=f"v{base.version}",
                                          generation={"max_tokens": 12})
            answered, plain = await learned.result(timeout=300), await on_base.result(timeout=300)
    finally:
        trainer.stop()
        service.stop()
    running = [e for e in events if e.status == "running"]
    assert running and running[-1].progress.tokens_per_s and running[-1].progress.metric_name == "eval_loss"
    version = registry.resolve("llm", str(number))
    assert version.params[ADAPTER_OF] == base.version and "production" in events[-1].outputs["aliases"]
    assert set(version.files) | {version.artifact} == {"adapter_model.safetensors", "adapter_config.json"}
    assert version.metrics["exact_match"] > version.metrics["base_exact_match"], version.metrics

    assert [r.status for r in streamed].count("ok") == len(streamed)  # none failed across the swap
    versions = [r.model_version for r in streamed]
    assert versions[0] == str(base.version) and versions[-1] == str(number), versions
    assert answered.status == "ok" and answered.model_version == str(number)
    assert set(json.loads(answered.outputs["text"])) == {"name", "age", "city", "job"}, answered.outputs["text"]
    assert plain.status == "ok" and plain.model_version == str(base.version)
    # One engine and one copy of the base weights for both: the adapter was loaded into the base's runtime.
    assert f"llm v{base.version}: adapter v{number} loaded" in service.log_text()

    names: set[str] = set()
    deadline = time.time() + 15
    while time.time() < deadline and f"load llm v{number}" not in names:  # spans are exported every 0.5 s
        names = {s.name for s in job_trace(load_spans(home / "spans"), job.job_id)}
        await asyncio.sleep(0.5)
    assert {"train llm", "register llm", f"load llm v{number}"} <= names, names
