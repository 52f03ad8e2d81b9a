"""Training jobs without Kafka: request parsing, data files, attempt counts, the vision, text and recsys trainers."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from aiaas.contract.envelopes import Job, Tensor, TrainingProgress
from aiaas.errors import InvalidJob, UnknownModelVersion
from aiaas.recsys import trainer as recsys_trainer
from aiaas.recsys.data import SERVING_FILE, RatingsConfig, generate_ratings
from aiaas.recsys.data import load_split as load_ratings_split
from aiaas.recsys.runtime import RecsysRuntime
from aiaas.recsys.training import RecsysTrainer
from aiaas.registry.store import Registry
from aiaas.text.head import ClassifierHead
from aiaas.text.labelled_sentences import TOPICS
from aiaas.text.training import TextTrainer
from aiaas.training.attempts import AttemptCounter
from aiaas.training.data_files import DataLimits, read_data_file
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings
from aiaas.vision.data import load_split
from aiaas.vision.trainer import TrainParams, build
from aiaas.vision.training import VisionTrainer

MAX_BYTES = 1 << 20
ANYWHERE = TrainerSettings(data_roots=[Path("/")], max_data_bytes=MAX_BYTES)
"""For tests of parsing and training: any file may be read (tests of the data roots give their own)."""


def limits(root, max_bytes: int = MAX_BYTES, max_rows: int = 1000) -> DataLimits:
    return DataLimits((Path(root),), max_bytes, max_rows)


def train_job(model: str = "vision", **inputs) -> Job:
    return Job(job_id="t1", kind="train", model=model, inputs=inputs)


def request(model: str = "vision", **inputs) -> TrainingRequest:
    return TrainingRequest.from_job(train_job(model, **inputs), ANYWHERE)


def sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def builtin_split():
    return load_split()


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` built-in training digits as [n, 8, 8] float32 images and int64 labels."""
    split = builtin_split()
    return split.train_x[:n].reshape(n, 8, 8), split.train_y[:n]


# --- TrainingRequest.from_job -------------------------------------------------------------------


def test_no_inputs_means_defaults_builtin_data_and_no_base():
    parsed = request()
    assert (parsed.params, parsed.data, parsed.base_version) == ({}, None, None)


def test_hyper_parameters_are_read_with_their_types():
    parsed = request(epochs=3, learning_rate=1, batch_size=16, seed=0)
    assert parsed.params == {"epochs": 3, "learning_rate": 1.0, "batch_size": 16, "seed": 0}
    assert type(parsed.params["learning_rate"]) is float  # an integer learning rate becomes a float
    assert parsed.data is None  # hyper-parameters are not data columns


@pytest.mark.parametrize("name, value, message", [
    ("epochs", 2.5, "`epochs` must be an integer"),
    ("epochs", "3", "`epochs` must be an integer"),
    ("epochs", True, "`epochs` must be an integer"),
    ("seed", False, "`seed` must be an integer"),
    ("learning_rate", True, "`learning_rate` must be a number"),
    ("learning_rate", "0.1", "`learning_rate` must be a number"),
    ("epochs", 0, "`epochs` must be positive"),
    ("batch_size", -8, "`batch_size` must be positive"),
    ("learning_rate", 0.0, "`learning_rate` must be positive"),
    ("learning_rate", -1e-3, "`learning_rate` must be positive"),
    ("learning_rate", float("nan"), "`learning_rate` must be a finite number"),
    ("learning_rate", float("inf"), "`learning_rate` must be a finite number"),
])
def test_bad_hyper_parameters_are_refused_by_name(name, value, message):
    with pytest.raises(InvalidJob, match=message):
        request(**{name: value})


def test_inline_tensors_become_arrays_and_lists_stay_lists():
    images = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    parsed = request("text", images=Tensor.from_numpy(images), texts=["a b", "c d"], epochs=2)
    assert set(parsed.data) == {"images", "texts"} and parsed.params == {"epochs": 2}
    assert isinstance(parsed.data["images"], np.ndarray)
    np.testing.assert_array_equal(parsed.data["images"], images)
    assert parsed.data["texts"] == ["a b", "c d"]


