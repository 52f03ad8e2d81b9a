"""The rnn model: generated sessions, training, the served ONNX graph behind RnnRuntime, training jobs (no Kafka)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from aiaas.contract.envelopes import Job, Result, Tensor, TrainingProgress
from aiaas.errors import AiaasError, InvalidJob
from aiaas.metrics.drift import OutputDrift
from aiaas.registry.store import Registry
from aiaas.rnn import cli, workload
from aiaas.rnn.runtime import RnnLimits, RnnRuntime
from aiaas.rnn.sessions import (
    Sessions,
    SessionsConfig,
    generate_sessions,
    load_split,
    next_item_examples,
)
from aiaas.rnn.settings import RnnSettings
from aiaas.rnn.trainer import WEIGHTS_FILE, TrainParams, build, export_onnx, train
from aiaas.rnn.training import MAX_SESSION_ITEMS, RnnTrainer
from aiaas.serving.length_groups import length_groups
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings

SMALL = SessionsConfig(n_sessions=3000, seed=11)
"""A smaller generated data set of its own, so that the model trained here trains in a second or two."""
TINY = TrainParams(dim=32, hidden_size=64, epochs=4, learning_rate=0.02, batch_size=128)


def job(task: str | None = "next_items", **inputs) -> Job:
    return Job(job_id="j", model="rnn", task=task, inputs=inputs)


def session(*items: int, dtype: str = "int64") -> Tensor:
    return Tensor.from_numpy(np.array(items, dtype=dtype))


def items_of(out) -> list[int]:
    return out["items"].to_numpy().tolist()


def run(runtime: RnnRuntime, *jobs: Job) -> list:
    return runtime.infer([runtime.prepare(j) for j in jobs])


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def small_split():
    return load_split(SMALL)


@pytest.fixture(scope="module")
def rnn_registry(tmp_path_factory) -> Registry:
    """A registry of its own with a quickly trained rnn version (small sessions, small GRU) as `production`."""
    registry = Registry(tmp_path_factory.mktemp("rnn") / "registry")
    build(registry, TINY, SMALL)
    return registry


@pytest.fixture(scope="module")
def runtime(rnn_registry) -> RnnRuntime:
    return RnnRuntime.from_registry(rnn_registry, "production", providers="cpu")


# --- the generated sessions -------------------------------------------------------------------------

def test_the_generator_gives_the_same_sessions_for_a_seed_and_others_for_another(split):
    again = load_split()
    assert again.data_hash() == split.data_hash()
    np.testing.assert_array_equal(again.test.items, split.test.items)
    other = load_split(dataclasses.replace(SessionsConfig(), seed=SessionsConfig().seed + 1))
    assert other.data_hash() != split.data_hash()


def test_the_sessions_follow_the_documented_process(split):
    config, everything = SessionsConfig(), generate_sessions()
    lengths = everything.lengths
    assert len(everything) == config.n_sessions and lengths.min() == 2 and lengths.max() == config.max_length
    assert 0 <= everything.items.min() and everything.items.max() < config.n_items == 400  # recsys's item space
    assert all(len(set(s)) == len(s) for s in everything.as_lists())  # a session never repeats an item
    assert len(split.test) == round(config.held_out_share * config.n_sessions)
    assert len(split.train) + len(split.test) == config.n_sessions
    popularity = np.sort(split.popularity())[::-1]
    assert popularity[: config.n_items // 10].sum() > 0.2 * popularity.sum()  # skewed, not uniform (0.1)


def test_the_item_two_back_says_what_comes_next_better_than_the_last_item_alone(split):
    """The structure only order reveals (step 2): on held-out sessions, the most frequent follower of the last two
    items in training is right far more often than the most frequent follower of the last item."""
    first, second = defaultdict(Counter), defaultdict(Counter)
    for items in split.train.as_lists():
        for a, b in zip(items, items[1:], strict=False):
            first[a][b] += 1
        for a, b, c in zip(items, items[1:], items[2:], strict=False):
            second[a, b][c] += 1
    hits_first = hits_second = total = 0
    for items in split.test.as_lists():
        for a, b, c in zip(items, items[1:], items[2:], strict=False):
            total += 1
            hits_first += first[b].most_common(1)[0][0] == c if first[b] else 0
            best = second[a, b].most_common(1) or first[b].most_common(1)
            hits_second += bool(best) and best[0][0] == c
    assert hits_second / total > 1.3 * hits_first / total, (hits_first / total, hits_second / total)


def test_every_prefix_predicts_the_item_after_it():
    sessions = Sessions.from_lists([[5, 6, 7], [1, 2]])
    prefixes, following = next_item_examples(sessions)
    assert [p.tolist() for p in prefixes] == [[5], [5, 6], [1]] and following.tolist() == [6, 7, 2]


# --- training and the exported graph ----------------------------------------------------------------

def test_training_is_deterministic_on_cpu(small_split):
    params = dataclasses.replace(TINY, epochs=1)
    first, again = train(small_split, params), train(small_split, params)
    other = train(small_split, dataclasses.replace(params, seed=1))
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert not torch.equal(first.output.weight, other.output.weight)


def test_the_onnx_graph_answers_as_the_pytorch_model(small_split, tmp_path):
    model = train(small_split, dataclasses.replace(TINY, epochs=1))
    export_onnx(model, tmp_path / "rnn.onnx")
    runtime = RnnRuntime((tmp_path / "rnn.onnx").read_bytes(), "1", providers="cpu")
    prefixes, _ = next_item_examples(small_split.test)
    picked = [prefixes[i] for i in range(0, 400, 7)]
    outputs = run(runtime, *(job(items=Tensor.from_numpy(p), k=20, exclude_seen=False) for p in picked))
    for prefix, out in zip(picked, outputs, strict=True):
        with torch.no_grad():
            logits = model.last_logits(torch.from_numpy(prefix)[None], torch.tensor([len(prefix)]))
        expected = torch.softmax(logits, dim=1)[0].numpy()
        np.testing.assert_allclose(out["scores"].to_numpy(), expected[items_of(out)], rtol=1e-4, atol=1e-6)
        assert out["scores"].to_numpy()[-1] >= np.sort(expected)[-20] - 1e-6  # the best 20 of every item


def test_the_built_version_beats_mf_and_popularity_and_records_them(rnn_registry, small_split):
    version = rnn_registry.resolve("rnn", "production")
    metrics = version.metrics
    for name in ("recall_at_10", "mrr_at_10"):
        assert 0 < metrics[name] <= 1 and metrics[f"mf_{name}"] > 0 and metrics[f"popularity_{name}"] > 0
        assert metrics[name] > 1.3 * max(metrics[f"mf_{name}"], metrics[f"popularity_{name}"]), metrics
    assert set(version.files) == {WEIGHTS_FILE} and version.data_hash == small_split.data_hash()
    assert version.params["data"]["n_sessions"] == SMALL.n_sessions and version.params["hidden_size"] == 64


def test_the_recorded_recall_is_what_the_runtime_serves(rnn_registry, runtime, small_split):
    prefixes, following = next_item_examples(small_split.test)
    outputs = run(runtime, *(job(items=Tensor.from_numpy(p)) for p in prefixes))
    recall = np.mean([truth in items_of(out) for out, truth in zip(outputs, following.tolist(), strict=True)])
    assert recall == pytest.approx(rnn_registry.resolve("rnn", "production").metrics["recall_at_10"])


def test_the_version_records_how_its_top_scores_spread_and_sessions_of_random_items_read_as_drift(runtime,
                                                                                                  small_split):
    profile = runtime.output_profile
    assert sum(profile.values()) == pytest.approx(1, abs=1e-4) and len(profile) >= 3
    prefixes, _ = next_item_examples(small_split.test)
    watched = OutputDrift(profile, window=len(prefixes))
    for out in run(runtime, *(job(items=Tensor.from_numpy(p)) for p in prefixes)):
        watched.add_many(runtime.output_categories(out))
    assert watched.distance() == pytest.approx(0, abs=1e-3)  # the answers the version was built with

    def distance_on(sessions) -> float:
        drift = OutputDrift(profile, window=len(prefixes))
        for out in run(runtime, *(job(items=Tensor.from_numpy(p)) for p in sessions)):
            drift.add_many(runtime.output_categories(out))
        return drift.distance()

    # Its training sessions (the same process, a little surer on what it was fitted to) barely move the gauge;
    # sessions with no structure, where the model is less sure what comes next, move it twice as far or more.
    training_sessions = next_item_examples(small_split.train)[0][: len(prefixes)]
    rng = np.random.default_rng(5)
    random_sessions = [rng.integers(0, runtime.n_items, len(p)) for p in prefixes]
    same, random = distance_on(training_sessions), distance_on(random_sessions)
    assert same < 0.1 and random > 2 * same and random > 0.12, (same, random)


# --- the runtime ------------------------------------------------------------------------------------

def test_next_items_are_k_items_best_first_with_probabilities(runtime):
    (out,) = run(runtime, job(items=session(3, 17, 42), k=7))
    items, scores = out["items"].to_numpy(), out["scores"].to_numpy()
    assert items.dtype == np.int64 and scores.dtype == np.float32 and items.shape == scores.shape == (7,)
    assert np.all(np.diff(scores) <= 0) and len(set(items.tolist())) == 7 and 0 < scores.sum() <= 1 + 1e-5
    (default,) = run(runtime, job(items=session(3, 17, 42)))
    assert len(items_of(default)) == 10
    for dtype in ("int32", "int16", "uint8"):  # any integer tensor: the same session, the same answer
        (same,) = run(runtime, job(items=session(3, 17, 42, dtype=dtype), k=7))
        assert same == out


def test_exclude_seen_leaves_out_the_sessions_items_and_nothing_else(runtime):
    seen = [int(i) for i in runtime.infer([runtime.prepare(job(items=session(8), k=3, exclude_seen=False))])[0][
        "items"].to_numpy()] + [8]  # the items the model likes best after item 8, so leaving them out matters
    everything, left_out = run(runtime, job(items=session(*seen), k=100, exclude_seen=False),
                               job(items=session(*seen), k=10))
    assert set(items_of(everything)) & set(seen)
    assert items_of(left_out) == [i for i in items_of(everything) if i not in seen][:10]
    np.testing.assert_allclose(left_out["scores"].to_numpy(),
                               [s for i, s in zip(items_of(everything), everything["scores"].to_numpy(), strict=True)
                                if i not in seen][:10])


def test_a_session_gets_the_same_answer_alone_and_padded_in_a_batch(rnn_registry):
    """Right-padding after a session's end cannot change its answer (model.py): alone, in one padded run with
    longer sessions, or in a length group of its own."""
    short = job(items=session(4, 9), k=15, exclude_seen=False)
    longer = [job(items=session(*range(n, n + length))) for n, length in ((50, 12), (100, 30), (200, 7))]
    answers = []
    for overhead in (0, 10**6):
        limits = RnnLimits(call_overhead_slots=overhead)
        runtime = RnnRuntime.from_registry(rnn_registry, providers="cpu", limits=limits)
        (alone,) = run(runtime, short)
        together = run(runtime, *longer[:2], short, longer[2])
        assert items_of(together[2]) == items_of(alone)
        np.testing.assert_allclose(together[2]["scores"].to_numpy(), alone["scores"].to_numpy(), rtol=1e-5)
        answers.append((items_of(alone), runtime.padding))
    (_, grouped), (_, one_run) = answers
    assert grouped.padded_slots == 0 and grouped.session_runs == 1 + 4  # one run per distinct length
    assert one_run.session_runs == 1 + 1 and one_run.padded_slots == 4 * 30 - (2 + 12 + 30 + 7)
    assert one_run.last_padding_share == one_run.last_unsorted_padding_share == pytest.approx(1 - 51 / 120)
    assert answers[0][0] == answers[1][0]


def test_length_groups_keep_padding_under_a_runs_cost_and_the_slots_under_the_limit():
    lengths = [3, 1, 20, 2, 3, 19, 50, 2]
    groups = length_groups(lengths, max_slots=60, call_overhead_slots=4)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [[lengths[i] for i in g] for g in groups] == [[1, 2, 2, 3, 3], [19, 20], [50]]
    assert length_groups(lengths, 10**6, 10**6) == [sorted(range(len(lengths)), key=lambda i: lengths[i])]
    assert all(len(g) == 1 for g in length_groups([5, 5, 5], max_slots=5, call_overhead_slots=100))


@pytest.mark.parametrize("task, inputs, message", [
    (None, {"items": session(1)}, "need the task next_items; got None"),
    ("recommend", {"items": session(1)}, "need the task next_items; got 'recommend'"),
    ("next_items", {}, "needs `items`: a 1-D integer tensor of 1..50 item ids .*; got nothing"),
    ("next_items", {"items": "3 17 42"}, "needs `items`.*got str"),
    ("next_items", {"items": ["3", "17"]}, "needs `items`.*got list"),
    ("next_items", {"items": 3}, "needs `items`.*got int"),
    ("next_items", {"items": 3.5}, "needs `items`.*got float"),
    ("next_items", {"items": True}, "needs `items`.*got bool"),
    ("next_items", {"items": session(1, 2, dtype="float32")}, r"got float32 \[2\]"),
    ("next_items", {"items": session(1, 0, dtype="bool")}, r"got bool \[2\]"),
    ("next_items", {"items": Tensor.from_numpy(np.ones((2, 3), np.int64))}, r"got int64 \[2, 3\]"),
    ("next_items", {"items": session()}, r"holds 0 items; a session has 1\.\.50"),
    ("next_items", {"items": session(*range(51))}, r"holds 51 items; a session has 1\.\.50 \(AIAAS_RNN_MAX_SESSION"),
    ("next_items", {"items": session(3, -1)}, r"item ids within 0\.\.399; got -1\.\.3"),
    ("next_items", {"items": session(3, 400)}, r"within 0\.\.399; got 3\.\.400"),
    ("next_items", {"items": session(2**63 - 1)}, r"within 0\.\.399; got 9223372036854775807"),
    ("next_items", {"items": session(-(2**63))}, r"within 0\.\.399; got -9223372036854775808"),
    ("next_items", {"items": session(3, -128, dtype="int8")}, r"within 0\.\.399; got -128\.\.3"),
    ("next_items", {"items": Tensor(dtype="int64", shape=[3], data=b"\0" * 16)}, "needs 24"),
    ("next_items", {"items": Tensor(dtype="int64", shape=[2**31 - 1], data=b"")}, r"holds 2147483647 items"),
    ("next_items", {"items": session(1), "k": 0}, r"`k` must be within 1\.\.100; got 0"),
    ("next_items", {"items": session(1), "k": 101}, r"`k` must be within 1\.\.100"),
    ("next_items", {"items": session(1), "k": 2**70}, r"`k` must be within 1\.\.100"),
    ("next_items", {"items": session(1), "k": 2.0}, "`k` must be an integer; got float"),
    ("next_items", {"items": session(1), "k": True}, "`k` must be an integer; got bool"),
    ("next_items", {"items": session(1), "exclude_seen": "yes"}, "`exclude_seen` must be a boolean; got str"),
    ("next_items", {"items": session(1), "exclude_seen": 1}, "`exclude_seen` must be a boolean; got int"),
    ("next_items", {"items": session(1), "user_id": 3}, "takes inputs items, k, exclude_seen; unexpected: user_id"),
])
def test_bad_jobs_are_refused_naming_what_is_valid(runtime, task, inputs, message):
    with pytest.raises(InvalidJob, match=message):
        runtime.prepare(job(task, **inputs))


@pytest.mark.parametrize("items", [[3, 17, 42], [[3, 17], [42]], [3, "17"]])
def test_a_session_as_a_list_of_numbers_is_not_a_job_the_contract_admits(items):
    """A session travels as an integer tensor: the envelope's plain list inputs are lists of text only."""
    with pytest.raises(ValidationError):
        job(items=items)


