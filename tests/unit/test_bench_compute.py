"""bench/compute.py: FLOPs counted as served match the models' arithmetic; the bounds follow from the measurements."""

from __future__ import annotations

import pytest

from aiaas.registry.store import Registry
from bench.compute import (
    ComputeShare,
    MatmulRate,
    flops_per_item,
    matmul_rate,
    product_time_share,
)
from bench.workloads import as_jobs, load_runtime, payloads

HIDDEN, FFN, LAYERS = 384, 1536, 6
"""MiniLM-L6's shape."""


def minilm_flops(tokens: int) -> int:
    """Matrix-product FLOPs of one text of `tokens` tokens: per layer Q, K, V, output and the two feed-forward
    products per token, QKᵀ and attention·V per token pair, and the pooler's one product (2 FLOPs per multiply-add)."""
    per_layer = tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) + 2 * tokens * tokens * HIDDEN
    return 2 * (LAYERS * per_layer + HIDDEN * HIDDEN)


def test_text_flops_are_minilms_at_the_texts_own_length(text_registry: Registry) -> None:
    runtime = load_runtime("text", text_registry)
    (job,) = as_jobs("text", payloads("text", 1, text_registry, seed=1))
    tokens = len(runtime.prepare(job).tokens[0].ids)
    assert flops_per_item("text", text_registry, 1) == minilm_flops(tokens)


def test_text_flops_of_a_batch_count_its_padding(text_registry: Registry, monkeypatch) -> None:
    """A batch costs at least its texts at their own lengths: the groups pad texts to their longest."""
    monkeypatch.setenv("AIAAS_TEXT_CALL_OVERHEAD_TOKENS", "20")  # groups that pad some, whatever this machine measures
    runtime = load_runtime("text", text_registry)
    lengths = [len(t.ids) for job in as_jobs("text", payloads("text", 32, text_registry, seed=1))
               for t in runtime.prepare(job).tokens]
    unpadded = sum(minilm_flops(n) for n in lengths) / len(lengths)
    counted = flops_per_item("text", text_registry, 32)
    assert unpadded <= counted <= minilm_flops(max(lengths))
    assert len(set(lengths)) > 1 and counted > unpadded  # these texts differ in length, so some padding is paid


def test_vision_flops_are_the_cnns_products(vision_registry: Registry) -> None:
    conv1 = 8 * 8 * 16 * 1 * 3 * 3
    conv2 = 8 * 8 * 32 * 16 * 3 * 3
    dense = 32 * 4 * 4 * 64 + 64 * 10
    assert flops_per_item("vision", vision_registry, 4) == 2 * (conv1 + conv2 + dense)


def test_recsys_flops_are_one_user_against_every_item(recsys_registry: Registry) -> None:
    version = recsys_registry.resolve("recsys", "production")
    items = load_runtime("recsys", recsys_registry).n_items
    assert flops_per_item("recsys", recsys_registry, 8) == 2 * version.params["dim"] * items


def test_a_transformer_spends_most_kernel_time_in_products_and_recsys_does_not(
        text_registry: Registry, recsys_registry: Registry) -> None:
    text = product_time_share("text", text_registry, 8, calls=5)
    recsys = product_time_share("recsys", recsys_registry, 8, calls=5)
    assert 0.4 < text < 1.0  # MiniLM's products dominate; layer norms, softmax and the rest take the remainder
    assert 0.0 <= recsys < text  # one small product, then a top-k over every item


def test_the_matmul_rate_is_positive_and_names_how() -> None:
    rate = matmul_rate(budget_s=0.05)
    assert rate.gflops > 0
    assert any(library in rate.how for library in ("ONNX Runtime", "numpy", "PyTorch"))


def test_bounds_follow_from_the_measurements() -> None:
    # 100 MFLOP per item; 60 % of the runtime's kernel time in products. Round 1: the runtime does 40 GFLOP/s
    # (2.5 ms per item) on a 200 GFLOP/s machine: 1 ms of the rest + 0.5 ms of products at the machine's rate.
    share = ComputeShare("m", 8, 100e6, runtime_gflops=[40.0, 50.0, 60.0],
                         matmul=[MatmulRate(200.0, "x"), MatmulRate(100.0, "y"), MatmulRate(300.0, "z")],
                         product_share=0.6)
    assert share.matmul_gflops == 200.0
    assert share.share == pytest.approx(0.2)  # each round its own ratio: the median of 0.2, 0.5 and 0.2
    assert share.items_per_s_at_matmul_rate == pytest.approx(2000)
    # per round 1 / (0.4 + runtime / matmul): 2.5/1.5, 1/(0.4 + 0.5), 1/(0.4 + 0.2); the median is round 1's
    assert share.headroom == pytest.approx(2.5 / 1.5)
    assert ComputeShare("m", 8, 1e6, [1.0], [MatmulRate(1.0, "x")]).headroom is None
