"""Metrics without a broker: what a delivered batch counts, the endpoint and its probes, the target files, the
quantiles and rates `aiaas top` computes, the trainer's counts, and the top view drawn from a live endpoint."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from aiaas.cli.top import run_top
from aiaas.contract.dead_letters import Origin
from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import ModelFailure
from aiaas.metrics.drift import OutputDrift, ScoreBins, js_distance, output_profile
from aiaas.metrics.endpoint import MetricsEndpoint, close_endpoint, open_endpoint
from aiaas.metrics.fleet import FleetView, Scrape, quantile
from aiaas.metrics.probes import Health
from aiaas.metrics.serving import ServingMetrics
from aiaas.metrics.targets import Target, TargetFile, list_targets, targets_dir
from aiaas.metrics.training import TrainingMetrics
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from aiaas.settings import WorkerSettings
from tests.fakes import FailingRuntime, Record, RecordingSink, SumRuntime, job_record
from tests.unit.test_worker import TOPICS


def counted(metrics: ServingMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": metrics.model} | labels) or 0.0


def worker_with(metrics: ServingMetrics, runtime=None, retry=None) -> BatchWorker:
    return BatchWorker(runtime or SumRuntime(), RecordingSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                       max_message_bytes=1 << 20, retry=retry, metrics=metrics)


async def deliver(worker: BatchWorker, records) -> None:
    batch = await worker.run(records)
    await worker.publish(batch)
    worker.delivered(batch)


async def test_a_delivered_batch_counts_jobs_by_status_task_and_tenant_and_dead_letters_by_type():
    metrics = ServingMetrics("vision")
    garbage = Record("p.vision.infer", 0, 9, b"bad-1", b"\x93\x01\x02")
    tenants = [job_record(i, [1.0, 2.0], topic="p.vision.infer.alice") for i in range(3)]
    await deliver(worker_with(metrics), [job_record(7, [1.0], task="sum"), *tenants, garbage])

    assert counted(metrics, "aiaas_jobs_total", task="sum", status="ok", tenant="") == 1
    assert counted(metrics, "aiaas_jobs_total", task="", status="ok", tenant="alice") == 3
    assert counted(metrics, "aiaas_jobs_total", task="", status="error", tenant="") == 1
    assert counted(metrics, "aiaas_dead_letters_total", error_type="UndecodableMessage") == 1
    assert counted(metrics, "aiaas_batch_size_count") == 1 and counted(metrics, "aiaas_batch_size_sum") == 4
    assert counted(metrics, "aiaas_batch_model_seconds_count") == 1
    assert counted(metrics, "aiaas_job_duration_seconds_count") == 4  # the garbage has no job, so no created_at
    assert counted(metrics, "aiaas_job_queue_wait_seconds_count") == 4


async def test_a_retriable_failure_counts_a_retry_not_an_answer_and_the_last_attempt_a_dead_letter():
    metrics = ServingMetrics("vision")
    await deliver(worker_with(metrics, FailingRuntime(), RetryPolicy(2, 0.01, 0.01)), [job_record(1, [1.0])])
    assert counted(metrics, "aiaas_retries_total", error_type="ModelFailure") == 1
    assert counted(metrics, "aiaas_jobs_total", task="", status="error", tenant="") == 0

    last = job_record(1, [1.0], topic=TOPICS.retry)  # the second and last attempt
    last.headers = RetryPolicy(2).retry_headers(Origin(TOPICS.infer, 0, 1), ModelFailure("flaky"), 1, now=0.0)
    await deliver(worker_with(metrics, FailingRuntime(), RetryPolicy(2, 0.01, 0.01)), [last])
    assert counted(metrics, "aiaas_jobs_total", task="", status="error", tenant="") == 1
    assert counted(metrics, "aiaas_dead_letters_total", error_type="ModelFailure") == 1


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_endpoint_serves_metrics_and_probes_that_say_what_they_wait_for():
    metrics, health = ServingMetrics("vision"), Health("starting: loading the model", stuck_after_s=0.05)
    metrics.jobs.labels("vision", "", "ok", "").inc(3)
    endpoint = MetricsEndpoint(metrics.registry, host="127.0.0.1", port=0, alive=health.alive, ready=health.ready)
    endpoint.start()
    base = f"http://127.0.0.1:{endpoint.port}"
    try:
        status, content_type, body = get(base + "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert 'aiaas_jobs_total{model="vision",status="ok",task="",tenant=""} 3.0' in body
        assert "process_resident_memory_bytes" in body and "_created" not in body

        assert get(base + "/healthz")[0] == 200  # before the event loop runs (loading the model): alive
        assert get(base + "/readyz")[:3:2] == (503, "starting: loading the model\n")
        health.tick()
        health.waiting_for(None)
        assert get(base + "/readyz")[2] == "the broker has not answered for 15 s\n"
        health.broker_answered()
        assert get(base + "/readyz")[:3:2] == (200, "ok\n")
        time.sleep(0.1)  # no tick since: the loop is stuck
        status, _, body = get(base + "/healthz")
        assert status == 503 and "the event loop has not run" in body
        health.tick()
        health.stopping()
        assert get(base + "/readyz")[:3:2] == (503, "stopping: draining in-flight work\n")
        assert get(base + "/nothing")[0] == 404
    finally:
        endpoint.stop()


def test_a_process_announces_its_endpoint_in_a_target_file_that_goes_when_it_stops(tmp_path):
    metrics, health = ServingMetrics("vision"), Health()
    opened = open_endpoint(metrics.registry, health, WorkerSettings(metrics_port=0, metrics_host="0.0.0.0"),
                           home=tmp_path, role="service", model="vision", instance="replica-a")
    assert opened is not None
    try:
        (target,) = list_targets(tmp_path)
        assert target == Target(f"127.0.0.1:{opened[0].port}", "vision", "service", "replica-a", os.getpid())
        entry = json.loads(next(targets_dir(tmp_path).glob("*.json")).read_text())
        assert entry[0]["labels"]["aiaas_model"] == "vision"  # Prometheus' file_sd format
    finally:
        close_endpoint(opened)
    assert list_targets(tmp_path) == [] and not any(targets_dir(tmp_path).iterdir())
    assert open_endpoint(metrics.registry, health, WorkerSettings(metrics_port=-1), home=tmp_path, role="service",
                         model="vision", instance="x") is None


def test_a_target_file_of_a_process_that_is_gone_is_skipped_and_removed(tmp_path):
    dead = TargetFile(tmp_path, role="service", model="vision", instance="gone", host="127.0.0.1", port=1)
    dead.write()
    entry = json.loads(dead.path.read_text())
    entry[0]["labels"]["aiaas_pid"] = str(2**22 + 7)  # above Linux's pid_max: no such process
    dead.path.write_text(json.dumps(entry))
    (targets_dir(tmp_path) / "junk.json").write_text("{not json")
    assert list_targets(tmp_path) == []
    assert not dead.path.exists()


def test_quantiles_of_the_observations_between_two_scrapes_interpolate_inside_their_bucket():
    before = {0.01: 10.0, 0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.01: 10.0, 0.1: 60.0, 1.0: 110.0, float("inf"): 110.0}  # 50 in (0.01, 0.1], 50 in (0.1, 1]
    assert quantile(0.5, before, after) == pytest.approx(0.1)
    assert quantile(0.25, before, after) == pytest.approx(0.055)
    assert quantile(0.99, before, after) == pytest.approx(0.1 + 0.9 * 0.98)
    assert quantile(0.5, after, after) is None  # nothing new


def scrape_of(target: Target, at: float, jobs_ok: float, jobs_error: float, lag: float) -> Scrape:
    one = Scrape(target, at, ready=True)
    labels = (("model", target.model), ("status", "ok"), ("task", ""), ("tenant", ""))
    one.series[("aiaas_jobs_total", labels)] = jobs_ok
    one.series[("aiaas_jobs_total", (*labels[:1], ("status", "error"), *labels[2:]))] = jobs_error
    one.series[("aiaas_consumer_lag_records", (("model", target.model), ("partition", "0")))] = lag
    one.series[("aiaas_model_info", (("model", target.model), ("version", "2")))] = 1.0
    return one


def test_a_scrapes_histogram_buckets_can_be_read_for_one_label_value():
    import gc

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = ServingMetrics("vision").registry
    read = Scrape(Target("127.0.0.1:1", "vision", "service", "a", 1), 0.0)
    gc.collect()
    gc.disable()  # no collection between the exposition and the counts
    try:
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:  # as `scrape` stores them
                read.series[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        counts = {g: registry.get_sample_value("aiaas_gc_pause_seconds_count", {"generation": g}) or 0.0
                  for g in "012"}
    finally:
        gc.enable()
    assert read.buckets("aiaas_gc_pause_seconds", generation="2")[float("inf")] == counts["2"] >= 1
    assert read.buckets("aiaas_gc_pause_seconds")[float("inf")] == sum(counts.values())
    assert read.buckets("aiaas_gc_pause_seconds", generation="3") == {}


def test_the_fleet_view_adds_up_replicas_into_one_row_per_model_with_rates_over_its_window():
    a, b = (Target(f"127.0.0.1:{port}", "vision", "service", name, port) for port, name in ((1, "a"), (2, "b")))
    view = FleetView(window_s=10)
    view.add([scrape_of(a, 0.0, 0, 0, 5), scrape_of(b, 0.0, 100, 0, 0)])
    view.add([scrape_of(a, 2.0, 400, 10, 7), scrape_of(b, 2.0, 300, 0, 1)])
    (row,) = view.services()
    assert (row.model, row.replicas, row.ready, row.versions) == ("vision", 2, 2, "v2")
    assert row.jobs_per_s == pytest.approx((410 + 200) / 2) and row.errors_per_s == pytest.approx(5)
    assert row.lag == 8
    view.add([scrape_of(a, 3.0, 400, 10, 7)])  # b is gone
    assert view.services()[0].replicas == 1


def test_a_trainer_counts_its_jobs_epochs_and_last_metric():
    metrics = TrainingMetrics("vision")
    metrics.event("j1", "accepted", "alice", None)
    for epoch in (1, 2, 2, 3):
        metrics.event("j1", "running", "alice", TrainingProgress(epoch=epoch, epochs=3, loss=1 / epoch, metric=0.9,
                                                                 metric_name="accuracy"))
    assert metrics.registry.get_sample_value("aiaas_training_jobs_running", {"model": "vision"}) == 1
    metrics.event("j1", "succeeded", "alice", None)
    sample = metrics.registry.get_sample_value
    assert sample("aiaas_training_epochs_total", {"model": "vision"}) == 3
    assert sample("aiaas_training_metric", {"model": "vision", "metric": "accuracy"}) == 0.9
    assert sample("aiaas_training_jobs_total", {"model": "vision", "status": "succeeded", "tenant": "alice"}) == 1
    assert sample("aiaas_training_jobs_running", {"model": "vision"}) == 0


def test_top_draws_a_row_for_a_live_service_from_its_target_file(tmp_path: Path):
    metrics, health = ServingMetrics("vision"), Health()
    health.tick()
    health.waiting_for(None)
    health.broker_answered()
    metrics.version.labels("vision").info({"version": "3", "serving": "production"})
    opened = open_endpoint(metrics.registry, health, WorkerSettings(metrics_port=0), home=tmp_path, role="service",
                           model="vision", instance="a")
    console = Console(record=True, width=160)
    try:
        metrics.jobs.labels("vision", "", "ok", "").inc(5)
        assert run_top(tmp_path, [], interval_s=0.05, rounds=2, console=console) == 0
    finally:
        close_endpoint(opened)
    (line,) = [line for line in console.export_text().splitlines() if "vision" in line]
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    assert cells[:3] == ["vision", "1", "1"] and cells[10] == "v3"


def test_output_drift_keeps_a_window_and_measures_the_jensen_shannon_distance():
    drift = OutputDrift({"0": 0.5, "1": 0.5}, window=4)
    assert drift.distance() is None
    for category in "0101":
        drift.add(category)
    assert drift.distance() == pytest.approx(0.0)
    for category in "2222":  # the window now holds only what the reference never saw
        drift.add(category)
    assert len(drift) == 4 and drift.shares() == {"2": 1.0}
    assert drift.distance() == pytest.approx(1.0)
    assert js_distance({"a": 1.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.5579, abs=1e-4)
    many = OutputDrift({}, window=5)  # batches larger and smaller than the window keep the counts exact
    for batch in (["a", "b", "c"], ["d"] * 7, ["e", "f"], ["a"]):
        many.add_many(batch)
    assert many.shares() == {"d": 0.4, "e": 0.2, "f": 0.2, "a": 0.2}


def test_a_score_bin_is_named_by_its_bounds_and_a_profile_is_each_categorys_share():
    bins = ScoreBins((0.25, 0.5, 1.0))
    assert [bins(s) for s in (-3.0, 0.25, 0.49, 0.5, 1.0, 7.0)] == [
        "[-inf, 0.25)", "[0.25, 0.5)", "[0.25, 0.5)", "[0.5, 1)", "[1, inf)", "[1, inf)"]
    answers = [{"labels": ["a", "b"]}, {"labels": ["a"]}, {}, {"labels": ["c"]}]
    profile = output_profile(lambda answer: answer.get("labels", []), answers)
    assert profile == {"a": 0.5, "b": 0.25, "c": 0.25} and list(profile) == ["a", "b", "c"]
    assert output_profile(lambda answer: [], answers) == {}


class CategorisedSum(SumRuntime):
    output_profile = {"small": 0.5, "big": 0.5}

    @staticmethod
    def output_categories(outputs):
        return ["big" if outputs["sum"] > 10 else "small"]


async def test_answers_are_watched_per_version_and_their_drift_is_exported_once_sampled():
    metrics = ServingMetrics("vision")
    await deliver(worker_with(metrics, CategorisedSum()), [job_record(i, [float(i)]) for i in range(4)])
    metrics.sample_drift()
    sample = metrics.registry.get_sample_value
    assert sample("aiaas_model_output_share", {"model": "vision", "version": "7", "category": "small"}) == 1.0
    assert sample("aiaas_model_output_drift", {"model": "vision", "version": "7"}) == pytest.approx(
        js_distance({"small": 1.0}, CategorisedSum.output_profile))


def test_a_batch_histogram_exports_what_prometheus_clients_histogram_would_for_the_same_values():
    from prometheus_client import CollectorRegistry, Histogram

    from aiaas.metrics.families import LATENCY_BUCKETS, BatchHistogram

    values = [0.0, 0.001, 0.0011, 0.004, 0.02, 0.2, 1.0, 7.0, 500.0]  # on bounds, between them, past the last
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("h_seconds", "h", ["model"], LATENCY_BUCKETS, ours)
    batch.observe_many(("m",), values[:4])
    batch.observe_many(("m",), values[4:])
    reference = Histogram("h_seconds", "h", ["model"], registry=theirs, buckets=LATENCY_BUCKETS)
    for value in values:
        reference.labels("m").observe(value)

    def samples(registry):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}

    got, expected = samples(ours), samples(theirs)
    assert got.keys() == expected.keys() and len(got) == len(LATENCY_BUCKETS) + 2
    assert all(got[key] == pytest.approx(value) for key, value in expected.items())


async def test_a_job_the_runtime_refused_keeps_its_client_chosen_task_out_of_the_labels():
    metrics = ServingMetrics("vision")
    wrong = job_record(3, [1.0], task="t" * 60)
    wrong.value = wrong.value.replace(b"\xa1x", b"\xa1y")  # input named y: InvalidJob
    await deliver(worker_with(metrics), [wrong])
    assert counted(metrics, "aiaas_jobs_total", task="", status="error", tenant="") == 1
    assert counted(metrics, "aiaas_dead_letters_total", error_type="InvalidJob") == 1


def test_a_metrics_port_already_taken_is_a_configuration_error_that_says_what_to_set(tmp_path):
    import socket

    from aiaas.errors import ServiceMisconfigured

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(ServiceMisconfigured, match="METRICS_PORT"):
            open_endpoint(ServingMetrics("vision").registry, Health(), WorkerSettings(
                metrics_port=taken.getsockname()[1]), home=tmp_path, role="service", model="vision", instance="a")
    finally:
        taken.close()


class RebalancingConsumer:
    """Loses partition 1 while the sampler awaits a position: aiokafka would then raise for it."""

    def __init__(self) -> None:
        from aiokafka import TopicPartition

        self.parts = {TopicPartition("p.vision.infer", 0), TopicPartition("p.vision.infer", 1)}

    def assignment(self):
        return set(self.parts)

    def paused(self):
        return set()

    def _check(self, tp):
        assert tp in self.parts, "Partition is not assigned"

    def last_stable_offset(self, tp):
        self._check(tp)
        return 10

    def highwater(self, tp):
        self._check(tp)
        return 10

    async def position(self, tp):
        self._check(tp)
        self.parts = {p for p in self.parts if p.partition == 0}  # the rebalance ends meanwhile
        return 7


class Pipeline:
    stats, assigned, in_flight = None, True, (0, 0)

    def next_offsets(self):
        return {}


class Producer:
    class client:  # noqa: N801 - the attribute name aiokafka's producer has
        @staticmethod
        async def force_metadata_update():
            return True


async def test_the_sampler_survives_a_rebalance_during_a_sample_and_keeps_the_process_alive():
    import asyncio

    from aiaas.serving.monitor import ServiceMonitor
    from aiaas.serving.runtimes import RuntimeSet

    monitor = ServiceMonitor("vision")
    sampling = asyncio.create_task(monitor.sample_forever(RebalancingConsumer(), Producer(), Pipeline(),
                                                          RuntimeSet(SumRuntime())))
    await asyncio.sleep(1.5)
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    lag = monitor.metrics.registry.get_sample_value
    assert lag("aiaas_consumer_lag_records", {"model": "vision", "topic": "p.vision.infer", "partition": "0"}) == 3
    assert lag("aiaas_consumer_lag_records", {"model": "vision", "topic": "p.vision.infer", "partition": "1"}) is None
    assert monitor.health.alive() is None and monitor.health.ready() is None


class FakeNvml:
    """NVML's bindings as `pynvml` answers on a host with two GPUs, this process holding memory on the second."""

    class NVMLError(Exception):
        pass

    def __init__(self, *, fail_init: bool = False, mig: bool = False) -> None:
        self.fail_init, self.mig = fail_init, mig
        self.inits = 0

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.inits += 1
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int):  # noqa: N802
        return type("Memory", (), {"used": 1_000 * (handle + 1), "total": 80_000})()

    def nvmlDeviceGetUtilizationRates(self, handle: int):  # noqa: N802
        if self.mig:
            raise self.NVMLError("Not Supported")
        return type("Utilization", (), {"gpu": 40 + handle, "memory": 5})()

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:  # noqa: N802
        process = type("Process", (), {})
        ours, other = process(), process()
        ours.pid, ours.usedGpuMemory = os.getpid(), 700
        other.pid, other.usedGpuMemory = os.getpid() + 1, 300
        return [other, ours] if handle == 1 else [other]


