"""The text model served from the registry: tasks, limits, truncation, backends, accuracy."""

import numpy as np
import pytest

from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob, ServiceMisconfigured
from aiaas.metrics.drift import OutputDrift
from aiaas.serving.runtime import computes_on_cpu
from aiaas.text.labelled_sentences import labelled_split
from aiaas.text.runtime import (
    MAX_CALL_OVERHEAD_TOKENS,
    TextLimits,
    TextRuntime,
    measure_call_overhead,
)
from aiaas.text.tokens import DEFAULT_CALL_OVERHEAD_TOKENS

SENTENCES = [
    "The striker scored twice in the second half.",
    "Whisk the eggs with sugar until the mixture is pale.",
    "A new phone was announced with a faster chip.",
    "Heavy rain is expected across the north tomorrow.",
    "Interest rates were left unchanged by the central bank.",
    "Regular exercise lowers the risk of heart disease.",
    "ok",
    "This sentence is deliberately rather long, so that it needs many more word pieces than the others do "
    "and the length grouping has something to group.",
]


@pytest.fixture(scope="module")
def runtime(text_registry) -> TextRuntime:
    return TextRuntime.from_registry(text_registry, limits=TextLimits(max_texts=8, max_chars=300, max_batch_tokens=64))


def job(task, **inputs) -> Job:
    return Job(job_id="j", model="text", task=task, inputs=inputs)


def run(runtime, *jobs):
    return runtime.infer([runtime.prepare(j) for j in jobs])


def test_embed_gives_unit_vectors_and_a_batch_gives_the_same_vectors_as_single_jobs(runtime):
    (together,) = run(runtime, job("embed", texts=SENTENCES))
    grouped = runtime.last_batch
    assert grouped.encoder_calls >= 2 and grouped.padding_waste < grouped.padding_waste_unsorted
    vectors = together["embeddings"].to_numpy()
    assert vectors.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = np.stack([run(runtime, job("embed", texts=[s]))[0]["embeddings"].to_numpy()[0] for s in SENTENCES])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_similarity_ranks_a_paraphrase_above_an_unrelated_sentence(runtime):
    (out,) = run(runtime, job("similarity",
                              left=["The match was won in extra time.", "The match was won in extra time."],
                              right=["They won the game after extra time.", "Bake the bread for forty minutes."]))
    close, far = out["scores"].to_numpy()
    assert close > 0.6 > far


def test_classify_reaches_85_percent_on_the_held_out_sentences(runtime, text_registry):
    _, held_out = labelled_split()
    outs = run(runtime, *[job("classify", texts=[text]) for text, _ in held_out])
    accuracy = np.mean([out["labels"] == [topic] for out, (_, topic) in zip(outs, held_out, strict=True)])
    assert accuracy >= 0.85
    assert text_registry.resolve("text", "production").metrics["accuracy"] == pytest.approx(accuracy)
    assert outs[0]["scores"].to_numpy().shape == (1, len(outs[0]["label_names"]))


