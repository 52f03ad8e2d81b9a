"""The recsys model: generated data, training, and the served ONNX graph behind RecsysRuntime (no Kafka)."""

from __future__ import annotations

import argparse
import dataclasses
import io

import numpy as np
import pytest
import torch

from aiaas.contract.envelopes import Job, Result, Tensor
from aiaas.errors import InvalidJob
from aiaas.metrics.drift import OutputDrift
from aiaas.recsys import cli
from aiaas.recsys.data import (
    SERVING_FILE,
    RatingsConfig,
    ServingTables,
    generate_ratings,
    load_split,
)
from aiaas.recsys.runtime import RecsysRuntime
from aiaas.recsys.trainer import TrainParams, train

UNKNOWN_USER = 10**6


def job(task: str | None, **inputs) -> Job:
    return Job(job_id="j", model="recsys", task=task, inputs=inputs)


def items_of(out) -> list[int]:
    return out["items"].to_numpy().tolist()


@pytest.fixture(scope="module")
def runtime(recsys_registry) -> RecsysRuntime:
    return RecsysRuntime.from_registry(recsys_registry, "production", providers="cpu")


@pytest.fixture(scope="module")
def split():
    return load_split()


# --- the generated data -------------------------------------------------------------------------

def test_the_generator_gives_the_same_ratings_for_a_seed_and_others_for_another(split):
    again = load_split()
    assert again.data_hash() == split.data_hash()
    np.testing.assert_array_equal(again.test.items, split.test.items)
    other = load_split(dataclasses.replace(RatingsConfig(), seed=RatingsConfig().seed + 1))
    assert other.data_hash() != split.data_hash()