def test_gpu_memory_and_load_come_from_nvml_and_nothing_without_it(monkeypatch):
    from aiaas.metrics.families import new_registry

    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = new_registry()
    assert nvml.inits == 0  # opened at the first scrape, not when the registry is made
    sample = registry.get_sample_value
    assert sample("aiaas_gpu_memory_used_bytes", {"device": "1"}) == 2_000
    assert sample("aiaas_gpu_memory_total_bytes", {"device": "0"}) == 80_000
    assert sample("aiaas_gpu_utilization_ratio", {"device": "1"}) == pytest.approx(0.41)
    assert sample("aiaas_gpu_process_memory_bytes", {"device": "1"}) == 700  # whatever allocated it
    assert sample("aiaas_gpu_process_memory_bytes", {"device": "0"}) is None  # holds nothing there
    registry.get_sample_value("aiaas_gpu_memory_used_bytes", {"device": "0"})
    assert nvml.inits == 1  # opened once, not per scrape

    mig = FakeNvml(mig=True)  # a value the device will not give is left out, not the others
    monkeypatch.setitem(sys.modules, "pynvml", mig)
    registry = new_registry()
    assert registry.get_sample_value("aiaas_gpu_utilization_ratio", {"device": "0"}) is None
    assert registry.get_sample_value("aiaas_gpu_memory_used_bytes", {"device": "0"}) == 1_000

    absent = FakeNvml(fail_init=True)  # bindings installed, no driver: no GPU series, the scrape goes on
    monkeypatch.setitem(sys.modules, "pynvml", absent)
    registry = new_registry()
    assert registry.get_sample_value("aiaas_gpu_memory_total_bytes", {"device": "0"}) is None
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    registry.get_sample_value("aiaas_gpu_memory_total_bytes", {"device": "0"})
    assert absent.inits == 1