def test_serves_its_number_and_aliases(runtime):
    assert runtime.serves(runtime.version) and runtime.serves(f"v{runtime.version}") and runtime.serves("production")
    assert not runtime.serves(str(int(runtime.version) + 1))


def test_the_settings_reach_the_runtimes_limits(monkeypatch):
    monkeypatch.setenv("AIAAS_RNN_MAX_SESSION_ITEMS", "7")
    monkeypatch.setenv("AIAAS_RNN_CALL_OVERHEAD_SLOTS", "0")
    limits = RnnSettings().limits()
    assert (limits.max_session_items, limits.call_overhead_slots, limits.max_k) == (7, 0, 100)


@pytest.mark.gpu
def test_cuda_gives_the_cpu_answers_when_a_gpu_is_there(rnn_registry, runtime, small_split):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider in this ONNX Runtime (CPU machine; install aiaas[gpu] on a GPU host)")
    cuda = RnnRuntime.from_registry(rnn_registry, "production", providers="cuda")
    assert cuda.providers[0] == "CUDAExecutionProvider"
    jobs = [job(items=Tensor.from_numpy(p)) for p in next_item_examples(small_split.test)[0][:200]]
    for on_gpu, on_cpu in zip(run(cuda, *jobs), run(runtime, *jobs), strict=True):
        np.testing.assert_allclose(on_gpu["scores"].to_numpy(), on_cpu["scores"].to_numpy(), atol=1e-4)
        assert items_of(on_gpu)[:3] == items_of(on_cpu)[:3]


