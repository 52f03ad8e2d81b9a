"""Runtime ceiling: the model runtime alone, on in-memory prepared batches (no Kafka, no envelope).

For each batch size the jobs are prepared once (`runtime.prepare`, not timed); then
`runtime.infer(items)` — the exact call the service makes per batch, outputs built — is timed
after a warm-up call, repeated for a time budget (1 s per size, spread over 3 interleaved
rounds), and the median is reported as ms per batch and items/s. Outputs come back as numpy arrays
(ONNX Runtime copies them to the host, PyTorch is `.cpu()`-ed), so on a GPU the timer also
covers the device work: every call ends synchronised.

Backends: ONNX Runtime for all (what the services serve); PyTorch for text (`backend="torch"`,
the service's alternative) and for the vision CNN (DigitsCNN with the version's weights.npz).

`RuntimeBursts` measures the same (ONNX Runtime, the sweep's best batch size or the service's max_batch,
whichever is larger) once more as one of the
consumers of bench/run.py's rounds of alternating bursts: the sweep runs minutes before the services'
bursts, and on a VM whose speed drifts by up to 2× the ratio to it would compare different machines.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiaas.registry.store import Registry
from aiaas.text.settings import TextSettings

from .compute import ComputeShare, compute_share
from .load import Burst
from .workloads import Payload, as_jobs, load_runtime, payloads, settings_class

__all__ = ["CeilingPoint", "RuntimeCeiling", "RuntimeBursts", "batch_sizes", "measure", "runtime_ceilings"]


@dataclass
class CeilingPoint:
    """One batch size: median time of one `infer` call."""

    batch: int
    ms_per_batch: float
    repeats: int

    @property
    def items_per_s(self) -> float:
        """Throughput at this batch size."""
        return self.batch / (self.ms_per_batch / 1000)


@dataclass
class RuntimeCeiling:
    """One backend of one model type over the batch sizes."""

    model: str
    backend: str
    points: list[CeilingPoint] = field(default_factory=list)
    note: str = ""
    compute: ComputeShare | None = None
    """The served backend at its best batch size against this CPU's fp32 matmul rate (compute.py)."""

    @property
    def best(self) -> CeilingPoint | None:
        """The batch size with the most items/s."""
        return max(self.points, key=lambda p: p.items_per_s, default=None)

    def at(self, batch: int) -> CeilingPoint | None:
        """The largest measured batch size not above `batch`."""
        below = [p for p in self.points if p.batch <= batch]
        return max(below, key=lambda p: p.batch, default=None)


def batch_sizes(model: str, backend: str, quick: bool) -> list[int]:
    """1, 2, 4, … 256 (text: up to 128 on ONNX Runtime, 64 on PyTorch; --quick: a few)."""
    top = {"text": 64 if backend == "torch" else 128}.get(model, 256)
    sizes = [2**i for i in range(9) if 2**i <= top]
    return [s for s in sizes if s in (1, 8, 64)] if quick else sizes


def measure(infer: Callable[[Sequence[Any]], Any], items: Sequence[Any], sizes: list[int], budget_s: float,
            rounds: int = 3) -> list[CeilingPoint]:
    """Median ms of `infer(items[:b])` for every size b.

    The sizes are measured in `rounds` interleaved rounds (each: one warm-up call, then calls
    for budget_s / rounds, at least one), so a burst of other work on the machine lands on
    several sizes rather than spoiling one.
    """
    samples: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            batch = list(items[:size])
            infer(batch)
            deadline = time.perf_counter() + budget_s / rounds
            while True:  # at least one timed call per round
                t0 = time.perf_counter()
                infer(batch)
                t1 = time.perf_counter()
                samples[size].append((t1 - t0) * 1000)
                if t1 >= deadline:
                    break
    return [CeilingPoint(size, statistics.median(samples[size]), len(samples[size])) for size in sizes]


def runtime_ceilings(model: str, registry: Registry, *, quick: bool,
                     log: Callable[[str], None] = print) -> list[RuntimeCeiling]:
    """Every backend of `model`: ONNX Runtime first (the served one), then PyTorch where there is one."""
    budget = 0.1 if quick else 1.0
    largest = max(batch_sizes(model, "onnx", quick))
    jobs = as_jobs(model, payloads(model, largest, registry, seed=1))
    results = []
    backends = ["onnx", "torch"] if model in ("vision", "text") else ["onnx"]
    for backend in backends:
        sizes = batch_sizes(model, backend, quick)
        try:
            infer, items, note = _backend(model, backend, registry, jobs)
        except Exception as exc:  # an optional backend that cannot load is reported, not fatal
            if backend == "onnx":
                raise
            results.append(RuntimeCeiling(model, backend, note=f"not measured: {type(exc).__name__}: {exc}"))
            log(f"  runtime {model}/{backend}: not measured ({exc})")
            continue
        ceiling = RuntimeCeiling(model, backend, measure(infer, items, sizes, budget), note)
        best = ceiling.best
        log(f"  runtime {model}/{backend}: best {best.items_per_s:,.0f} items/s at batch {best.batch} "
            f"({best.ms_per_batch:.2f} ms/batch)")
        if backend == "onnx":
            ceiling.compute = _compute_share(model, registry, infer, items[: best.batch], quick, log)
        results.append(ceiling)
    return results