def test_on_a_gpu_the_process_memory_of_onnx_runtimes_cuda_provider_is_exported(vision_registry):
    import onnxruntime as ort

    from aiaas.metrics.families import new_registry
    from aiaas.vision.runtime import VisionRuntime

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider in this ONNX Runtime (CPU machine; install aiaas[gpu] on a GPU host)")
    pynvml = pytest.importorskip("pynvml", reason="NVML's bindings (nvidia-ml-py, in aiaas[gpu]) are not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML cannot open the driver: {exc}")
    runtime = VisionRuntime.from_registry(vision_registry, providers="cuda")
    assert runtime.providers[0] == "CUDAExecutionProvider"
    registry = new_registry()
    assert registry.get_sample_value("aiaas_gpu_memory_total_bytes", {"device": "0"}) > 0
    devices = range(pynvml.nvmlDeviceGetCount())
    pids = {p.pid for d in devices for p in pynvml.nvmlDeviceGetComputeRunningProcesses(
        pynvml.nvmlDeviceGetHandleByIndex(d))}
    if os.getpid() not in pids:
        pytest.skip(f"NVML lists pids {sorted(pids)}, not this process's {os.getpid()} (a container hiding host pids)")
    held = [registry.get_sample_value("aiaas_gpu_process_memory_bytes", {"device": str(d)}) for d in devices]
    assert any(held), held