# --- the CLI and the benchmark workload -----------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_submit_arguments(parser)
    return parser.parse_args(argv)


def test_cli_turns_sessions_into_jobs_and_samples_held_out_sessions_with_their_next_item(split):
    specs = cli.jobs_from_args(parse("--session", "3", "17", "42", "--session", "5", "--k", "5", "--include-seen",
                                     "--sessions-sample", "3"))
    assert [s.task for s in specs] == ["next_items"] * 5
    assert specs[0].inputs["items"].to_numpy().tolist() == [3, 17, 42] and specs[0].inputs["k"] == 5
    assert specs[1].inputs["items"].to_numpy().tolist() == [5] and specs[1].inputs["exclude_seen"] is False
    held_out = {tuple(s) for s in split.test.as_lists()}
    assert all((*s.inputs["items"].to_numpy().tolist(), s.expected) in held_out for s in specs[2:])
    with pytest.raises(AiaasError, match="--session ITEM_ID"):
        cli.jobs_from_args(parse())


def test_cli_scores_a_hit_and_describes_a_result_on_one_line(runtime):
    (out,) = run(runtime, job(items=session(3, 17)))
    result = Result(job_id="j", model="rnn", status="ok", outputs=out)
    assert cli.is_correct(result, items_of(out)[4]) and not cli.is_correct(result, 10**6)
    line = cli.describe(result)
    assert line.startswith("next ") and "(10 items, best" in line and "\n" not in line
    assert "no items" in cli.describe(Result(job_id="j", model="rnn", status="ok", outputs={}))