def _compute_share(model: str, registry: Registry, infer: Callable, items: list, quick: bool,
                   log: Callable[[str], None]) -> ComputeShare | None:
    """The served runtime against the CPU's fp32 matmul rate; None for an int8 graph or where it cannot be counted."""
    if model == "text" and TextSettings().precision != "fp32":
        log("  compute share: not measured for the int8 text graph (its products are int8, the rate is fp32's)")
        return None
    try:
        share = compute_share(model, registry, infer, items, rounds=2 if quick else 5, budget_s=0.1 if quick else 0.4)
    except Exception as exc:  # noqa: BLE001 - a missing counter must not lose the sweep
        log(f"  compute share of {model}: not measured ({type(exc).__name__}: {exc})")
        return None
    log(f"  compute share of {model}: {share.flops_per_item / 1e6:.3f} MFLOP/item, runtime at {share.share:.0%} of "
        f"the CPU's fp32 matmul rate ({share.matmul_gflops:.0f} GFLOP/s), products {share.product_share:.0%} of its "
        f"kernel time: {share.headroom:.2f}x as fast with the products at that rate")
    return share


def _backend(model: str, backend: str, registry: Registry, jobs: list) -> tuple[Callable, list, str]:
    """(infer, prepared items, note) for one backend."""
    if model == "vision" and backend == "torch":
        return _vision_torch(registry, jobs)
    kwargs = {"backend": backend} if model == "text" else {}
    runtime = load_runtime(model, registry, **kwargs)
    items = [runtime.prepare(job) for job in jobs]
    note = "aiaas runtime `infer` (outputs built)"
    if model == "recsys":
        note += "; recommend for known users (collaborative route, one session run per batch)"
    if model == "text":
        note += (f"; one sentence per job, length groups as served (a group ends where joining it would pad more "
                 f"than one call costs: {runtime.limits.call_overhead_tokens} token slots, "
                 f"{'set' if TextSettings().call_overhead_tokens is not None else 'measured on load'})")
        if backend == "onnx":
            note += f"; {TextSettings().precision} graph"
    return runtime.infer, items, note


def _vision_torch(registry: Registry, jobs: list) -> tuple[Callable, list, str]:
    """DigitsCNN in PyTorch with the production version's weights.npz; the same outputs as the ONNX runtime."""
    import torch

    from aiaas.contract.envelopes import Tensor, stack_tensors
    from aiaas.vision.data import IMAGE_SHAPE
    from aiaas.vision.model import DigitsCNN

    version = registry.resolve("vision", "production")
    weights = np.load(io.BytesIO(registry.load_companions(version)["weights.npz"]))
    model = DigitsCNN()
    model.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files})
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    items = [load_runtime("vision", registry).prepare(job) for job in jobs]  # the served input checks

    def infer(batch: Sequence[Tensor]) -> list[dict]:
        images = stack_tensors(batch, IMAGE_SHAPE).astype(np.float32)[:, None]
        with torch.inference_mode():
            probabilities = model(torch.from_numpy(images).to(device)).cpu().numpy()
        labels = probabilities.argmax(axis=1)
        return [{"label": int(label), "probabilities": Tensor.from_numpy(row)}
                for label, row in zip(labels, probabilities, strict=True)]

    threads = torch.get_num_threads()
    return infer, items, f"DigitsCNN in PyTorch {torch.__version__} ({device}, {threads} threads), outputs as served"


class RuntimeBursts:
    """The runtime ceiling as a consumer of `load.saturate`'s rounds: a burst is calls of the served runtime's
    `infer` on one prepared batch (as `measure` times them) for `seconds`, whatever N the round asks for (no
    burst-size cap applies, none is too short), run in a worker thread of this process while the other
    consumers idle. No Kafka: `start` and `stop` do nothing.

    With the service set to several model instances (AIAAS_<MODEL>_MODEL_INSTANCES), the runtime runs as the
    service runs it: that many threads, each calling `infer` on its own batch, on a runtime whose session has the
    service's intra-op threads per instance."""

    name = "runtime alone"

    def __init__(self, model: str, registry: Registry, batch: int, seconds: float) -> None:
        self.batch, self.seconds = batch, seconds
        jobs = as_jobs(model, payloads(model, batch, registry, seed=1))
        served = settings_class(model)()
        self.instances = served.model_instances
        if self.instances == 1:
            self._infer, self._items, _ = _backend(model, "onnx", registry, jobs)  # as the sweep measures it
        else:
            runtime = load_runtime(model, registry, intra_op_threads=served.session_threads())
            self._infer, self._items = runtime.infer, [runtime.prepare(job) for job in jobs]

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    async def burst(self, jobs: Sequence[Payload]) -> Burst:
        """Whole batches for `seconds` (at least one); the payloads are not used (the batch is prepared)."""

        def run() -> tuple[int, float]:
            self._infer(self._items)  # warm: the first call after idling pays for waking the thread pool
            started = time.perf_counter()
            deadline, calls = started + self.seconds, 0
            while True:
                self._infer(self._items)
                calls += 1
                if (now := time.perf_counter()) >= deadline:
                    return calls, now - started

        if self.instances == 1:
            calls, seconds = await asyncio.to_thread(run)
        else:  # every instance's thread at once; the burst lasts until the last one is done
            started = time.perf_counter()
            done = await asyncio.gather(*(asyncio.to_thread(run) for _ in range(self.instances)))
            calls, seconds = sum(c for c, _ in done), time.perf_counter() - started
        return Burst(calls * self.batch, seconds, seconds, float(self.batch))