def test_every_garbage_collection_is_timed_by_generation():
    import gc

    registry = ServingMetrics("vision").registry

    def collections(generation: str) -> float:
        return registry.get_sample_value("aiaas_gc_pause_seconds_count", {"generation": generation}) or 0.0

    gc.disable()  # only the collections asked for here
    try:
        garbage = [[i] for i in range(200_000)]  # something for the full collection to walk
        before = collections("2")
        took_before = registry.get_sample_value("aiaas_gc_pause_seconds_sum", {"generation": "2"}) or 0.0
        cpu_before = registry.get_sample_value("aiaas_gc_cpu_seconds_sum", {"generation": "2"}) or 0.0
        gc.collect()
        del garbage
        assert collections("2") == before + 1
        assert (registry.get_sample_value("aiaas_gc_pause_seconds_sum", {"generation": "2"}) or 0.0) > took_before
        ServingMetrics("text")  # a second registry in the process: still one hook, each collection counted once
        gc.collect()
        assert collections("2") == before + 2
        assert registry.get_sample_value("aiaas_gc_cpu_seconds_count", {"generation": "2"}) == before + 2
        assert (registry.get_sample_value("aiaas_gc_cpu_seconds_sum", {"generation": "2"}) or 0.0) > cpu_before
    finally:
        gc.enable()