def test_the_workload_sends_held_out_prefixes_of_productions_data_to_the_runtime_it_loads(rnn_registry, small_split):
    make = workload.payloads(rnn_registry, random.Random(0))
    jobs = [job(task, **inputs) for inputs, task in (make() for _ in range(50))]
    assert len({len(j.inputs["items"].to_numpy()) for j in jobs}) > 3  # many lengths, as real traffic
    held_out = {tuple(p.tolist()) for p in next_item_examples(small_split.test)[0]}
    assert all(tuple(j.inputs["items"].to_numpy().tolist()) in held_out for j in jobs)  # the SMALL config's
    runtime = workload.load_runtime(rnn_registry, intra_op_threads=1)
    assert runtime.limits == RnnSettings().limits()
    assert all(len(items_of(out)) == 10 for out in run(runtime, *jobs))


# --- training jobs ------------------------------------------------------------------------------------

ANYWHERE = TrainerSettings(data_roots=["/"])


def train_rnn(registry: Registry, workdir, **inputs):
    """The rnn trainer for a job with `inputs`: the candidate and its progress events."""
    events: list[TrainingProgress] = []
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = RnnTrainer()
    request = TrainingRequest.from_job(Job(job_id="t", kind="train", model="rnn", inputs=inputs), ANYWHERE,
                                       trainer.hyper_parameters)
    return trainer.train(request, registry, workdir, events.append), events


