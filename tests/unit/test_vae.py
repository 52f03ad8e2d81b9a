"""The vae model: training, the served ONNX graph behind VaeRuntime, its CLI and its trainer (no Kafka)."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch

from aiaas.contract.envelopes import Job, Result, Tensor
from aiaas.errors import AiaasError, InvalidJob
from aiaas.metrics.drift import OutputDrift
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings
from aiaas.vae import cli
from aiaas.vae.model import ConditionalVAE
from aiaas.vae.runtime import ANOMALY_THRESHOLD, ANOMALY_THRESHOLD_GIVEN_DIGIT, VaeRuntime
from aiaas.vae.trainer import WEIGHTS_FILE, TrainParams, train
from aiaas.vae.training import VaeTrainer
from aiaas.vision.data import load_split


def job(task: str | None, job_id: str = "j", **inputs) -> Job:
    return Job(job_id=job_id, model="vae", task=task, inputs=inputs)


def image_job(task: str, image: np.ndarray, **inputs) -> Job:
    return job(task, image=Tensor.from_numpy(image.astype(np.float32)), **inputs)


@pytest.fixture(scope="module")
def runtime(vae_registry) -> VaeRuntime:
    return VaeRuntime.from_registry(vae_registry, "production", providers="cpu")


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    split = load_split()
    return split.test_x[:, 0], split.test_y


def run(runtime: VaeRuntime, *jobs: Job) -> list[dict]:
    return runtime.infer([runtime.prepare(j) for j in jobs])


# --- the version's metrics -------------------------------------------------------------------------

def test_the_version_records_its_elbo_generation_and_anomaly_numbers(vae_registry):
    metrics = vae_registry.resolve("vae", "production").metrics
    assert -140 < metrics["elbo"] < -60  # nats per image: a lower bound of log p(image | digit)
    assert metrics["class_match"] > 0.7  # the classifier sees the digit asked for in most generated images
    assert metrics["classifier_accuracy"] > 0.95 and metrics["digit_accuracy"] > 0.9
    assert metrics[ANOMALY_THRESHOLD] > 0 and metrics[ANOMALY_THRESHOLD_GIVEN_DIGIT] > 0


# --- generate ----------------------------------------------------------------------------------------

def test_the_same_seed_draws_the_same_digits_and_another_seed_others(runtime):
    first, again, other = run(runtime, job("generate", n=4, seed=7), job("generate", n=4, seed=7),
                              job("generate", n=4, seed=8))
    assert first["images"].shape == [4, 8, 8] and first["seed"] == 7
    np.testing.assert_array_equal(first["images"].to_numpy(), again["images"].to_numpy())
    assert not np.allclose(first["images"].to_numpy(), other["images"].to_numpy())
    images = first["images"].to_numpy()
    assert images.min() >= 0 and images.max() <= 16


def test_a_job_without_a_seed_draws_from_its_id_so_a_redelivery_draws_the_same(runtime):
    one, same, other = run(runtime, job("generate", "job-a", n=3), job("generate", "job-a", n=3),
                           job("generate", "job-b", n=3))
    assert one["seed"] == same["seed"] != other["seed"]
    np.testing.assert_array_equal(one["images"].to_numpy(), same["images"].to_numpy())


def test_generated_digits_are_the_digit_asked_for_as_the_model_itself_reads_them(runtime):
    (generated,) = run(runtime, job("generate", n=20, digit=3, seed=1))
    assert generated["digits"].to_numpy().tolist() == [3] * 20
    read = run(runtime, *(image_job("anomaly_score", image) for image in generated["images"].to_numpy()))
    assert np.mean([out["digit"] == 3 for out in read]) >= 0.8
    assert not any(out["anomalous"] for out in read)


def test_without_a_digit_each_image_is_of_a_random_digit_that_the_output_names(runtime):
    (generated,) = run(runtime, job("generate", n=30, seed=2))
    assert len(set(generated["digits"].to_numpy().tolist())) > 3


# --- encode, reconstruct, anomaly_score ----------------------------------------------------------------

def test_encode_gives_the_posterior_and_the_most_likely_digit(runtime, held_out):
    images, labels = held_out
    outs = run(runtime, *(image_job("encode", image) for image in images[:50]))
    assert outs[0]["mean"].shape == [runtime.latent_size] and (outs[0]["variance"].to_numpy() > 0).all()
    assert np.mean([o["digit"] for o in outs] == labels[:50]) > 0.85
    (given,) = run(runtime, image_job("encode", images[0], digit=int(labels[0])))
    assert given["digit"] == labels[0]


def test_reconstructions_are_close_to_the_images(runtime, held_out):
    images, _ = held_out
    outs = run(runtime, *(image_job("reconstruct", image) for image in images[:50]))
    errors = [np.abs(o["image"].to_numpy() - image).mean() for o, image in zip(outs, images[:50], strict=True)]
    assert np.mean(errors) < 2.0  # mean absolute error in ink counts of 0..16
    assert all(o["reconstruction_nll"] > 0 for o in outs)


def test_anomaly_scores_flag_noise_and_flat_ink_but_few_held_out_digits(runtime, held_out):
    # A blank page is not among them: a likelihood rates so simple an image as likely (docs/models.md says so).
    images, _ = held_out
    digits = run(runtime, *(image_job("anomaly_score", image) for image in images))
    noise = np.random.default_rng(0).uniform(0, 16, (50, 8, 8))
    odd = run(runtime, *(image_job("anomaly_score", image) for image in [*noise, np.full((8, 8), 8.0),
                                                                           np.full((8, 8), 16.0)]))
    assert np.mean([o["anomalous"] for o in digits]) <= 0.02  # the threshold is their 99th percentile
    assert all(o["anomalous"] for o in odd)
    assert min(o["score"] for o in odd) > np.median([o["score"] for o in digits])
    first = digits[0]  # -log Σ_d exp(ELBO_d) / 10 lies between the best digit's -ELBO and that plus log 10
    best = first["reconstruction_nll"] + first["kl"]
    assert best - 1e-3 <= first["score"] <= best + np.log(10) + 1e-3


def test_the_version_records_its_anomaly_rate_and_a_stream_with_noise_in_it_reads_as_drift(runtime, held_out):
    profile = runtime.output_profile
    assert set(profile) == {"anomalous", "normal"} and 0.005 <= profile["anomalous"] <= 0.02  # 99th percentiles
    images, _ = held_out
    watched = OutputDrift(profile, window=len(images))
    for out in run(runtime, *(image_job("anomaly_score", image) for image in images)):
        watched.add_many(runtime.output_categories(out))
    assert watched.distance() < 0.05
    noise = np.random.default_rng(1).uniform(0, 16, (len(images) // 10, 8, 8))
    for out in run(runtime, *(image_job("anomaly_score", image) for image in noise)):  # a tenth of the window
        watched.add_many(runtime.output_categories(out))
    # Eleven times the anomaly rate; the distance moves less for a rare category (docs/observe.md: alert on the share)
    assert watched.shares()["anomalous"] > 0.09 and watched.distance() > 0.15
    (encoded,) = run(runtime, image_job("encode", images[0]))
    assert runtime.output_categories(encoded) == []


def test_a_mixed_batch_answers_each_job_as_it_would_be_answered_alone(runtime, held_out):
    images, _ = held_out
    jobs = [job("generate", n=2, seed=5), image_job("anomaly_score", images[0]), image_job("encode", images[1]),
            job("generate", n=1, digit=7, seed=6), image_job("reconstruct", images[2], digit=2)]
    together = run(runtime, *jobs)
    for single, alone in zip(together, (run(runtime, j)[0] for j in jobs), strict=True):
        assert single.keys() == alone.keys()
        for name, value in single.items():
            if isinstance(value, Tensor):
                np.testing.assert_allclose(value.to_numpy(), alone[name].to_numpy(), rtol=1e-4, atol=1e-4)
            else:
                assert value == pytest.approx(alone[name], rel=1e-4)


@pytest.mark.parametrize(("bad", "message"), [
    (job(None), "need a task"),
    (job("classify"), "need a task, one of generate"),
    (job("generate", n=2, k=3), "unexpected: k"),
    (job("generate", n=0), "`n` must be within 1..64"),
    (job("generate", n=65), "`n` must be within 1..64"),
    (job("generate", n=True), "`n` must be an integer"),
    (job("generate", n=2.0), "`n` must be an integer"),
    (job("generate", digit=10), "`digit` must be a digit 0..9"),
    (job("generate", digit=-1), "`digit` must be a digit 0..9"),
    (job("generate", seed=-1), "`seed` must be within"),
    (job("generate", seed=2**63), "`seed` must be within"),
    (job("encode"), "needs an input `image`"),
    (job("encode", image="pixels"), "needs an input `image`"),
    (image_job("encode", np.zeros((4, 4))), "numeric [8, 8] tensor"),
    (image_job("anomaly_score", np.full((8, 8), np.nan)), "finite and within 0..16"),
    (image_job("anomaly_score", np.full((8, 8), 17.0)), "finite and within 0..16"),
    (image_job("reconstruct", np.zeros((8, 8)), digit="3"), "`digit` must be an integer"),
])
def test_bad_jobs_are_refused_with_a_reason(runtime, bad, message):
    with pytest.raises(InvalidJob, match=message.replace("[", r"\[").replace("]", r"\]")):
        runtime.prepare(bad)


def test_an_image_whose_bytes_do_not_fit_its_shape_is_refused(runtime):
    broken = Tensor(dtype="float32", shape=[8, 8], data=b"\0" * 12)
    with pytest.raises(InvalidJob, match="`image`"):
        runtime.prepare(job("encode", image=broken))


def test_a_float64_image_beyond_float32s_range_is_refused_not_made_infinite(runtime):
    with pytest.raises(InvalidJob, match="within 0..16"):
        runtime.prepare(job("encode", image=Tensor.from_numpy(np.full((8, 8), 1e300))))


# --- the graph is the model ----------------------------------------------------------------------------------

def test_the_exported_graph_computes_what_the_pytorch_model_does(tmp_path, held_out):
    from aiaas.vae.trainer import export_onnx

    torch.manual_seed(0)
    model = ConditionalVAE(latent=4).eval()
    export_onnx(model, tmp_path / "vae.onnx")
    served = VaeRuntime((tmp_path / "vae.onnx").read_bytes(), "1", providers="cpu")
    images, labels = held_out[0][:16], held_out[1][:16]
    noise = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    nll, kl = served.elbo_terms(images, labels, noise)
    with torch.no_grad():
        want_nll, want_kl = model.loss_terms(torch.from_numpy(images), torch.from_numpy(labels),
                                             torch.from_numpy(noise))
    np.testing.assert_allclose(nll, want_nll.numpy(), rtol=1e-4)
    np.testing.assert_allclose(kl, want_kl.numpy(), rtol=1e-4, atol=1e-5)


def test_training_is_deterministic_for_a_seed():
    split = load_split()
    params = TrainParams(epochs=1, latent_size=2)
    first, again = train(split, params), train(split, params)
    for name, value in first.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[name], rtol=0, atol=0)


# --- the CLI -----------------------------------------------------------------------------------------------------

def submit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_submit_arguments(parser)
    parser.add_argument("--wait", action="store_true")
    return parser.parse_args(argv)


def test_the_cli_sends_one_generate_job_and_sampled_scoring_jobs_with_expected_answers():
    specs = cli.jobs_from_args(submit_args("--generate", "16", "--digit", "3", "--seed", "4", "--digits-sample", "5",
                                           "--noise-sample", "2"))
    assert specs[0].task == "generate" and specs[0].inputs == {"n": 16, "digit": 3, "seed": 4}
    assert [s.expected for s in specs[1:]] == [False] * 5 + [True] * 2
    assert all(s.task == "anomaly_score" for s in specs[1:])


def test_the_cli_says_what_to_give(tmp_path):
    with pytest.raises(AiaasError, match="nothing to send: give --generate N"):
        cli.jobs_from_args(submit_args())
    with pytest.raises(AiaasError, match="give --generate N"):
        cli.jobs_from_args(submit_args("--out", str(tmp_path / "g.png"), "--digits-sample", "3"))
    with pytest.raises(AiaasError, match="the samples bring their own"):
        cli.jobs_from_args(submit_args("--digit", "3", "--digits-sample", "3"))
    args = submit_args("--generate", "4", "--out", str(tmp_path / "g.png"))
    cli.jobs_from_args(args)
    assert args.wait  # --out waits for the digits


def test_the_png_grid_shows_each_digit_dark_on_white():
    from PIL import Image

    images = np.zeros((5, 8, 8), np.float32)
    images[:, 2, 3] = 16.0  # one full-ink pixel in each digit
    grid = Image.open(io.BytesIO(cli.digit_grid_png(images)))
    assert grid.format == "PNG" and grid.mode == "L"
    side = 8 * 4 + 2
    assert grid.size == (3 * side, 2 * side)  # 5 digits: 3 columns, 2 rows
    pixels = np.asarray(grid)
    assert pixels[1 + 2 * 4, 1 + 3 * 4] == 0 and pixels[1, 1] == 255  # the ink pixel is black, the rest white
    assert (pixels == 0).sum() == 5 * 16


def test_save_results_writes_every_generated_digit(tmp_path):
    from PIL import Image

    images = Tensor.from_numpy(np.full((3, 8, 8), 8.0, np.float32))
    result = Result(job_id="j", model="vae", status="ok", outputs={"images": images, "seed": 1})
    out = tmp_path / "grid.png"
    cli.save_results(submit_args("--generate", "3", "--out", str(out), "--wait"), [result])
    assert Image.open(out).size == (2 * 34, 2 * 34)


# --- training jobs ---------------------------------------------------------------------------------------------

def training_request(**inputs) -> TrainingRequest:
    return TrainingRequest.from_job(Job(job_id="t", model="vae", inputs=inputs), TrainerSettings(),
                                    VaeTrainer.hyper_parameters)


def test_a_training_job_reports_its_loss_terms_and_is_scored_on_the_held_out_digits(vae_registry, tmp_path):
    events = []
    candidate = VaeTrainer().train(training_request(epochs=2, latent_size=3, beta=0.5), vae_registry, tmp_path,
                                   events.append)
    assert [e.epoch for e in events] == [1, 2]
    assert set(events[0].loss_terms) == {"reconstruction_nll", "kl"} and events[0].metric_name == "elbo"
    assert candidate.metrics["elbo"] < 0 and candidate.scored_on == "reference"
    assert candidate.params["latent_size"] == 3 and candidate.params["beta"] == 0.5
    assert VaeRuntime(candidate.artifact.read_bytes(), "c", providers="cpu").latent_size == 3
    assert [p.name for p in candidate.companions] == [WEIGHTS_FILE]
    assert set(candidate.output_profile) == {"anomalous", "normal"}


def test_fine_tuning_keeps_the_base_latent_size(vae_registry, tmp_path):
    base = vae_registry.resolve("vae", "production")
    with pytest.raises(InvalidJob, match="keeps it"):
        VaeTrainer().train(training_request(base_version="production", latent_size=base.params["latent_size"] + 1),
                           vae_registry, tmp_path, lambda _: None)
    candidate = VaeTrainer().train(training_request(base_version="production", epochs=1), vae_registry, tmp_path,
                                   lambda _: None)
    assert candidate.parent == base.version and candidate.params["latent_size"] == base.params["latent_size"]


@pytest.mark.parametrize(("inputs", "message"), [
    ({"latent_size": 65}, "`latent_size` must be within 1..64"),
    ({"beta": 1e300}, "`beta` must be within 0..1000"),
    ({"images": Tensor.from_numpy(np.zeros((3, 8, 8), np.float32))}, "needs exactly `images` and `labels`"),
    ({"images": Tensor.from_numpy(np.full((2, 8, 8), 20, np.float32)), "labels": Tensor.from_numpy(np.array([1, 2]))},
     "within 0..16"),
])
def test_bad_training_jobs_are_refused_with_a_reason(vae_registry, tmp_path, inputs, message):
    with pytest.raises(InvalidJob, match=message):
        VaeTrainer().train(training_request(**inputs), vae_registry, tmp_path, lambda _: None)


def test_a_run_that_diverges_fails_and_says_what_to_change(vae_registry, tmp_path):
    from aiaas.errors import TrainingFailed

    with pytest.raises(TrainingFailed, match="diverged .* lower learning_rate or beta"):
        VaeTrainer().train(training_request(epochs=3, learning_rate=1e12), vae_registry, tmp_path, lambda _: None)


def test_a_job_training_on_the_held_out_digits_is_scored_on_job_data(vae_registry, tmp_path):
    split = load_split()
    candidate = VaeTrainer().train(
        training_request(epochs=1, images=Tensor.from_numpy(split.test_x[:40, 0]),
                         labels=Tensor.from_numpy(split.test_y[:40])), vae_registry, tmp_path, lambda _: None)
    assert candidate.scored_on == "job_data"


def test_a_negative_beta_is_refused_before_training():
    with pytest.raises(InvalidJob, match="`beta` must be positive"):
        training_request(beta=-1.0)

