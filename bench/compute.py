"""How close the runtime runs to this CPU's arithmetic: the model's FLOPs per item against the measured fp32
matrix-product rate of the machine.

A runtime ceiling says how fast the model runs; this says how fast it *could* run here. When the
runtime's best batch already runs its matrix products near the machine's rate, no serving layer can
go faster with that model at that precision *making the same calls*: `items/s at the matmul rate` is the
most any consumer gets, and divided by the naive consumer's jobs/s it is the most `service / naive` can be.
The FLOPs are those of the calls as made, padding included: a serving layer that pads less (text's length
groups) does fewer of them, which this bound does not see.

- **FLOPs per item**: matrix products and convolutions only (2 per multiply-add), counted by PyTorch's
  `FlopCounterMode` on the model's PyTorch twin fed what the served runtime computes: text in the
  service's length groups and their padding (`embed_rows`), vision the CNN on the batch. Recsys
  `recommend` has one product, a user's vector against every item's: 2 · dim · n_items, from the
  version's recorded dim and its item count.
- **matmul rate**: fp32 `A @ B` on every core, the best of ONNX Runtime (a one-MatMul graph on the CPU
  provider: the kernels the served graphs run), numpy (its BLAS) and PyTorch, at a square 1024 product
  and at the text encoder's feed-forward shape ([32·16 tokens, 384] @ [384, 1536]); median of repeated
  products after a warm-up.
- **headroom**: if the products ran at the matmul rate and the rest of the runtime's time stayed as it is,
  the runtime would be `1 / ((1 − product share) + runtime rate / matmul rate)` times as fast; the product
  share is that of ONNX Runtime's kernel time in a profile of the served runtime at the same batch size.
- **share**: the served runtime's `infer` at the sweep's best batch size and the matmul rate, timed in
  alternation over a few rounds right after the sweep; the median of each round's own ratio, so both
  sides see the same seconds of a VM whose speed drifts.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiaas.contract.envelopes import Tensor, stack_tensors
from aiaas.registry.store import Registry
from aiaas.serving.length_groups import length_groups

from .workloads import as_jobs, load_runtime, payloads

__all__ = ["MatmulRate", "ComputeShare", "compute_share", "matmul_rate", "flops_per_item", "product_time_share",
           "PRODUCT_OPS"]

PRODUCT_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "GRU"})
"""ONNX Runtime kernels (CPU provider) that are matrix products or convolutions."""

SHAPES = {"square 1024": (1024, 1024, 1024), "text FFN": (32 * 16, 384, 1536)}
"""Name → (m, k, n) of the timed products."""


@dataclass(frozen=True)
class MatmulRate:
    """This CPU's fp32 matrix-product rate: the best library and shape."""

    gflops: float
    how: str
    """Which library at which shape gave it, e.g. "numpy, square 1024"."""


@dataclass
class ComputeShare:
    """The served runtime at one batch size against the machine's matmul rate, round by round."""

    model: str
    batch: int
    flops_per_item: float
    runtime_gflops: list[float] = field(default_factory=list)
    matmul: list[MatmulRate] = field(default_factory=list)
    product_share: float | None = None
    """Share of the session's kernel time spent in PRODUCT_OPS (an ONNX Runtime profile at this batch size)."""

    @property
    def runtime_gflops_median(self) -> float:
        """The runtime's rate: median over the rounds."""
        return statistics.median(self.runtime_gflops)

    @property
    def matmul_gflops(self) -> float:
        """The machine's fp32 matmul rate: median over the rounds."""
        return statistics.median(m.gflops for m in self.matmul)

    @property
    def share(self) -> float:
        """Runtime GFLOP/s / matmul GFLOP/s: the median of each round's own ratio."""
        return statistics.median(r / m.gflops for r, m in zip(self.runtime_gflops, self.matmul, strict=True))

    @property
    def items_per_s_at_matmul_rate(self) -> float:
        """Items/s of a runtime that ran every product at the machine's rate and nothing else: the loosest bound."""
        return self.matmul_gflops * 1e9 / self.flops_per_item

    @property
    def headroom(self) -> float | None:
        """How many times faster the runtime would be if its products ran at the machine's matmul rate and the rest
        of its time stayed as measured; None without a profile. Both sides measured in the same rounds.

        An upper bound: the rest is taken as the runtime's time × (1 − product share of kernel time), which is at
        most what it is (Python and session overhead fall outside the kernels). Per round, then the median; at least
        1 (products that already beat the measured matmul rate leave no headroom, not a slow-down)."""
        if self.product_share is None:
            return None
        return max(1.0, statistics.median(1 / ((1 - self.product_share) + runtime / matmul.gflops)
                                          for runtime, matmul in zip(self.runtime_gflops, self.matmul, strict=True)))