def own_sessions(n: int = 300) -> list[list[int]]:
    return generate_sessions(dataclasses.replace(SMALL, n_sessions=n, seed=3)).as_lists()


def flat(sessions: list[list[int]]) -> dict[str, Tensor]:
    ids = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
    return {"session_id": Tensor.from_numpy(ids), "item_id": Tensor.from_numpy(np.concatenate(sessions))}


def test_rnn_trains_on_the_jobs_own_sessions_inline_or_from_a_file(rnn_registry, tmp_path):
    sessions = own_sessions()
    inline, events = train_rnn(rnn_registry, tmp_path / "inline", epochs=2, dim=16, hidden_size=32,
                               **flat(sessions))
    assert [e.epoch for e in events] == [1, 2] and all(e.metric_name == "recall_at_10" for e in events)
    assert events[-1].eta_s == 0 and 0 <= events[-1].metric <= 1
    assert inline.scored_on == "job_data" and inline.parent is None
    assert inline.params["data"]["source"] == "job" and inline.params["data"]["sessions"] == 300
    assert inline.params["hidden_size"] == 32 and [p.name for p in inline.companions] == [WEIGHTS_FILE]
    assert {"recall_at_10", "mrr_at_10", "mf_recall_at_10", "popularity_recall_at_10"} <= set(inline.metrics)

    path = tmp_path / "sessions.jsonl"
    path.write_text("\n".join(json.dumps({"items": s}) for s in sessions))
    from_file, _ = train_rnn(rnn_registry, tmp_path / "file", epochs=2, dim=16, hidden_size=32, data_uri=str(path))
    assert from_file.data_hash == inline.data_hash and from_file.metrics["recall_at_10"] == inline.metrics[
        "recall_at_10"]
    registry = Registry(tmp_path / "registry")
    registry.register("rnn", from_file.artifact, companions=from_file.companions)
    (out,) = run(RnnRuntime.from_registry(registry, providers="cpu"), job(items=session(*sessions[0][:3])))
    assert len(items_of(out)) == 10


