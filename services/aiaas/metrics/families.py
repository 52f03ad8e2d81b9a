"""What every aiaas process exports besides its own families: the process (CPU, memory, open files), Python's
garbage collector, and on CUDA the device memory PyTorch holds; plus the buckets the latency histograms share."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "SIZE_BUCKETS", "new_registry", "CountersOf"]

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
"""Seconds: fine below a second, where a job's p50 and p99 lie, so the quantiles `aiaas top` and Prometheus'
`histogram_quantile` interpolate between buckets stay close; up to minutes for generation and training."""

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, float("inf"))
"""Jobs in one model call (`max_batch` is at most 4,096)."""

disable_created_metrics()  # a `_created` series beside every counter and histogram doubles what is scraped, for nothing


def new_registry() -> CollectorRegistry:
    """A registry of this process's own, with the process, platform, GC and CUDA collectors.

    Not the library's global one: tests run several services in one interpreter, and each must export only its own.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_CudaMemory())
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