def test_an_inline_tensor_whose_bytes_do_not_fit_its_shape_is_an_invalid_job():
    broken = Tensor(dtype="float32", shape=[2, 8, 8], data=b"\0" * 8)
    with pytest.raises(InvalidJob, match="`images`.*512"):
        request(images=broken)


def test_data_uri_is_read_and_checked_against_its_sha256(tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, images=np.ones((3, 8, 8), np.float32), labels=np.array([1, 2, 3]))
    parsed = request(data_uri=str(path), data_sha256=sha256_file(path), base_version="production")
    assert set(parsed.data) == {"images", "labels"} and parsed.base_version == "production"
    np.testing.assert_array_equal(parsed.data["labels"], [1, 2, 3])
    with pytest.raises(InvalidJob, match="data_sha256"):
        request(data_uri=str(path), data_sha256="0" * 64)


def test_inline_data_together_with_a_data_uri_is_refused(tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, labels=np.array([1]))
    with pytest.raises(InvalidJob, match="either inline or as `data_uri`"):
        request(data_uri=str(path), labels=Tensor.from_numpy(np.array([1])))


def test_data_uri_and_sha256_must_be_strings(tmp_path):
    with pytest.raises(InvalidJob, match="must be strings"):
        request(data_uri=7)
    with pytest.raises(InvalidJob, match="must be strings"):
        request(data_uri=str(tmp_path / "x.npz"), data_sha256=12)


@pytest.mark.parametrize("given, expected", [("production", "production"), (2, "2"), ("v3", "v3")])
def test_base_version_is_a_version_number_or_alias(given, expected):
    assert request(base_version=given).base_version == expected


def test_base_version_of_another_type_is_refused():
    with pytest.raises(InvalidJob, match="`base_version` must be"):
        request(base_version=["production"])


# --- read_data_file -----------------------------------------------------------------------------


def test_npz_columns_are_plain_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.float32), labels=np.array([4, 5]))
    columns = read_data_file(str(path), None, limits(tmp_path))
    assert set(columns) == {"images", "labels"} and columns["images"].shape == (2, 8, 8)
    np.testing.assert_array_equal(columns["labels"], [4, 5])


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, labels=np.array([{"a": 1}, None], dtype=object))  # savez pickles object arrays
    with pytest.raises(InvalidJob, match="cannot be read.*allow_pickle"):
        read_data_file(str(path), None, limits(tmp_path))


def test_jsonl_rows_become_columns_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hello there", "label": "greeting"}\n\n{"text": "bye now", "label": "farewell"}\n')
    assert read_data_file(str(path), None, limits(tmp_path)) == {
        "text": ["hello there", "bye now"], "label": ["greeting", "farewell"]}


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n[1, 2]\n', "JSONL line 2 is not an object"),
    ('{"text": "a"}\n{not json\n', "cannot be read: JSONDecodeError"),
])
def test_bad_jsonl_is_an_invalid_job(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidJob, match=message):
        read_data_file(str(path), None, limits(tmp_path))


def test_parquet_columns_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"texts": ["one", "two"], "labels": ["a", "b"]}), path)
    assert read_data_file(str(path), None, limits(tmp_path)) == {"texts": ["one", "two"], "labels": ["a", "b"]}


def test_a_file_uri_is_read_percent_encoding_included(tmp_path):
    path = tmp_path / "my data.jsonl"  # Path.as_uri() writes the space as %20
    path.write_text('{"x": 1}\n')
    assert "%20" in path.as_uri()
    assert read_data_file(path.as_uri(), None, limits(tmp_path)) == {"x": [1]}