def test_the_training_score_is_the_served_graphs_and_long_job_sessions_are_scored_too(rnn_registry, tmp_path):
    # Sessions longer than a service takes (AIAAS_RNN_MAX_SESSION_ITEMS, 50): a job's own may hold up to 200.
    rng = np.random.default_rng(5)
    sessions = [rng.permutation(400)[:length].tolist() for length in rng.integers(51, 201, 60)]
    candidate, events_seen = train_rnn(rnn_registry, tmp_path / "long", epochs=1, dim=16, hidden_size=32,
                                       **flat(sessions))
    # The per-epoch score (the PyTorch model, every prefix of a held-out session in one GRU pass) is the served
    # graph's (one next_items job per prefix).
    assert events_seen[-1].metric == pytest.approx(candidate.metrics["recall_at_10"], abs=1e-6)
    assert candidate.metrics["held_out_examples"] > 6 * 50  # its held-out sessions are all longer than 50 items
    assert sum(candidate.output_profile.values()) == pytest.approx(1, abs=1e-4)


def test_warm_start_begins_from_the_base_versions_weights(rnn_registry, tmp_path):
    base = rnn_registry.resolve("rnn", "production")
    warm, _ = train_rnn(rnn_registry, tmp_path / "warm", base_version="production", learning_rate=1e-9, epochs=1,
                        **flat(own_sessions()))
    assert warm.parent == base.version and warm.params["hidden_size"] == 64 and warm.params["dim"] == 32
    with np.load(warm.companions[0]) as after, np.load(rnn_registry.root / "rnn" / f"v{base.version}" / WEIGHTS_FILE) \
            as before:
        assert set(after.files) == set(before.files)
        for name in before.files:  # a learning rate of 1e-9 moves nothing visibly: it started from the base
            np.testing.assert_allclose(after[name], before[name], atol=1e-6)
    with pytest.raises(InvalidJob, match="`hidden_size` 128 differs from rnn v1's 64"):
        train_rnn(rnn_registry, tmp_path / "other", base_version="production", hidden_size=128, epochs=1,
                  **flat(own_sessions()))


