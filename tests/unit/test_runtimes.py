"""Hot reload with fake runtimes: background load, swap between batches, pinned versions."""

import asyncio
import threading

import pytest

from aiaas.contract.codec import decode_result
from aiaas.contract.topics import ModelTopics
from aiaas.errors import ServiceMisconfigured, UnknownModelVersion
from aiaas.serving.runtimes import RuntimeSet
from aiaas.serving.worker import BatchWorker
from tests.fakes import RecordingSink, SumRuntime, job_record

TOPICS = ModelTopics.of("vision", "p")


class Versioned(SumRuntime):
    def __init__(self, version: str):
        super().__init__()
        self.version = version


def versions_of(sink) -> dict[str, str]:
    return {r.job_id: r.model_version for r in (decode_result(v, 1 << 20) for _, v, _, _ in sink.on(TOPICS.results))}


def make(load, aliases=None):
    runtimes = RuntimeSet(Versioned("1"), load=load, aliases=aliases or {"production": 1})
    sink = RecordingSink()
    worker = BatchWorker(runtimes, sink, topics=TOPICS, dlq_topic="p.dlq", group="g", max_message_bytes=1 << 20)
    return runtimes, worker, sink


async def test_a_promotion_loads_in_the_background_and_swaps_between_batches():
    release = threading.Event()

    def slow_load(version):
        release.wait(5)  # the load takes a while: batches must keep running meanwhile
        return Versioned(version)

    runtimes, worker, sink = make(slow_load)
    follow = asyncio.create_task(runtimes.follow({"production": 2}))
    await worker.handle([job_record(0, [1.0])])  # served by v1 while v2 loads
    release.set()
    await follow
    assert versions_of(sink) == {"job-0": "1"}
    await worker.handle([job_record(1, [1.0]), job_record(2, [1.0])])
    assert versions_of(sink) == {"job-0": "1", "job-1": "2", "job-2": "2"}
    assert worker.runtime.version == "2"


async def test_a_failed_load_keeps_the_old_version_serving():
    def broken(version):
        raise RuntimeError("artifact corrupted")

    runtimes, worker, sink = make(broken)
    await runtimes.follow({"production": 2})
    await worker.handle([job_record(0, [1.0])])
    assert versions_of(sink) == {"job-0": "1"}


async def test_a_version_the_settings_cannot_serve_is_logged_with_why_and_the_old_one_keeps_serving(caplog):
    def misconfigured(version):
        raise ServiceMisconfigured(f"text v{version} has no int8 encoder graph")

    runtimes, worker, sink = make(misconfigured)
    await runtimes.follow({"production": 2})
    await worker.handle([job_record(0, [1.0])])
    assert versions_of(sink) == {"job-0": "1"}
    (record,) = [r for r in caplog.records if "cannot serve" in r.getMessage()]
    assert record.getMessage() == "vision: cannot serve v2: text v2 has no int8 encoder graph; still serving v1"
    assert record.exc_info is None  # a reason, not a traceback


async def test_pinned_versions_load_on_first_use_run_in_their_own_model_call_and_are_kept():
    loads = []

    def load(version):
        loads.append(version)
        if version == "9":
            raise UnknownModelVersion("model 'vision' has no version or alias '9'")
        return Versioned(version)

    runtimes, worker, sink = make(load, {"production": 1, "staging": 3})
    await worker.handle([job_record(0, [1.0]), job_record(1, [2.0], model_version="staging"),
                         job_record(2, [3.0], model_version="v9"), job_record(3, [4.0], model_version="3")])
    got = {r.job_id: r for r in (decode_result(v, 1 << 20) for _, v, _, _ in sink.on(TOPICS.results))}
    assert (got["job-0"].model_version, got["job-1"].model_version, got["job-3"].model_version) == ("1", "3", "3")
    assert got["job-2"].status == "error" and got["job-2"].error.type == "UnknownModelVersion"
    assert got["job-1"].timings.batch_size == 2 and got["job-0"].timings.batch_size == 1  # one call per version
    await worker.handle([job_record(4, [1.0], model_version="staging")])
    assert sorted(loads) == ["3", "9"]  # v3 was kept, not loaded again


def test_an_unknown_alias_is_a_clear_error():
    runtimes = RuntimeSet(Versioned("1"), aliases={"production": 1})
    with pytest.raises(UnknownModelVersion, match="no version or alias 'canary'"):
        runtimes.route("canary")


async def test_a_rollback_before_the_swap_keeps_the_current_version():
    runtimes, worker, sink = make(lambda version: Versioned(version))
    await runtimes.follow({"production": 2})  # loaded, waiting for the next batch
    await runtimes.follow({"production": 1})  # rolled back before that batch
    await worker.handle([job_record(0, [1.0])])
    assert versions_of(sink) == {"job-0": "1"}


class Closable(Versioned):
    def __init__(self, version: str):
        super().__init__(version)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_version_let_go_of_is_closed_and_the_serving_one_never():
    loaded = {}

    def load(version):
        loaded[version] = Closable(version)
        return loaded[version]

    current = Closable("1")
    runtimes = RuntimeSet(current, load=load, aliases={"production": 1}, keep=2)
    runtimes.load_pinned("2")
    runtimes.load_pinned("3")  # three loaded, two kept: the oldest pinned one (2) goes; the serving one stays
    assert loaded["2"].closed and not loaded["3"].closed and not current.closed
    assert sorted(r.version for r in runtimes.loaded()) == ["1", "3"]


async def test_a_version_loaded_for_an_alias_that_moved_on_before_the_swap_is_closed():
    loaded = {}

    def load(version):
        loaded[version] = Closable(version)
        return loaded[version]

    runtimes = RuntimeSet(Closable("1"), load=load, aliases={"production": 1})
    await runtimes.follow({"production": 2})  # v2 loaded, waiting for the next swap
    await runtimes.follow({"production": 3})  # production moved on before it: v2 has no role left
    assert loaded["2"].closed and not loaded["3"].closed
    assert runtimes.swap_if_ready().version == "3"
    await runtimes.follow({"production": 1})  # back to v1 (still loaded): nothing closed, v3 kept loaded
    assert not loaded["3"].closed and runtimes.swap_if_ready().version == "1"