def test_the_version_records_its_topic_shares_and_a_stream_about_one_topic_reads_as_drift(runtime):
    profile = runtime.output_profile
    assert set(profile) == set(runtime.head.labels) and sum(profile.values()) == pytest.approx(1, abs=1e-4)
    _, held_out = labelled_split()
    watched = OutputDrift(profile, window=len(held_out))
    for out in run(runtime, *[job("classify", texts=[text]) for text, _ in held_out]):
        watched.add_many(runtime.output_categories(out))
    assert watched.distance() == pytest.approx(0, abs=1e-3)  # the answers the version was built with
    sports = [text for text, topic in held_out if topic == "sports"]
    stream = sports * (len(held_out) // len(sports))
    for out in run(runtime, *[job("classify", texts=stream[at : at + 6]) for at in range(0, len(stream), 6)]):
        watched.add_many(runtime.output_categories(out))  # a job's texts each count
    assert watched.shares()["sports"] > 0.85 and watched.distance() > 0.6
    (embedded,) = run(runtime, job("embed", texts=["not watched"]))
    assert runtime.output_categories(embedded) == []


def test_a_batch_of_mixed_tasks_gives_each_job_what_it_gets_alone(runtime):
    jobs = [job("classify", texts=SENTENCES[:3]), job("embed", texts=SENTENCES[3:5]),
            job("similarity", left=SENTENCES[5:6], right=SENTENCES[6:7]), job("classify", texts=SENTENCES[7:]),
            job("classify", texts=SENTENCES[:1])]
    together = run(runtime, *jobs)
    for out, alone in zip(together, (run(runtime, j)[0] for j in jobs), strict=True):
        assert out.keys() == alone.keys()
        for name, value in out.items():
            if isinstance(value, list):
                assert value == alone[name]
            else:
                np.testing.assert_allclose(value.to_numpy(), alone[name].to_numpy(), atol=1e-5)
    assert together[0]["scores"].to_numpy().shape == (3, len(together[0]["label_names"]))
    assert len(together[0]["labels"]) == 3 and len(together[3]["labels"]) == 1


def test_over_long_text_is_truncated_and_flagged_not_refused(text_registry):
    runtime = TextRuntime.from_registry(text_registry, max_seq_len=12)
    (out,) = run(runtime, job("embed", texts=["short", SENTENCES[-1]]))
    assert out["truncated"].to_numpy().tolist() == [False, True]


@pytest.mark.parametrize("bad, message", [
    (job(None, texts=["x"]), "task"),
    (job("translate", texts=["x"]), "embed, similarity, classify"),
    (job("embed", texts=[]), "non-empty list"),
    (job("embed", text=["x"]), "`texts`"),
    (job("embed", texts=["x"] * 9), "at most 8"),
    (job("classify", texts=["y" * 301]), "at most 300"),
    (job("similarity", left=["a", "b"], right=["c"]), "pair up"),
])
def test_bad_jobs_are_refused_with_a_clear_message(runtime, bad, message):
    with pytest.raises(InvalidJob, match=message):
        runtime.prepare(bad)


def test_pytorch_backend_agrees_with_onnx_runtime(runtime, text_registry):
    torch_runtime = TextRuntime.from_registry(text_registry, backend="torch")
    (onnx_out,) = run(runtime, job("embed", texts=SENTENCES))
    (torch_out,) = run(torch_runtime, job("embed", texts=SENTENCES))
    difference = np.abs(onnx_out["embeddings"].to_numpy() - torch_out["embeddings"].to_numpy()).max()
    assert difference < 1e-4


def test_int8_graph_stays_close_to_fp32_and_classifies_as_well(runtime, text_registry, caplog):
    caplog.set_level("INFO", logger="aiaas.text.runtime")
    int8 = TextRuntime.from_registry(text_registry, precision="int8")
    assert int8.encoder.providers == ["CPUExecutionProvider"]
    assert "ONNX Runtime int8 encoder on CPUExecutionProvider" in caplog.text
    (fp32_out,) = run(runtime, job("embed", texts=SENTENCES))
    (int8_out,) = run(int8, job("embed", texts=SENTENCES))
    fp32_vectors, int8_vectors = fp32_out["embeddings"].to_numpy(), int8_out["embeddings"].to_numpy()
    cosine = np.sum(fp32_vectors * int8_vectors, axis=1)
    # Close (a one-word text, padded in a batch of longer ones, is the farthest), and truly another graph.
    assert cosine.min() >= 0.93 and cosine.mean() >= 0.98 and np.abs(int8_vectors - fp32_vectors).max() > 1e-4
    _, held_out = labelled_split()
    outs = run(int8, *[job("classify", texts=[text]) for text, _ in held_out])
    accuracy = np.mean([out["labels"] == [topic] for out, (_, topic) in zip(outs, held_out, strict=True)])
    metrics = text_registry.resolve("text", "production").metrics
    assert accuracy >= 0.85 and metrics["int8_accuracy"] == pytest.approx(accuracy)
    assert 0.95 <= metrics["int8_cosine_min"] < 1


@pytest.mark.parametrize("settings, message", [
    ({"precision": "int8", "backend": "torch"}, "AIAAS_TEXT_BACKEND=onnx"),
    ({"precision": "int8", "providers": "cuda"}, "CPU kernels"),
    ({"precision": "fp16"}, "one of fp32, int8"),
])
def test_a_precision_the_backend_cannot_serve_is_refused_before_loading(tmp_path, settings, message):
    from aiaas.registry.store import Registry

    empty = Registry(tmp_path / "registry")  # loading anything first would raise UnknownModelVersion instead
    with pytest.raises(ServiceMisconfigured, match=message):
        TextRuntime.from_registry(empty, **settings)


def test_a_version_built_before_int8_graphs_says_how_to_serve_it(pre_int8_text_registry):
    old = pre_int8_text_registry
    assert TextRuntime.from_registry(old).version == "1"  # fp32 serves it as before
    with pytest.raises(ServiceMisconfigured, match="no int8 encoder graph.*AIAAS_TEXT_PRECISION=fp32"):
        TextRuntime.from_registry(old, precision="int8")


@pytest.mark.gpu
def test_pytorch_backend_on_cuda_agrees_with_cpu(runtime, text_registry):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (the GPU tests run on a GPU host)")
    from aiaas.text.runtime import TorchEncoder

    cuda = TextRuntime(TorchEncoder(None, device="cuda"), runtime.tokenizer, runtime.head, runtime.version)
    (cpu_out,) = run(runtime, job("embed", texts=SENTENCES))
    (gpu_out,) = run(cuda, job("embed", texts=SENTENCES))
    assert np.abs(cpu_out["embeddings"].to_numpy() - gpu_out["embeddings"].to_numpy()).max() < 1e-3


class TimedEncoder:
    """An encoder whose call takes `fixed` + `per_slot` × rows × width seconds on a fake clock."""

    providers = ["fake"]

    def __init__(self, fixed: float, per_slot: float) -> None:
        self.fixed, self.per_slot, self.now = fixed, per_slot, 0.0

    def clock(self) -> float:
        return self.now

    def embed(self, input_ids, attention_mask):
        self.now += self.fixed + self.per_slot * input_ids.size
        return np.zeros((len(input_ids), 384), dtype=np.float32)


def test_the_call_overhead_is_measured_in_token_slots_and_capped_for_calls_that_cost_the_same_at_any_size():
    cpu_like = TimedEncoder(fixed=0.002, per_slot=0.0001)  # a call costs as much as 20 token slots
    assert measure_call_overhead(cpu_like, clock=cpu_like.clock) == 20
    gpu_like = TimedEncoder(fixed=0.004, per_slot=0.0)  # kernel launches dominate whatever the size
    assert measure_call_overhead(gpu_like, clock=gpu_like.clock) == MAX_CALL_OVERHEAD_TOKENS
    free_calls = TimedEncoder(fixed=0.0, per_slot=0.0001)  # nothing but token slots
    assert measure_call_overhead(free_calls, clock=free_calls.clock) == 0


def test_the_runtime_groups_lengths_by_its_call_overhead_measured_or_set(runtime, text_registry):
    assert isinstance(runtime.limits.call_overhead_tokens, int)  # measured on load
    texts = ["one two three four five six seven"] * 6 + ["one two three four five six seven eight nine ten"] * 6
    jobs = [job("embed", texts=[t]) for t in texts]

    def calls(overhead):
        limits = TextLimits(max_batch_tokens=8192, call_overhead_tokens=overhead)
        served = TextRuntime(runtime.encoder, runtime.tokenizer, runtime.head, runtime.version, limits=limits)
        embeddings = [o["embeddings"].to_numpy() for o in served.infer([served.prepare(j) for j in jobs])]
        return served.last_batch.encoder_calls, np.concatenate(embeddings)

    (apart, apart_rows), (together, together_rows) = calls(0), calls(1000)
    assert (apart, together) == (2, 1)  # 6 rows × 3 tokens of padding: worth a call at 0, not at 1000
    np.testing.assert_allclose(apart_rows, together_rows, atol=1e-5)


class CountingEncoder(TimedEncoder):
    def __init__(self, providers):
        super().__init__(fixed=0.002, per_slot=0.0001)
        self.providers, self.calls = providers, 0

    def embed(self, input_ids, attention_mask):
        self.calls += 1
        return super().embed(input_ids, attention_mask)


@pytest.mark.parametrize("providers, set_by_hand, calls, overhead", [
    (["CPUExecutionProvider"], None, 16, None),  # measured: 2 warm-up calls, then 7 rounds of 2 sizes
    (["CPUExecutionProvider"], 40, 0, 40),  # set: kept, nothing measured
    (["torch cuda"], None, 0, DEFAULT_CALL_OVERHEAD_TOKENS),  # off the CPU: not measured yet, the default
])
def test_the_call_overhead_is_measured_on_a_cpu_encoder_only_when_not_set(runtime, providers, set_by_hand, calls,
                                                                           overhead):
    encoder = CountingEncoder(providers)
    made = TextRuntime(encoder, runtime.tokenizer, runtime.head, "1",
                       limits=TextLimits(call_overhead_tokens=set_by_hand))
    assert encoder.calls == calls
    if overhead is not None:
        assert made.limits.call_overhead_tokens == overhead


@pytest.mark.parametrize("providers, on_cpu", [(["CPUExecutionProvider"], True), (["torch cuda"], False)])
def test_the_runtime_says_where_its_encoder_computes_so_a_gpu_encoder_keeps_a_model_thread(runtime, providers, on_cpu):
    made = TextRuntime(CountingEncoder(providers), runtime.tokenizer, runtime.head, "1",
                       limits=TextLimits(call_overhead_tokens=20))
    assert made.providers == providers
    assert computes_on_cpu(made) is on_cpu
