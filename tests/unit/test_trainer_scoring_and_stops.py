"""Versions scored on a job's own data never reach production by themselves; training loops stop between steps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import TimeLimitExceeded, TrainingInterrupted
from aiaas.recsys import trainer as recsys_trainer
from aiaas.recsys.data import RatingsConfig
from aiaas.recsys.data import load_split as load_ratings
from aiaas.recsys.training import RecsysTrainer
from aiaas.registry.store import Registry
from aiaas.text.trainer import HeadParams, train_head
from aiaas.training.promotion import PromotionPolicy
from aiaas.training.protocol import SCORED_ON, Candidate
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings
from aiaas.training.stopping import StopSignal
from aiaas.vision import trainer as vision_trainer
from aiaas.vision.data import load_split
from aiaas.vision.training import VisionTrainer


class Interrupt(Exception):
    pass


class StopAfter:
    """An `interrupt` hook that lets `n` steps through and raises at the next one."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.n:
            raise Interrupt


def parse(model: str, **inputs) -> TrainingRequest:
    return TrainingRequest.from_job(Job(job_id="t", kind="train", model=model, inputs=inputs),
                                    TrainerSettings(data_roots=[]))


# --- promotion -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_a_version_scored_on_job_data_is_never_made_production_by_the_policy(tmp_path, mode):
    empty = Registry(tmp_path / "registry")  # no production yet: `auto` would promote anything else
    policy = PromotionPolicy(metric="accuracy", mode=mode)
    assert policy.aliases_for(empty, "vision", {"accuracy": 1.0}, scored_on_job_data=True) == ("staging",)
    assert policy.aliases_for(empty, "vision", {"accuracy": 1.0}) == (
        ("staging",) if mode == "never" else ("production",))


def test_a_candidate_counts_as_scored_on_job_data_unless_its_trainer_says_otherwise(tmp_path):
    assert Candidate(tmp_path / "m.onnx", {}, {}, "hash").scored_on == "job_data"


# --- vision --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_registry(tmp_path_factory) -> Registry:
    registry = Registry(tmp_path_factory.mktemp("vision-scoring") / "registry")
    vision_trainer.build(registry, vision_trainer.TrainParams(epochs=1))
    return registry


def train_vision(registry: Registry, workdir, stop: StopSignal | None = None, **inputs) -> Candidate:
    workdir.mkdir(parents=True, exist_ok=True)
    return VisionTrainer().train(parse("vision", **inputs), registry, workdir, lambda event: None, stop)


def test_vision_trained_on_the_held_out_digits_is_scored_on_job_data(vision_registry, tmp_path):
    split = load_split()
    own = split.train_x[:100].reshape(-1, 8, 8)
    # One held-out digit, barely changed.
    leaked = np.concatenate([own, np.clip(split.test_x[:1].reshape(1, 8, 8) + 0.2, 0, 16)])
    labels = np.concatenate([split.train_y[:100], split.test_y[:1]])
    clean = train_vision(vision_registry, tmp_path / "clean", epochs=1, images=Tensor.from_numpy(own),
                         labels=Tensor.from_numpy(split.train_y[:100]))
    dirty = train_vision(vision_registry, tmp_path / "dirty", epochs=1, images=Tensor.from_numpy(leaked),
                         labels=Tensor.from_numpy(labels))
    assert (clean.scored_on, dirty.scored_on) == ("reference", "job_data")
    assert train_vision(vision_registry, tmp_path / "builtin", epochs=1).scored_on == "reference"


def test_vision_fine_tuned_from_a_version_scored_on_job_data_inherits_it(vision_registry, tmp_path):
    production = vision_registry.resolve("vision", "production")
    folder = vision_registry.root / "vision" / f"v{production.version}"
    tainted = vision_registry.register("vision", folder / production.artifact, aliases=("staging",),
                                       companions=(folder / "weights.npz",), params={SCORED_ON: "job_data"})
    candidate = train_vision(vision_registry, tmp_path, epochs=1, base_version=str(tainted.version))
    assert candidate.scored_on == "job_data" and candidate.parent == tainted.version


def test_vision_training_stops_between_steps(tmp_path):
    split = load_split()
    stop = StopAfter(5)
    with pytest.raises(Interrupt):
        vision_trainer.train(split, vision_trainer.TrainParams(epochs=50), interrupt=stop)
    assert stop.calls == 6  # five optimiser steps, then the sixth check raised


def test_the_vision_trainer_checks_its_stop_signal(vision_registry, tmp_path):
    stopped = StopSignal()
    stopped.stop()
    with pytest.raises(TrainingInterrupted):
        train_vision(vision_registry, tmp_path / "a", stopped, epochs=50)
    with pytest.raises(TimeLimitExceeded):
        train_vision(vision_registry, tmp_path / "b", StopSignal(0.0), epochs=50)
    assert not (tmp_path / "a" / "model.onnx").exists()  # nothing was exported


# --- recsys --------------------------------------------------------------------------------------

SMALL = RatingsConfig(n_users=60, n_items=40, median_activity=8, min_activity=4, max_activity=12)


def test_recsys_training_stops_between_steps():
    stop = StopAfter(3)
    with pytest.raises(Interrupt):
        recsys_trainer.train(load_ratings(SMALL), recsys_trainer.TrainParams(epochs=100), interrupt=stop)
    assert stop.calls == 4


def test_recsys_warm_started_from_a_version_scored_on_job_data_inherits_it(tmp_path):
    registry = Registry(tmp_path / "registry")
    built = recsys_trainer.build(registry, recsys_trainer.TrainParams(epochs=2))
    folder = registry.root / "recsys" / f"v{built.version}"
    tainted = registry.register("recsys", folder / built.artifact, aliases=("staging",),
                                companions=tuple(folder / name for name in built.files),
                                params=built.params | {SCORED_ON: "job_data"})
    work = tmp_path / "work"
    work.mkdir()
    request = parse("recsys", base_version=str(tainted.version), epochs=1)
    warm = RecsysTrainer().train(request, registry, work, lambda event: None)
    assert warm.scored_on == "job_data" and warm.parent == tainted.version
    shutil.rmtree(work)
    work.mkdir()
    clean = RecsysTrainer().train(parse("recsys", base_version=str(built.version), epochs=1), registry, work,
                                  lambda event: None)
    assert clean.scored_on == "reference"


# --- text ----------------------------------------------------------------------------------------


def test_text_head_training_stops_between_epochs():
    rng = np.random.default_rng(0)
    stop = StopAfter(7)
    with pytest.raises(Interrupt):
        train_head(rng.normal(size=(20, 8)).astype(np.float32), ["a", "b"] * 10, HeadParams(epochs=300),
                   interrupt=stop)
    assert stop.calls == 8
