"""What every aiaas process exports besides its own families: the process (CPU, memory, open files), Python's
garbage collector (and how long each collection held the process: `pauses.py`), on CUDA the device memory PyTorch
holds, and on a host with NVIDIA's driver and NVML's Python bindings (`nvidia-ml-py`, in the `gpu` extra) each GPU's
memory and load and this process's share of the memory, whatever allocated it (ONNX Runtime's CUDA provider included);
plus the buckets the latency histograms share."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aiaas.metrics.pauses import GcPauses, watch_gc

__all__ = ["LATENCY_BUCKETS", "SIZE_BUCKETS", "new_registry", "CountersOf", "BatchHistogram"]

log = logging.getLogger("aiaas.metrics")

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
"""Seconds: fine below a second, where a job's p50 and p99 lie, so the quantiles `aiaas top` and Prometheus'
`histogram_quantile` interpolate between buckets stay close; up to minutes for generation and training."""

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, float("inf"))
"""Jobs in one model call (`max_batch` is at most 4,096)."""

disable_created_metrics()  # a `_created` series beside every counter and histogram doubles what is scraped, for nothing


def new_registry() -> CollectorRegistry:
    """A registry of this process's own, with the process, platform, GC, pause and CUDA collectors.

    Not the library's global one: tests run several services in one interpreter, and each must export only its own.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_CudaMemory())
    registry.register(_GpuDevices())
    registry.register(GcPauses())
    watch_gc()
    return registry


class CountersOf(Collector):
    """Counters read from an object's fields when scraped (e.g. the pipeline's own tallies): nothing is added on
    the hot path. `fields` maps each field to (metric name without `_total`, help)."""

    def __init__(self, read: Callable[[], object | None], fields: Mapping[str, tuple[str, str]],
                 labels: Mapping[str, str]) -> None:
        self._read, self._fields, self._labels = read, fields, dict(labels)

    def collect(self) -> Iterator[Metric]:
        """One counter family per field (absent while there is nothing to read)."""
        source = self._read()
        if source is None:
            return
        for field, (name, help_text) in self._fields.items():
            family = CounterMetricFamily(name, help_text, labels=list(self._labels))
            family.add_metric(list(self._labels.values()), float(getattr(source, field)))
            yield family


class BatchHistogram(Collector):
    """A histogram fed a batch of observations at once (`observe_many`), for the per-job latencies.

    prometheus-client's Histogram takes one observation per call, at a few microseconds each (a lock and a bucket
    search in Python): per job, that was a measurable share of a service's time at thousands of jobs a second. Here a
    batch's values are bucketed by numpy in one pass. It is exported as a standard histogram family.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, list(labelnames)
        self._bounds = np.asarray([b for b in buckets if b != float("inf")], dtype=np.float64)
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}  # counts per bucket (+Inf last), sum
        self._lock = threading.Lock()  # observed on the event loop, collected on the endpoint's thread
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float] | np.ndarray) -> None:
        """Add observations (one label set)."""
        if not len(values):
            return
        found = np.bincount(np.searchsorted(self._bounds, np.asarray(values, dtype=np.float64), side="left"),
                            minlength=len(self._bounds) + 1)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = (np.zeros(len(self._bounds) + 1, dtype=np.int64), [0.0])
            series[0][:] += found
            series[1][0] += float(np.sum(values))

    def collect(self) -> Iterator[Metric]:
        """One histogram family, cumulative buckets as Prometheus expects."""
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            snapshot = [(labels, counts.copy(), total[0]) for labels, (counts, total) in self._series.items()]
        # "+Inf", "0.005": as prometheus-client writes its own buckets
        bounds = [*(floatToGoString(float(b)) for b in self._bounds), "+Inf"]
        for labels, counts, total in snapshot:
            family.add_metric(list(labels), [(b, float(c)) for b, c in zip(bounds, np.cumsum(counts), strict=True)],
                              total)
        yield family


class _CudaMemory(Collector):
    """`aiaas_cuda_memory_bytes{device,kind}` (allocated, reserved), when this process uses PyTorch on CUDA.

    It never imports torch (Kafka code must not): it looks for a torch the model code already imported."""

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not cuda.is_available() or not cuda.is_initialized():
            return
        family = GaugeMetricFamily("aiaas_cuda_memory_bytes", "Device memory PyTorch holds, by device and kind.",
                                   labels=["device", "kind"])
        for device in range(cuda.device_count()):
            family.add_metric([str(device), "allocated"], float(cuda.memory_allocated(device)))
            family.add_metric([str(device), "reserved"], float(cuda.memory_reserved(device)))
        yield family


class _GpuDevices(Collector):
    """Per GPU, from NVML: `aiaas_gpu_memory_used_bytes`, `aiaas_gpu_memory_total_bytes`,
    `aiaas_gpu_utilization_ratio` (the share of the last sample period a kernel ran) and
    `aiaas_gpu_process_memory_bytes` (what this process holds there, as the driver counts it).

    Nothing where NVML's bindings or the driver are missing: the first scrape finds out, once. A value the device
    cannot give (utilization under MIG, say) is left out, not the others. `device` is NVML's index (nvidia-smi's
    order), which is CUDA's only where CUDA_VISIBLE_DEVICES does not reorder or hide devices."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def describe(self) -> Iterator[Metric]:
        return iter(())  # else the registry collects at once to learn the names; NVML opens at the first scrape

    def collect(self) -> Iterator[Metric]:
        nvml = self._open()
        if nvml is None:
            return
        names = (("memory_used_bytes", "Device memory in use on the GPU (every process)."),
                 ("memory_total_bytes", "Device memory of the GPU."),
                 ("utilization_ratio", "Share of the last sample period in which a kernel ran on the GPU."),
                 ("process_memory_bytes", "Device memory this process holds on the GPU."))
        families = [GaugeMetricFamily(f"aiaas_gpu_{name}", text, labels=["device"]) for name, text in names]
        try:
            devices = range(nvml.nvmlDeviceGetCount())
        except Exception as exc:  # noqa: BLE001 - a driver error must not fail the scrape of everything else
            log.debug("NVML read failed: %s", exc)
            return
        for index in devices:
            for family, value in zip(families, _device_values(nvml, index), strict=True):
                if value is not None:
                    family.add_metric([str(index)], value)
        yield from families

    def _open(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                nvml = importlib.import_module("pynvml")
                nvml.nvmlInit()
                self._nvml = nvml
            except Exception as exc:  # noqa: BLE001 - no bindings, no driver, no GPU: no GPU metrics
                log.debug("no GPU metrics (NVML: %s)", exc)
        return self._nvml


def _device_values(nvml: Any, index: int) -> tuple[float | None, ...]:
    """(memory used, memory total, utilization ratio, this process's memory) of GPU `index`; None for each one the
    device or its driver would not give."""
    def read(value: Callable[[Any], float | None]) -> float | None:
        try:
            return value(nvml.nvmlDeviceGetHandleByIndex(index))
        except Exception:  # noqa: BLE001 - not supported here (MIG, vGPU), or the device went away
            return None

    def mine(handle: Any) -> float | None:
        held = [p.usedGpuMemory for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return float(sum(held)) if held else None

    return (read(lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).used)),
            read(lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).total)),
            read(lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100),
            read(mine))