def compute_share(model: str, registry: Registry, infer: Callable[[Sequence[Any]], Any], items: Sequence[Any],
                  rounds: int = 5, budget_s: float = 0.4) -> ComputeShare:
    """`infer` on `items` (one batch) and the matmul rate, alternating for `rounds` rounds of ~2 × budget_s."""
    result = ComputeShare(model, len(items), flops_per_item(model, registry, len(items)),
                          product_share=product_time_share(model, registry, len(items)))
    for _ in range(rounds):
        seconds = _median_seconds(lambda: infer(items), budget_s)
        result.runtime_gflops.append(result.flops_per_item * len(items) / seconds / 1e9)
        result.matmul.append(matmul_rate(budget_s))
    return result


def matmul_rate(budget_s: float = 1.0) -> MatmulRate:
    """The best median GFLOP/s over ONNX Runtime, numpy and PyTorch and the shapes in SHAPES (all cores)."""
    import torch

    rng = np.random.default_rng(0)
    best = MatmulRate(0.0, "")
    for shape_name, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        session = _one_matmul_session(b)
        # Each product is timed within this iteration, so its lambda sees this iteration's arrays.
        products = (("ONNX Runtime", lambda: session.run(None, {"a": a})),  # noqa: B023
                    ("numpy", lambda: a @ b),  # noqa: B023
                    (f"PyTorch ({torch.get_num_threads()} threads)", lambda: ta @ tb))  # noqa: B023
        for library, product in products:
            seconds = _median_seconds(product, budget_s / (len(products) * len(SHAPES)))
            gflops = 2 * m * k * n / seconds / 1e9
            if gflops > best.gflops:
                best = MatmulRate(gflops, f"{library}, {shape_name} ({m}×{k} @ {k}×{n})")
    return best