def test_the_sha256_is_checked_in_either_case(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": 1}\n')
    assert read_data_file(str(path), sha256_file(path).upper(), limits(tmp_path)) == {"x": [1]}
    with pytest.raises(InvalidJob, match="does not match the given data_sha256"):
        read_data_file(str(path), hashlib.sha256(b"other").hexdigest(), limits(tmp_path))


def test_a_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": 1}\n')  # 9 bytes
    assert read_data_file(str(path), None, limits(tmp_path, 9)) == {"x": [1]}
    with pytest.raises(InvalidJob, match="larger than 8 bytes"):
        read_data_file(str(path), None, limits(tmp_path, 8))


def test_an_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x\n1\n")
    with pytest.raises(InvalidJob, match="use .parquet, .npz or .jsonl"):
        read_data_file(str(path), None, limits(tmp_path))


def test_a_missing_file_or_a_folder_is_refused(tmp_path):
    with pytest.raises(InvalidJob, match="does not exist"):
        read_data_file(str(tmp_path / "nope.npz"), None, limits(tmp_path))
    with pytest.raises(InvalidJob, match="not a regular file"):
        read_data_file(tmp_path.as_uri(), None, limits(tmp_path))


@pytest.mark.parametrize("uri", ["s3://bucket/data.parquet", "https://example.com/d.npz", "ftp://host/d.jsonl"])
def test_non_local_uris_are_refused(uri):
    with pytest.raises(InvalidJob, match="only local paths and file:// URIs"):
        read_data_file(uri, None, limits("/"))


def test_a_corrupt_file_is_an_invalid_job(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(InvalidJob, match="d.npz cannot be read"):
        read_data_file(str(path), None, limits(tmp_path))


# --- AttemptCounter -----------------------------------------------------------------------------


def test_starts_are_counted_per_job_across_counters_on_one_folder(tmp_path):
    first, second = AttemptCounter(tmp_path / "attempts"), AttemptCounter(tmp_path / "attempts")
    assert [first.start("a"), second.start("a"), first.start("a")] == [1, 2, 3]
    assert second.start("b") == 1
    assert AttemptCounter(tmp_path / "elsewhere").start("a") == 1


def test_forget_resets_a_job_and_only_that_job(tmp_path):
    counter = AttemptCounter(tmp_path)
    counter.start("a"), counter.start("a"), counter.start("b")
    counter.forget("a")
    counter.forget("never-started")  # no error
    assert (counter.start("a"), counter.start("b")) == (1, 2)


def test_odd_job_ids_stay_inside_the_folder(tmp_path):
    root = tmp_path / "box" / "attempts"
    counter = AttemptCounter(root)
    odd = ["../escape", "../../etc/passwd", "a/b/c", "/abs", "..", ".", "x\\y"]
    assert [counter.start(job_id) for job_id in odd] == [1] * len(odd)
    assert [counter.start(job_id) for job_id in odd] == [2] * len(odd)  # each id keeps its own count
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == len(odd) and all(p.parent == root for p in written)


# --- VisionTrainer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vision_registry(tmp_path_factory) -> Registry:
    """A registry of its own with a quickly trained vision version (2 epochs) as `production`."""
    registry = Registry(tmp_path_factory.mktemp("vision-training") / "registry")
    build(registry, TrainParams(epochs=2))
    return registry


def run_trainer(trainer, registry: Registry, workdir, **inputs):
    """Run `trainer` for a job with `inputs`; the candidate and the progress events."""
    events: list[TrainingProgress] = []
    workdir.mkdir(parents=True, exist_ok=True)
    candidate = trainer.train(request(trainer.model, **inputs), registry, workdir, events.append)
    return candidate, events


def train_vision(registry: Registry, workdir, **inputs):
    """The vision trainer for a job with `inputs`."""
    return run_trainer(VisionTrainer(), registry, workdir, **inputs)


def weights_of(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_vision_training_is_reproducible_for_a_seed(small_vision_registry, tmp_path):
    runs = [train_vision(small_vision_registry, tmp_path / name, epochs=3, seed=seed)[0]
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    first, again, other_seed = (weights_of(c.companions[0]) for c in runs)
    assert runs[0].companions[0].name == "weights.npz" and set(first) == set(again)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert runs[0].metrics["accuracy"] == runs[1].metrics["accuracy"]
    assert any(not np.array_equal(first[name], other_seed[name]) for name in first)
    assert runs[0].params["epochs"] == 3 and runs[0].params["seed"] == 5 and runs[0].parent is None


def test_vision_progress_is_reported_once_per_epoch(small_vision_registry, tmp_path):
    candidate, events = train_vision(small_vision_registry, tmp_path, epochs=3, seed=1)
    assert [e.epoch for e in events] == [1, 2, 3] and {e.epochs for e in events} == {3}
    assert all(e.loss > 0 and e.metric_name == "accuracy" and 0 <= e.metric <= 1 for e in events)
    assert events[-1].step > events[0].step > 0 and events[-1].eta_s == 0
    assert candidate.artifact == tmp_path / "model.onnx" and candidate.artifact.stat().st_size > 0


def test_fine_tuning_starts_from_the_base_versions_weights(small_vision_registry, tmp_path):
    base = small_vision_registry.resolve("vision", "production")
    tuned, _ = train_vision(small_vision_registry, tmp_path / "tuned", base_version="production",
                            learning_rate=1e-9, epochs=1)
    scratch, _ = train_vision(small_vision_registry, tmp_path / "scratch", learning_rate=1e-9, epochs=1)
    assert tuned.parent == base.version and scratch.parent is None
    assert abs(tuned.metrics["accuracy"] - base.metrics["accuracy"]) <= 0.01
    assert scratch.metrics["accuracy"] < base.metrics["accuracy"] - 0.2  # from scratch, a tiny rate learns nothing


def test_fine_tuning_from_an_unknown_version_fails_before_training(small_vision_registry, tmp_path):
    with pytest.raises(UnknownModelVersion):
        train_vision(small_vision_registry, tmp_path, base_version="99", epochs=1)


def test_vision_trains_on_inline_images(small_vision_registry, tmp_path):
    images, labels = digits(200)
    candidate, events = train_vision(small_vision_registry, tmp_path, epochs=2, images=Tensor.from_numpy(images),
                                     labels=Tensor.from_numpy(labels))
    expected = hashlib.sha256(images.reshape(200, 1, 8, 8).tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    assert candidate.data_hash == expected != builtin_split().data_hash()
    assert len(events) == 2 and 0 <= candidate.metrics["accuracy"] <= 1
    assert candidate.scored_on == "reference"  # its own training digits; evaluated on the held-out ones


def test_vision_trains_on_a_jsonl_file_of_image_label_rows(small_vision_registry, tmp_path):
    images, labels = digits(50)
    path = tmp_path / "digits.jsonl"
    path.write_text("".join(json.dumps({"image": img.tolist(), "label": int(y)}) + "\n"
                            for img, y in zip(images, labels, strict=True)))
    candidate, _ = train_vision(small_vision_registry, tmp_path / "work", epochs=1, data_uri=path.as_uri(),
                                data_sha256=sha256_file(path))
    expected = hashlib.sha256(images.reshape(50, 1, 8, 8).tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    assert candidate.data_hash == expected


def _with(images=None, labels=None, **extra):
    good_images, good_labels = digits(20)
    columns = {"images": good_images if images is None else images, "labels": good_labels if labels is None else labels}
    return {name: Tensor.from_numpy(np.asarray(value)) for name, value in (columns | extra).items()}


@pytest.mark.parametrize("inputs, message", [
    (_with(images=np.zeros((20, 7, 7), np.float32)), r"\[N, 8, 8\]"),
    (_with(labels=np.arange(19) % 10), "20 images but 19 labels"),
    (_with(labels=np.full(20, 10)), "digits 0..9"),
    (_with(labels=np.full(20, -1)), "digits 0..9"),
    (_with(images=np.full((20, 8, 8), np.nan, np.float32)), "finite and within 0..16"),
    (_with(images=np.full((20, 8, 8), 17, np.float32)), "finite and within 0..16"),
    (_with(extra=np.zeros(3)), "exactly `images` and `labels`; got extra, images, labels"),
    ({"images": Tensor.from_numpy(np.zeros((20, 8, 8), np.float32))}, "exactly `images` and `labels`; got images"),
])
def test_bad_inline_vision_data_is_an_invalid_job(small_vision_registry, tmp_path, inputs, message):
    with pytest.raises(InvalidJob, match=message):
        train_vision(small_vision_registry, tmp_path, epochs=1, **inputs)
    assert not (tmp_path / "model.onnx").exists()  # refused before any training


# --- TextTrainer --------------------------------------------------------------------------------

NEW_TOPICS = {
    "music": ["the band played three encores after the guitarist broke a string",
              "she practises the violin scales every morning before school",
              "this album mixes jazz piano with slow electronic beats",
              "the choir rehearsed the new hymn for the concert on sunday",
              "he tuned the drums before the recording session began",
              "the orchestra conductor raised his baton and the symphony started",
              "our singer hit the high note in the final chorus",
              "i bought a vinyl record of classic rock songs",
              "the festival lineup has four bands and a famous rapper",
              "learning chords on the ukulele took me a whole summer"],
    "travel": ["our flight to lisbon was delayed by two hours at the gate",
               "we packed light and took the night train across the border",
               "the hotel near the old harbour had a view of the ferries",
               "remember to renew your passport before booking the trip",
               "the tour guide showed us the ruins of the ancient temple",
               "we rented a camper van and drove along the coast for a week",
               "the airport lounge was crowded with tired tourists",
               "she collected stamps in her passport from twelve countries",
               "our luggage was lost during the connecting flight",
               "the hostel offered free walking tours of the city centre"],
    "pets": ["my cat sleeps on the windowsill all afternoon",
             "the puppy chewed through another pair of slippers",
             "we took the dog to the vet for his vaccinations",
             "the goldfish tank needs cleaning every two weeks",
             "our rabbit loves fresh carrots and hay",
             "the kitten chased a ball of yarn under the sofa",
             "he walks the two labradors in the park each evening",
             "the parrot learned to whistle the doorbell sound",
             "she adopted an old greyhound from the animal shelter",
             "the hamster runs on its wheel all night long"],
}


def train_text(registry: Registry, workdir, **inputs):
    """The text trainer for a job with `inputs`."""
    return run_trainer(TextTrainer(), registry, workdir, **inputs)


def test_text_head_trained_on_the_builtin_sentences(text_registry, tmp_path):
    production = text_registry.resolve("text", "production")
    candidate, events = train_text(text_registry, tmp_path)
    assert candidate.metrics["accuracy"] >= 0.85 and candidate.parent == production.version
    files = {"encoder.onnx", "tokenizer.json", "head.npz", "encoder.int8.onnx"}
    assert {p.name for p in (candidate.artifact, *candidate.companions)} == files
    assert all((tmp_path / name).stat().st_size > 0 for name in files)
    base_int8 = text_registry.load_companion(production, "encoder.int8.onnx")
    assert (tmp_path / "encoder.int8.onnx").read_bytes() == base_int8
    assert candidate.metrics["int8_accuracy"] >= 0.85 and candidate.metrics["int8_cosine_min"] >= 0.95
    assert events[-1].epoch == events[-1].epochs == candidate.params["epochs"]
    assert candidate.params["encoder"] == "all-MiniLM-L6-v2"
    assert candidate.scored_on == "reference"
    assert set(candidate.output_profile) == set(TOPICS)  # predicted topics' shares on the held-out sentences



def test_text_training_from_a_version_without_an_int8_graph_derives_the_same_one_a_build_makes(
        text_registry, pre_int8_text_registry, tmp_path):
    production = text_registry.resolve("text", "production")
    candidate, _ = train_text(pre_int8_text_registry, tmp_path / "work", epochs=25)
    assert "encoder.int8.onnx" in {p.name for p in candidate.companions}
    derived = (tmp_path / "work" / "encoder.int8.onnx").read_bytes()
    assert derived == text_registry.load_companion(production, "encoder.int8.onnx")
    assert candidate.metrics["int8_cosine_min"] >= 0.95

def test_text_head_trained_on_the_jobs_own_sentences(text_registry, tmp_path):
    texts = [text for sentences in NEW_TOPICS.values() for text in sentences]
    labels = [label for label, sentences in NEW_TOPICS.items() for _ in sentences]
    candidate, events = train_text(text_registry, tmp_path, texts=texts, labels=labels, epochs=100)
    head = ClassifierHead.from_bytes((tmp_path / "head.npz").read_bytes())
    assert set(head.labels) == set(NEW_TOPICS) and len(head.labels) == 3
    assert candidate.metrics["held_out"] == 6  # a seeded fifth of the 30 pairs
    assert candidate.metrics["accuracy"] >= 0.8
    assert [e.epoch for e in events] == [25, 50, 75, 100] and events[-1].metric == candidate.metrics["accuracy"]
    assert candidate.scored_on == "job_data"  # a fifth of its own sentences: never production by itself


@pytest.mark.parametrize("inputs, message", [
    ({"texts": ["a"] * 9, "labels": ["x", "y"] * 4 + ["x"]}, "9 texts and 9 labels"),
    ({"texts": ["a"] * 12, "labels": ["x", "y"] * 5}, "12 texts and 10 labels"),
    ({"texts": ["a"] * 12, "labels": ["x"] * 12}, "at least two different labels"),
    ({"texts": ["a"] * 12}, "needs `texts` and `labels`; got texts"),
    ({"texts": ["a"] * 12, "labels": ["x", "y"] * 6, "notes": ["n"]}, "got labels, notes, texts"),
])
def test_bad_text_data_is_refused_before_the_registry_is_touched(tmp_path, inputs, message):
    empty = Registry(tmp_path / "empty")
    with pytest.raises(InvalidJob, match=message):
        train_text(empty, tmp_path, **inputs)


# --- RecsysTrainer ------------------------------------------------------------------------------

SMALL_RATINGS = RatingsConfig(n_users=200, n_items=100, seed=5)
"""A smaller generated data set of its own (other tastes, ids inside the built-in id space)."""


@pytest.fixture(scope="module")
def recsys_training_registry(tmp_path_factory) -> Registry:
    """A registry of its own with the built recsys version (100 steps, the built-in ratings) as `production`."""
    registry = Registry(tmp_path_factory.mktemp("recsys-training") / "registry")
    recsys_trainer.build(registry)
    return registry


def train_recsys(registry: Registry, workdir, **inputs):
    """The recsys trainer for a job with `inputs`."""
    return run_trainer(RecsysTrainer(), registry, workdir, **inputs)


@pytest.fixture(scope="module")
def recsys_default_candidate(recsys_training_registry, tmp_path_factory):
    """A training job with no inputs: the built-in ratings, the default hyper-parameters."""
    return train_recsys(recsys_training_registry, tmp_path_factory.mktemp("recsys-default"))


def small_ratings(order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ratings = generate_ratings(SMALL_RATINGS)
    order = np.arange(len(ratings)) if order is None else order
    return {"user_id": ratings.users[order], "item_id": ratings.items[order], "rating": ratings.ratings[order]}


def factors_of(candidate) -> dict[str, np.ndarray]:
    return recsys_trainer.read_factors(candidate.artifact.read_bytes())


def test_recsys_training_is_reproducible_for_a_seed(recsys_training_registry, tmp_path):
    runs = [train_recsys(recsys_training_registry, tmp_path / name, epochs=20, seed=seed)[0]
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    first, again, other_seed = (factors_of(c) for c in runs)
    for name in recsys_trainer.FACTOR_NAMES:
        np.testing.assert_array_equal(first[name], again[name])
    assert runs[0].metrics["hit_rate_at_10"] == runs[1].metrics["hit_rate_at_10"]
    assert not np.array_equal(first["user_factors"], other_seed["user_factors"])
    assert runs[0].params["epochs"] == 20 and runs[0].params["seed"] == 5 and runs[0].parent is None
    assert runs[0].data_hash == load_ratings_split().data_hash()  # the built-in ratings, as `build`


def test_recsys_progress_is_reported_every_ten_steps_and_at_the_end(recsys_training_registry, tmp_path):
    candidate, events = train_recsys(recsys_training_registry, tmp_path, epochs=25, seed=1)
    assert [e.epoch for e in events] == [e.step for e in events] == [10, 20, 25] and {e.epochs for e in events} == {25}
    assert all(e.metric_name == "hit_rate_at_10" and 0 <= e.metric <= 1 and e.loss > 0 for e in events)
    assert events[0].loss > events[-1].loss and events[-1].eta_s == 0
    assert events[-1].metric == pytest.approx(candidate.metrics["hit_rate_at_10"], abs=0.01)  # torch vs. served graph


def test_the_default_job_gives_builds_model_with_builds_artifacts(recsys_training_registry, recsys_default_candidate):
    candidate, events = recsys_default_candidate
    built = recsys_training_registry.resolve("recsys", "production")
    assert [p.name for p in (candidate.artifact, *candidate.companions)] == ["recsys.onnx", SERVING_FILE]
    assert candidate.data_hash == built.data_hash and candidate.params == built.params
    for name in ("hit_rate_at_10", "popularity_hit_rate_at_10"):
        assert candidate.metrics[name] == built.metrics[name]  # same data, same seed, same code path
    assert candidate.metrics["held_out_users"] == 1000 and len(events) == 10
    assert candidate.scored_on == "reference"


def test_the_trained_candidate_serves_through_the_runtime_and_beats_popularity(recsys_default_candidate, tmp_path):
    candidate, _ = recsys_default_candidate
    registry = Registry(tmp_path / "registry")
    registry.register("recsys", candidate.artifact, companions=candidate.companions, metrics=candidate.metrics,
                      params=candidate.params, data_hash=candidate.data_hash, parent=candidate.parent,
                      output_profile=candidate.output_profile)
    runtime = RecsysRuntime.from_registry(registry, "production", providers="cpu")
    assert runtime.output_profile == candidate.output_profile and len(candidate.output_profile) >= 3
    served = recsys_trainer.hit_rates(runtime, load_ratings_split())
    assert served["hit_rate_at_10"] == candidate.metrics["hit_rate_at_10"]
    assert served["hit_rate_at_10"] >= 1.5 * served["popularity_hit_rate_at_10"], served
    (out,) = runtime.infer([runtime.prepare(Job(job_id="j", model="recsys", task="recommend", inputs={"user_id": 3}))])
    assert out["strategy"] == "collaborative" and len(out["items"].to_numpy()) == 10


def test_warm_start_begins_from_the_base_versions_factors(recsys_training_registry, tmp_path):
    base = recsys_training_registry.resolve("recsys", "production")
    warm, _ = train_recsys(recsys_training_registry, tmp_path / "warm", base_version="production",
                           learning_rate=1e-9, epochs=1)
    scratch, _ = train_recsys(recsys_training_registry, tmp_path / "scratch", learning_rate=1e-9, epochs=1)
    assert warm.parent == base.version and scratch.parent is None
    assert abs(warm.metrics["hit_rate_at_10"] - base.metrics["hit_rate_at_10"]) <= 0.01
    assert scratch.metrics["hit_rate_at_10"] < base.metrics["popularity_hit_rate_at_10"]  # a tiny rate learns nothing


def test_warm_start_from_a_graph_without_named_factors_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "folded",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [None])])
    path = tmp_path / "recsys.onnx"
    onnx.save(helper.make_model(graph), path)
    registry = Registry(tmp_path / "registry")
    registry.register("recsys", path)
    with pytest.raises(InvalidJob, match="train without `base_version`"):
        train_recsys(registry, tmp_path / "work", base_version="production", epochs=1)
    with pytest.raises(UnknownModelVersion):
        train_recsys(registry, tmp_path / "work", base_version="7", epochs=1)


def test_recsys_trains_on_the_jobs_own_ratings(recsys_training_registry, tmp_path):
    columns = small_ratings()
    candidate, events = train_recsys(recsys_training_registry, tmp_path / "inline", epochs=60,
                                     **{name: Tensor.from_numpy(values) for name, values in columns.items()})
    assert candidate.data_hash != load_ratings_split().data_hash()
    assert candidate.params["data"] == {"source": "job", "ratings": len(columns["rating"]), "users": 200, "items": 100}
    assert candidate.metrics["held_out_users"] == 200  # one of every user's ratings (each has 8+)
    assert candidate.scored_on == "job_data"  # a hold-out of its own ratings: never production by itself
    assert candidate.metrics["hit_rate_at_10"] >= 1.3 * candidate.metrics["popularity_hit_rate_at_10"]
    assert [e.step for e in events] == [10, 20, 30, 40, 50, 60]
    registry = Registry(tmp_path / "registry")
    registry.register("recsys", candidate.artifact, companions=candidate.companions)
    runtime = RecsysRuntime.from_registry(registry, providers="cpu")
    assert runtime.n_items == 400  # the built-in id space: items the data never rated are ranked too
    known, absent = (Job(job_id=str(u), model="recsys", task="recommend", inputs={"user_id": u}) for u in (3, 500))
    assert [out["strategy"] for out in runtime.infer([runtime.prepare(known), runtime.prepare(absent)])] == [
        "collaborative", "popularity"]  # a user the data does not name gets the popular items


def test_recsys_ratings_file_rows_in_any_order_give_the_same_split(recsys_training_registry, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    inline, _ = train_recsys(recsys_training_registry, tmp_path / "inline", epochs=10,
                             **{name: Tensor.from_numpy(values) for name, values in small_ratings().items()})
    shuffled = small_ratings(np.random.default_rng(0).permutation(len(generate_ratings(SMALL_RATINGS))))
    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table(shuffled), path)
    from_file, _ = train_recsys(recsys_training_registry, tmp_path / "file", epochs=10, data_uri=str(path))
    assert from_file.data_hash == inline.data_hash
    assert from_file.metrics["hit_rate_at_10"] == inline.metrics["hit_rate_at_10"]


def _ratings_with(**changes):
    columns = {"user_id": np.repeat(np.arange(12), 3), "item_id": np.tile(np.arange(3), 12),
               "rating": np.full(36, 4.0, np.float32)} | changes
    return {name: (Tensor.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value)
            for name, value in columns.items()}


@pytest.mark.parametrize("inputs, message", [
    (_ratings_with(rating=np.full(35, 4.0, np.float32)), "36 user_id, 36 item_id and 35 rating"),
    ({k: v for k, v in _ratings_with().items() if k != "rating"},
     "exactly `user_id`, `item_id` and `rating`; got item_id, user_id"),
    (_ratings_with(weight=np.ones(36)), "got item_id, rating, user_id, weight"),
    (_ratings_with(user_id=np.repeat(np.arange(1000, 1012), 3)), r"`user_id` must be within 0..999"),
    (_ratings_with(item_id=np.tile(np.array([-1, 0, 1]), 12)), r"`item_id` must be within 0..399"),
    (_ratings_with(item_id=np.tile(np.arange(3.0), 12)), "`item_id` must be integers"),
    (_ratings_with(user_id="0 1 2"), "not a single string"),
    (_ratings_with(rating=np.full(36, np.nan)), "finite and ≥ 0"),
    (_ratings_with(rating=np.full(36, -1.0)), "finite and ≥ 0"),
    (_ratings_with(rating=["good"] * 36), "`rating` must be numbers"),
    (_ratings_with(user_id=np.ones(36, bool)), "`user_id` must be integers"),
    (_ratings_with(item_id=np.zeros(36, np.int64)), "more than once, e.g. user 0, item 0"),
    (_ratings_with(user_id=np.repeat(np.arange(18), 2), item_id=np.tile(np.arange(2), 18)),
     "0 users have 3\\+ ratings; at least 10"),
    ({"batch_size": 64}, "full-batch"),
])
def test_bad_recsys_jobs_are_refused_before_the_registry_is_touched(tmp_path, inputs, message):
    empty = Registry(tmp_path / "empty")
    with pytest.raises(InvalidJob, match=message):
        train_recsys(empty, tmp_path / "work", epochs=1, base_version="production", **inputs)
    assert not (tmp_path / "work" / "recsys.onnx").exists()