def _bad(**changes):
    return flat(own_sessions(60)) | changes


@pytest.mark.parametrize("inputs, message", [
    ({"sessions": Tensor.from_numpy(np.arange(4))}, "needs `items` .* or `session_id` and `item_id` .*; got sessions"),
    (_bad(extra=Tensor.from_numpy(np.arange(3))), "got extra, item_id, session_id"),
    (_bad(item_id=Tensor.from_numpy(np.arange(5))), r"\d+ session_id and 5 item_id values \(they must be of one"),
    (_bad(item_id=Tensor.from_numpy(np.full(len(_bad()["session_id"].to_numpy()), 400))), r"within 0\.\.399"),
    (_bad(item_id=Tensor.from_numpy(np.ones(len(_bad()["session_id"].to_numpy())))), "column of integers; got float64"),
    (_bad(session_id=["a", "b"]), "column of integers; got <U1"),
    (_bad(session_id="0 1 2"), "not a single string"),
    (flat(own_sessions(40)), "40 sessions; at least 50"),
    (flat([[1, 2]] * 59 + [[3]]), "session 59 has 1 item; every session needs at least 2"),
    (flat([[1, 2]] * 59 + [list(range(MAX_SESSION_ITEMS + 1))]), "a session has 201 items; at most 200"),
    ({"dim": 4096}, "at most 1024"),
])
def test_bad_rnn_training_jobs_are_refused_before_the_registry_is_touched(tmp_path, inputs, message):
    empty = Registry(tmp_path / "empty")
    with pytest.raises(InvalidJob, match=message):
        train_rnn(empty, tmp_path / "work", epochs=1, base_version="production", **inputs)
    assert not (tmp_path / "work" / "rnn.onnx").exists()


@pytest.mark.parametrize("rows, message", [
    ([{"items": [1, 2]}] * 59 + [{"items": [1, "2"]}], r"session 59 must be a list of integer item ids; got list"),
    ([{"items": [1, 2]}] * 59 + [{"items": [1, 2.0]}], "session 59 must be a list of integer"),
    ([{"items": [1, 2]}] * 59 + [{"items": [[1], [2]]}], "session 59 must be a list of integer"),
    ([{"items": [1, 2]}] * 59 + [{"items": [1, True]}], "session 59 must be a list of integer"),
    ([{"items": [1, 2]}] * 59 + [{"items": 7}], "session 59 must be a list of integer item ids; got int 7"),
    ([{"items": [1, 2]}] * 59 + [{"items": [1, 10**30]}], r"session 59 has item ids outside 0\.\.399"),
    ([{"items": [1, 2]}] * 59 + [{"items": [-1, 2]}], r"outside 0\.\.399"),
    ([{"items": [1, 2]}] * 59 + [{"items": list(range(300))}], "session 59 has 300 items; at most 200"),
    ([{"session_id": 1, "item_id": 2}] * 3 + [{"session_id": 1, "item_id": 10**30}], "cannot be read as integers|"
                                                                                      "column of integers"),
])
def test_bad_session_files_are_refused_naming_the_session(tmp_path, rows, message):
    path = tmp_path / "sessions.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(InvalidJob, match=message):
        train_rnn(Registry(tmp_path / "empty"), tmp_path / "work", epochs=1, data_uri=str(path))