def test_a_collection_that_waited_for_a_core_shows_less_cpu_than_wall_time(monkeypatch):
    import gc

    from aiaas.metrics import pauses

    registry = ServingMetrics("vision").registry

    def counted(name: str, le: str) -> float:
        return registry.get_sample_value(f"{name}_bucket", {"generation": "0", "le": le}) or 0.0

    before = {name: (counted(name, "0.002"), counted(name, "0.05")) for name in ("aiaas_gc_pause_seconds",
                                                                                  "aiaas_gc_cpu_seconds")}
    clocks = {"wall": 100.0, "cpu": 7.0}
    monkeypatch.setattr(pauses, "_wall_clock", lambda: clocks["wall"])
    monkeypatch.setattr(pauses, "_cpu_clock", lambda: clocks["cpu"])
    gc.disable()  # no real collection on the fake clocks
    try:
        pauses._on_gc("start", {"generation": 0})
        clocks["wall"] += 0.030  # 30 ms on the wall clock, of which the thread ran 1 ms: it waited for a core
        clocks["cpu"] += 0.001
        pauses._on_gc("stop", {"generation": 0})
    finally:
        gc.enable()
    wall_short, wall_long = before["aiaas_gc_pause_seconds"]
    cpu_short, cpu_long = before["aiaas_gc_cpu_seconds"]
    assert (counted("aiaas_gc_pause_seconds", "0.002"), counted("aiaas_gc_pause_seconds", "0.05")) == (
        wall_short, wall_long + 1)
    assert (counted("aiaas_gc_cpu_seconds", "0.002"), counted("aiaas_gc_cpu_seconds", "0.05")) == (
        cpu_short + 1, cpu_long + 1)


async def test_the_event_loop_lag_shows_a_loop_held_by_synchronous_work():
    import asyncio

    from aiaas.metrics.pauses import watch_loop_lag

    registry = ServingMetrics("vision").registry

    def lags_over(seconds: str) -> float:
        below = registry.get_sample_value("aiaas_event_loop_lag_seconds_bucket", {"le": seconds}) or 0.0
        return (registry.get_sample_value("aiaas_event_loop_lag_seconds_count") or 0.0) - below

    held_before = lags_over("0.1")
    lag_before = registry.get_sample_value("aiaas_event_loop_lag_seconds_sum") or 0.0
    sampling = asyncio.create_task(watch_loop_lag(0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.25)  # a synchronous step holds the loop
    await asyncio.sleep(0.05)
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    assert lags_over("0.1") >= held_before + 1  # the sleep that ended late
    assert (registry.get_sample_value("aiaas_event_loop_lag_seconds_sum") or 0.0) >= lag_before + 0.2