def product_time_share(model: str, registry: Registry, batch: int, calls: int = 30) -> float:
    """Share of ONNX Runtime kernel time in PRODUCT_OPS: `calls` served `infer` calls at `batch` on a profiled
    runtime."""
    with tempfile.TemporaryDirectory() as folder, _profiled_sessions(Path(folder)) as sessions:
        runtime = load_runtime(model, registry)
        items = [runtime.prepare(job) for job in as_jobs(model, payloads(model, batch, registry, seed=1))]
        for _ in range(calls):
            runtime.infer(items)
        kernel_us: dict[bool, float] = {True: 0.0, False: 0.0}
        for session in sessions:
            for event in json.loads(Path(session.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    kernel_us[event["args"]["op_name"] in PRODUCT_OPS] += event["dur"]
    total = kernel_us[True] + kernel_us[False]
    if total == 0:
        raise RuntimeError(f"the {model} runtime's ONNX Runtime profile recorded no kernels")
    return kernel_us[True] / total


@contextmanager
def _profiled_sessions(folder: Path) -> Iterator[list[Any]]:
    """Every ONNX Runtime session opened inside is profiled into `folder`; yields the list of them."""
    import onnxruntime as ort

    opened: list[Any] = []
    real = ort.InferenceSession

    def profiled(model: Any, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        options = options or ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / f"session{len(opened)}")
        opened.append(real(model, options, *args, **kwargs))
        return opened[-1]

    ort.InferenceSession = profiled
    try:
        yield opened
    finally:
        ort.InferenceSession = real


def _one_matmul_session(weights: np.ndarray) -> Any:
    """An ONNX Runtime CPU session of `a @ weights` (weights a constant, as a model's are)."""
    from onnx import TensorProto, helper, numpy_helper

    from aiaas.serving.onnx_session import open_session

    k, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["out"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["m", n])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return open_session(model.SerializeToString(), "cpu")


def _median_seconds(call: Callable[[], Any], budget_s: float) -> float:
    call()
    samples = []
    deadline = time.perf_counter() + budget_s
    while not samples or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def flops_per_item(model: str, registry: Registry, batch: int) -> float:
    """Matrix-product FLOPs per item of the benchmark's workload at `batch` items per call, as served."""
    jobs = as_jobs(model, payloads(model, batch, registry, seed=1))
    if model == "recsys":
        version = registry.resolve("recsys", "production")
        return 2.0 * int(version.params["dim"]) * load_runtime("recsys", registry).n_items
    if model == "rnn":
        return _rnn_flops_per_item(registry, jobs)
    from torch.utils.flop_counter import FlopCounterMode

    if model == "text":
        from aiaas.text.runtime import TorchEncoder, embed_rows

        runtime = load_runtime("text", registry)
        rows = [t.ids for job in jobs for t in runtime.prepare(job).tokens]
        encoder = TorchEncoder(None, device="cpu")
        with FlopCounterMode(display=False) as counter:
            embed_rows(encoder, rows, runtime.limits.max_batch_tokens, runtime.limits.call_overhead_tokens)
        return counter.get_total_flops() / len(rows)
    if model == "vision":
        import torch

        from aiaas.vision.model import DigitsCNN

        images = _stack([load_runtime("vision", registry).prepare(job) for job in jobs])
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            DigitsCNN().eval()(torch.from_numpy(images)[:, None])
        return counter.get_total_flops() / len(images)
    if model == "vae":
        return _vae_flops_per_item(registry, jobs)
    raise ValueError(f"unknown model {model!r}")


def _vae_flops_per_item(registry: Registry, jobs: list) -> float:
    """The VAE's products per job as served: the rows each job runs (an image without a digit runs under all ten,
    through encoder and decoder; a generated image through the decoder), counted on the PyTorch network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aiaas.vae.model import ConditionalVAE

    runtime = load_runtime("vae", registry)
    requests = [runtime.prepare(job) for job in jobs]
    encoding = [(r.image, d) for r in requests if r.image is not None for d in r.digits]
    decoding = [d for r in requests if r.latent is not None for d in r.digits]
    network = ConditionalVAE(runtime.latent_size).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        if encoding:
            images = torch.from_numpy(np.stack([image for image, _ in encoding]))
            digits = torch.tensor([d for _, d in encoding])
            mean, _ = network.encode(images, digits)
            network.decode_logits(mean, digits)
        if decoding:
            network.decode_logits(torch.zeros(len(decoding), runtime.latent_size), torch.tensor(decoding))
    return counter.get_total_flops() / len(jobs)


def _rnn_flops_per_item(registry: Registry, jobs: list) -> float:
    """The GRU's products per session as served: three gates (input and recurrent) per position run, padding
    included (it is work), and one output layer per session."""
    version = registry.resolve("rnn", "production")
    dim, hidden = int(version.params["dim"]), int(version.params["hidden_size"])
    runtime = load_runtime("rnn", registry)
    lengths = [len(runtime.prepare(job).items) for job in jobs]
    groups = length_groups(lengths, runtime.limits.max_batch_slots, runtime.limits.call_overhead_slots)
    slots = sum(len(group) * max(lengths[i] for i in group) for group in groups)
    return (slots * 2.0 * 3 * hidden * (dim + hidden) + len(lengths) * 2.0 * hidden * runtime.n_items) / len(lengths)


def _stack(items: Sequence[Tensor]) -> np.ndarray:
    from aiaas.vision.data import (
        IMAGE_SHAPE,  # scikit-learn's import is slow: only where vision is measured
    )

    return stack_tensors(items, IMAGE_SHAPE).astype(np.float32)