def test_the_data_follows_the_documented_process(split):
    config, everything = RatingsConfig(), generate_ratings()
    activity = np.bincount(everything.users, minlength=config.n_users)
    assert activity.min() >= config.min_activity and activity.max() <= config.max_activity
    pairs = set(zip(everything.users.tolist(), everything.items.tolist(), strict=True))
    assert len(pairs) == len(everything)  # no repeats
    assert set(np.unique(everything.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    popularity = np.sort(np.bincount(everything.items, minlength=config.n_items))[::-1]
    assert popularity[: config.n_items // 10].sum() > 0.25 * popularity.sum()  # popularity skew
    assert np.all(np.bincount(split.test.users, minlength=config.n_users) == config.held_out_per_user)
    train_pairs = set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    assert not train_pairs & set(zip(split.test.users.tolist(), split.test.items.tolist(), strict=True))


def test_training_is_deterministic_on_cpu(split):
    params = TrainParams(epochs=5)
    first, second = train(split, params), train(split, params)
    assert torch.equal(first.user_factors, second.user_factors) and torch.equal(first.item_bias, second.item_bias)
    assert not torch.equal(first.item_factors, train(split, dataclasses.replace(params, seed=1)).item_factors)


def test_serving_tables_refuse_pickled_arrays():
    buffer = io.BytesIO()
    np.savez(buffer, seen_indptr=np.array([0, 1]), seen_items=np.array([object()], dtype=object),
             popularity=np.array([1]))
    with pytest.raises(ValueError, match="pickle"):
        ServingTables.from_bytes(buffer.getvalue())


# --- quality of the served graph ------------------------------------------------------------------

def test_served_model_finds_held_out_items_half_again_as_often_as_popularity(runtime, split, recsys_registry):
    held_out = split.held_out()
    users = sorted(held_out)
    outputs = runtime.infer([runtime.prepare(job("recommend", user_id=u, k=10)) for u in users])
    model = np.mean([bool(set(items_of(out)) & held_out[u]) for u, out in zip(users, outputs, strict=True)])

    counts = np.bincount(split.train.items, minlength=split.n_items).astype(float)
    seen: dict[int, list[int]] = {}
    for user, item in zip(split.train.users.tolist(), split.train.items.tolist(), strict=True):
        seen.setdefault(user, []).append(item)
    baseline = []
    for user in users:
        unseen = counts.copy()
        unseen[seen[user]] = -1
        baseline.append(bool(set(np.argsort(-unseen, kind="stable")[:10].tolist()) & held_out[user]))
    popular = np.mean(baseline)

    assert all(out["strategy"] == "collaborative" for out in outputs)
    assert model >= 1.5 * popular, (model, popular)
    metrics = recsys_registry.resolve("recsys", "production").metrics
    assert metrics["hit_rate_at_10"] == pytest.approx(model)
    assert metrics["popularity_hit_rate_at_10"] == pytest.approx(popular)


def test_the_version_records_its_companion_tables_and_data(recsys_registry, split):
    version = recsys_registry.resolve("recsys", "production")
    assert set(version.files) == {SERVING_FILE} and version.data_hash == split.data_hash()
    tables = ServingTables.from_bytes(recsys_registry.load_companions(version)[SERVING_FILE])
    np.testing.assert_array_equal(tables.popularity, np.bincount(split.train.items, minlength=split.n_items))


def test_the_version_records_how_its_answers_spread_and_a_share_of_unknown_users_reads_as_drift(runtime, split):
    profile = runtime.output_profile
    assert sum(profile.values()) == pytest.approx(1, abs=1e-4) and len(profile) >= 3
    assert all(category.startswith("collaborative [") for category in profile)  # held-out users are known
    users = sorted(split.held_out())
    like_held_out = OutputDrift(profile, window=len(users))
    for out in runtime.infer([runtime.prepare(job("recommend", user_id=u, k=10)) for u in users]):
        like_held_out.add_many(runtime.output_categories(out))
    assert like_held_out.distance() == pytest.approx(0, abs=1e-3)

    cold = [runtime.prepare(job("recommend", user_id=UNKNOWN_USER, k=10))] * (len(users) // 3)
    for out in runtime.infer(cold):
        like_held_out.add_many(runtime.output_categories(out))  # a third of the window: users the model never saw
    shares = like_held_out.shares()
    assert shares["popularity"] == pytest.approx(len(cold) / len(users), abs=0.01)
    assert like_held_out.distance() > 0.4
    (similar,) = runtime.infer([runtime.prepare(job("similar_items", item_id=42, k=5))])
    assert runtime.output_categories(similar) == []


# --- the tasks ----------------------------------------------------------------------------------------

def test_recommendations_are_k_items_best_first(runtime):
    (out,) = runtime.infer([runtime.prepare(job("recommend", user_id=3, k=7))])
    items, scores = out["items"].to_numpy(), out["scores"].to_numpy()
    assert items.dtype == np.int64 and scores.dtype == np.float32 and items.shape == scores.shape == (7,)
    assert np.all(np.diff(scores) <= 0) and len(set(items.tolist())) == 7
    assert out["strategy"] == "collaborative"


def test_exclude_seen_leaves_out_rated_items_and_include_seen_does_not(runtime, split):
    user = 5
    seen = set(split.train.items[split.train.users == user].tolist())
    excluded, included = runtime.infer([
        runtime.prepare(job("recommend", user_id=user, k=50)),  # exclude_seen defaults to true
        runtime.prepare(job("recommend", user_id=user, k=50, exclude_seen=False)),
    ])
    assert not set(items_of(excluded)) & seen
    assert set(items_of(included)) & seen  # the model ranks what the user rated high: the flag matters


def test_a_user_the_model_never_saw_gets_popular_items_and_is_told_so(runtime, split):
    (out,) = runtime.infer([runtime.prepare(job("recommend", user_id=UNKNOWN_USER, k=5))])
    most_rated = np.argsort(-np.bincount(split.train.items, minlength=split.n_items), kind="stable")[:5]
    assert out["strategy"] == "popularity" and items_of(out) == most_rated.tolist()
    assert np.all(np.diff(out["scores"].to_numpy()) <= 0)


def test_similar_items_are_the_nearest_others_never_the_item_itself(runtime):
    (out,) = runtime.infer([runtime.prepare(job("similar_items", item_id=42, k=runtime.max_k))])
    scores = out["scores"].to_numpy()
    assert 42 not in items_of(out) and len(items_of(out)) == runtime.max_k
    assert out["strategy"] == "item_cosine" and np.all(np.diff(scores) <= 0) and scores.max() <= 1.0 + 1e-5


def test_a_mixed_batch_runs_the_session_once_per_task_group_and_keeps_order(runtime):
    jobs = [job("recommend", user_id=1), job("similar_items", item_id=3), job("recommend", user_id=UNKNOWN_USER),
            job("recommend", user_id=2, k=3), job("similar_items", item_id=4, k=2)]
    before = runtime.session_runs
    outputs = runtime.infer([runtime.prepare(j) for j in jobs])
    assert runtime.session_runs - before == 2  # collaborative + item_cosine; popularity needs no model
    assert [o["strategy"] for o in outputs] == ["collaborative", "item_cosine", "popularity", "collaborative",
                                                "item_cosine"]
    assert [len(items_of(o)) for o in outputs] == [10, 10, 10, 3, 2]
    (alone,) = runtime.infer([runtime.prepare(jobs[3])])
    assert items_of(alone) == items_of(outputs[3])  # batching does not change an answer


@pytest.mark.parametrize("task, inputs, message", [
    (None, {"user_id": 1}, "one of recommend, similar_items"),
    ("rank", {"user_id": 1}, "one of recommend, similar_items; got 'rank'"),
    ("recommend", {}, "needs an integer input `user_id`"),
    ("recommend", {"user_id": "7"}, "`user_id` must be an integer; got str"),
    ("recommend", {"user_id": True}, "`user_id` must be an integer; got bool"),
    ("recommend", {"user_id": -1}, "non-negative"),
    ("recommend", {"user_id": 1, "k": 0}, r"`k` must be within 1\.\.100"),
    ("recommend", {"user_id": 1, "k": 101}, r"`k` must be within 1\.\.100"),
    ("recommend", {"user_id": 1, "k": 2.5}, "`k` must be an integer; got float"),
    ("recommend", {"user_id": 1, "exclude_seen": "yes"}, "`exclude_seen` must be a boolean"),
    ("recommend", {"userid": 1}, "takes inputs user_id, k, exclude_seen; unexpected: userid"),
    ("similar_items", {"item_id": 1, "exclude_seen": True}, "unexpected: exclude_seen"),
    ("similar_items", {"item_id": 400}, r"unknown `item_id` 400: items are 0\.\.399"),
    ("similar_items", {"item_id": -1}, "unknown `item_id` -1"),
])
def test_bad_jobs_are_refused_naming_what_is_valid(runtime, task, inputs, message):
    with pytest.raises(InvalidJob, match=message):
        runtime.prepare(job(task, **inputs))


def test_serves_its_number_and_aliases(runtime):
    assert runtime.serves(runtime.version) and runtime.serves(f"v{runtime.version}") and runtime.serves("production")
    assert not runtime.serves(str(int(runtime.version) + 1))


@pytest.mark.gpu
def test_cuda_gives_the_cpu_answers_when_a_gpu_is_there(recsys_registry, runtime):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider in this ONNX Runtime (CPU machine; install aiaas[gpu] on a GPU host)")
    cuda = RecsysRuntime.from_registry(recsys_registry, "production", providers="cuda")
    assert cuda.providers[0] == "CUDAExecutionProvider"
    jobs = [job("recommend", user_id=u) for u in range(20)] + [job("similar_items", item_id=i) for i in range(5)]
    on_cpu_all = runtime.infer([runtime.prepare(j) for j in jobs])
    for on_gpu, on_cpu in zip(cuda.infer([cuda.prepare(j) for j in jobs]), on_cpu_all, strict=True):
        assert items_of(on_gpu) == items_of(on_cpu)
        np.testing.assert_allclose(on_gpu["scores"].to_numpy(), on_cpu["scores"].to_numpy(), atol=1e-4)


# --- the CLI module ---------------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_submit_arguments(parser)
    return parser.parse_args(argv)


def test_cli_turns_flags_into_jobs_with_expected_answers_for_held_out_users(split):
    specs = cli.jobs_from_args(parse("--recommend", "7", "--similar-items", "3", "--k", "5", "--include-seen",
                                     "--users-sample", "4"))
    assert [s.task for s in specs] == ["recommend", "similar_items"] + ["recommend"] * 4
    assert specs[0].inputs == {"user_id": 7, "k": 5, "exclude_seen": False}
    assert specs[1].inputs == {"item_id": 3, "k": 5}
    held_out = split.held_out()
    assert all(set(s.expected) == held_out[s.inputs["user_id"]] for s in specs[2:])


def test_cli_scores_a_hit_and_describes_a_result_on_one_line(runtime):
    (out,) = runtime.infer([runtime.prepare(job("recommend", user_id=3))])
    result = Result(job_id="j", model="recsys", status="ok", outputs=out)
    assert cli.is_correct(result, [items_of(out)[4], 10**6]) and not cli.is_correct(result, [10**6])
    line = cli.describe(result)
    assert line.startswith("collaborative ") and "(10 items, best" in line and "\n" not in line
    empty = Result(job_id="j", model="recsys", status="ok",
                   outputs={"items": Tensor.from_numpy(np.zeros(0, np.int64)), "strategy": "popularity"})
    assert "no items" in cli.describe(empty)


def test_the_batch_top_k_equals_the_per_row_one():
    """`_tops` slices one conversion per batch; it must give what `_top` gives row by row, also for rows whose
    kept entries are not a prefix (a NaN score in the middle)."""
    from aiaas.recsys.runtime import _top, _tops

    rng = np.random.RandomState(0)
    for _ in range(200):
        rows, width = rng.randint(1, 6), rng.randint(1, 30)
        ranked = rng.randint(0, 1000, (rows, width)).astype(np.int64)
        scores = np.sort(rng.rand(rows, width).astype(np.float32), axis=1)[:, ::-1].copy()
        for row in range(rows):
            scores[row, width - rng.randint(0, width + 1):] = -np.inf
            if rng.rand() < 0.2:
                scores[row, rng.randint(0, width)] = np.nan
        ks = [int(rng.randint(1, width + 5)) for _ in range(rows)]
        assert _tops(ranked, scores, ks, "s") == [_top(ranked[row], scores[row], ks[row], "s") for row in range(rows)]


def test_the_top_k_graph_answers_as_a_graph_that_ranks_every_item(split, tmp_path, monkeypatch):
    """Graphs exported before the `top_k` input ranked all items and stay servable; the partial sort gives the
    same items and scores for every k, task and exclude_seen (TopK orders equal scores by index either way)."""
    import onnxruntime as ort

    from aiaas.recsys import trainer
    from aiaas.recsys.runtime import TOP_K_INPUT

    model, tables = train(split, TrainParams(epochs=2)), ServingTables.from_split(split)
    trainer.export_onnx(model, tmp_path / "top_k.onnx")
    monkeypatch.setattr(trainer, "_rank_top_k", lambda path: None)
    trainer.export_onnx(model, tmp_path / "every_item.onnx")

    session = ort.InferenceSession(str(tmp_path / "top_k.onnx"), providers=["CPUExecutionProvider"])
    assert TOP_K_INPUT in [i.name for i in session.get_overridable_initializers()]
    assert [o.shape[1] for o in session.get_outputs()] == ["top_k"] * 4
    # A service of an earlier version feeds no top_k: the default ranks every item, as the graphs it knew did.
    feeds = {"user_id": np.array([1, 2]), "exclude": np.zeros((2, tables.n_items), bool),
             "item_id": np.array([5])}
    for ranked, everything in zip(session.run(None, feeds), ort.InferenceSession(
            str(tmp_path / "every_item.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds), strict=True):
        np.testing.assert_array_equal(ranked, everything)
    partial, full = (RecsysRuntime((tmp_path / name).read_bytes(), tables, "1", providers="cpu")
                     for name in ("top_k.onnx", "every_item.onnx"))
    assert partial._takes_top_k and not full._takes_top_k

    rng = np.random.RandomState(3)
    for ks in ([1], [10], [100], [3, 100, 7], list(rng.randint(1, 101, 20))):
        jobs = [job("recommend", user_id=int(rng.randint(0, tables.n_users)), k=int(k),
                    exclude_seen=bool(rng.rand() < 0.7)) for k in ks]
        jobs += [job("similar_items", item_id=int(rng.randint(0, tables.n_items)), k=int(k)) for k in ks]
        got, expected = (runtime.infer([runtime.prepare(j) for j in jobs]) for runtime in (partial, full))
        assert got == expected
        assert [len(items_of(o)) for o in got] == [int(k) for k in ks] * 2


def test_the_batch_exclusions_are_each_users_training_items_where_asked(runtime, split):
    tables = ServingTables.from_split(split)
    rng = np.random.RandomState(5)
    for size in (1, 2, 17, 64):
        batch = [runtime.prepare(job("recommend", user_id=int(u), exclude_seen=bool(rng.rand() < 0.6)))
                 for u in rng.randint(0, tables.n_users, size)]
        exclude = runtime._exclusions(batch, np.array([r.subject for r in batch], np.int64))
        for row, request in enumerate(batch):
            expected = np.zeros(tables.n_items, bool)
            if request.exclude_seen:
                expected[tables.seen(request.subject)] = True
            np.testing.assert_array_equal(exclude[row], expected)
