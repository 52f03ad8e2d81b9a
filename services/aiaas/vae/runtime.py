"""The VAE under ONNX Runtime (CUDA execution provider when present). No Kafka, no torch here.

One session run per batch, whatever its tasks: the images of `encode`, `reconstruct` and `anomaly_score` jobs go
through the encoding route, the latent points of `generate` jobs through the decoding route, together.

Encoding is deterministic: the ELBO of an image is estimated with z at the posterior mean (one decoder pass; the
`elbo` metric of a version averages sampled z instead, trainer.py). An image whose digit the job does not give is
encoded under each of the ten digits (ten rows of the run). The digit with the highest ELBO is the one reported, and
the anomaly score is the negative of log Σ_d p(d) exp(ELBO_d), p(d) = 1/10: the model's mixture of digits.
Each kind of score has its own threshold, the 99th percentile of the held-out digits' scores of that kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.special import gammaln, logsumexp

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.serving.job_inputs import TaskInputs, integer_input
from aiaas.serving.onnx_session import open_session
from aiaas.serving.runtime import Outputs
from aiaas.vae import MODEL
from aiaas.vision.data import IMAGE_SHAPE, MAX_INTENSITY

__all__ = ["VaeRuntime", "TASKS", "ANOMALY_THRESHOLD", "ANOMALY_THRESHOLD_GIVEN_DIGIT", "DIGITS"]

TASKS = {"generate": ("n", "digit", "seed"), "encode": ("image", "digit"), "reconstruct": ("image", "digit"),
         "anomaly_score": ("image", "digit")}
"""Each task and the inputs it takes."""
ANOMALY_THRESHOLD = "anomaly_threshold"
"""The version metric that holds the threshold of scores without a digit (trainer.evaluate records it)."""
ANOMALY_THRESHOLD_GIVEN_DIGIT = "anomaly_threshold_given_digit"
"""The version metric that holds the threshold of scores under a digit the job gives."""
DIGITS = 10
_TASK_INPUTS = TaskInputs(MODEL, TASKS)
_MAX_SEED = 2**63 - 1
_LOG_TRIALS_FACTORIAL = float(gammaln(MAX_INTENSITY + 1))
_ALL_DIGITS = tuple(range(DIGITS))


class _Request(NamedTuple):
    """One validated job: its task, its image (encoding route) or latent points (generate), and its digits."""

    task: str
    digits: tuple[int, ...]
    """Encoding: the digit given, or all ten. Generating: one per latent point."""
    image: np.ndarray | None = None
    latent: np.ndarray | None = None
    seed: int = 0


class _Encoded(NamedTuple):
    """The encoding route's outputs for one image under each digit it was run with."""

    mean: np.ndarray
    log_variance: np.ndarray
    reconstruction: np.ndarray
    nll: np.ndarray
    kl: np.ndarray


class VaeRuntime:
    """Generates, encodes, reconstructs and scores digits; one ONNX Runtime run per batch."""

    model = MODEL

    def __init__(self, onnx_bytes: bytes, version: str, *, aliases: Sequence[str] = (),
                 anomaly_thresholds: tuple[float, float] = (float("inf"), float("inf")), providers: str = "auto",
                 intra_op_threads: int = 0, max_generate: int = 64,
                 output_profile: Mapping[str, float] | None = None) -> None:
        self._session = open_session(onnx_bytes, providers, intra_op_threads)
        self.latent_size = int(next(i for i in self._session.get_inputs() if i.name == "latent").shape[1])
        self.anomaly_thresholds = anomaly_thresholds
        """Above which `score` is `anomalous`: (digit not given, digit given)."""
        self.max_generate = max_generate
        self.output_profile = dict(output_profile or {})
        """Shares of `output_categories` on the held-out digits when this version was built (model monitoring)."""
        self.version = version
        self._refs = {version, f"v{version}", *aliases}

    @classmethod
    def from_registry(cls, registry: Registry, ref: str = "production", **kwargs: Any) -> VaeRuntime:
        """Load a sha256-verified version (or alias) and its anomaly threshold from the registry."""
        version, data = registry.load_verified(MODEL, ref)
        aliases = [a for a, v in registry.aliases(MODEL).items() if v == version.version]
        without = version.metrics.get(ANOMALY_THRESHOLD, float("inf"))
        given = version.metrics.get(ANOMALY_THRESHOLD_GIVEN_DIGIT, without)
        return cls(data, str(version.version), aliases=aliases, anomaly_thresholds=(without, given),
                   output_profile=version.output_profile, **kwargs)

    @staticmethod
    def output_categories(outputs: Mapping[str, object]) -> list[str]:
        """What model monitoring counts: whether an `anomaly_score` answer was anomalous (by construction of the
        thresholds, about 1 in 100 held-out digits is). Other tasks are not watched."""
        anomalous = outputs.get("anomalous")
        if not isinstance(anomalous, bool):
            return []
        return ["anomalous" if anomalous else "normal"]

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._session.get_providers()

    def serves(self, ref: str) -> bool:
        """True for this version's number or one of its aliases."""
        return ref in self._refs

    def prepare(self, job: Job) -> _Request:
        """Check the task and its inputs; raise InvalidJob naming what is valid."""
        task = _TASK_INPUTS.check(job)
        digit = integer_input(job, "digit") if "digit" in job.inputs else None
        if digit is not None and not 0 <= digit < DIGITS:
            raise InvalidJob(f"`digit` must be a digit 0..9 (or left out); got {digit}")
        if task != "generate":
            return _Request(task, _ALL_DIGITS if digit is None else (digit,), image=_image(job))
        n = integer_input(job, "n", 1)
        if not 1 <= n <= self.max_generate:
            raise InvalidJob(f"`n` must be within 1..{self.max_generate} (AIAAS_VAE_MAX_GENERATE); got {n}")
        seed = integer_input(job, "seed") if "seed" in job.inputs else _seed_of(job.job_id)
        if not 0 <= seed <= _MAX_SEED:
            raise InvalidJob(f"`seed` must be within 0..2**63-1; got {seed}")
        rng = np.random.default_rng(seed)
        latent = rng.standard_normal((n, self.latent_size)).astype(np.float32)
        digits = (digit,) * n if digit is not None else tuple(rng.integers(0, DIGITS, n).tolist())
        return _Request(task, digits, latent=latent, seed=seed)

    def infer(self, items: Sequence[_Request]) -> list[Outputs]:
        """Every job's outputs, in order, from one session run."""
        encoding = [(r, r.image) for r in items if r.image is not None]
        generating = [(r, r.latent) for r in items if r.latent is not None]
        distinct = np.stack([image for _, image in encoding]) if encoding else None
        rows_per_image = [len(r.digits) for r, _ in encoding]  # an image without a digit runs under all ten
        images = None if distinct is None else np.repeat(distinct, rows_per_image, axis=0)
        latent = np.concatenate([points for _, points in generating]) if generating else None
        mean, log_variance, reconstruction, nll, kl, generated = self._run(
            images=images, digits=[d for r, _ in encoding for d in r.digits],
            latent=latent, generate_digits=[d for r, _ in generating for d in r.digits])
        if distinct is not None:  # the coefficients depend on the image only: once per image, not per row
            nll = nll - np.repeat(_log_coefficients(distinct), rows_per_image)
        outputs: list[Outputs] = []
        row = point = 0
        for request in items:
            n = len(request.digits)
            if request.latent is not None:
                outputs.append({"images": Tensor.from_numpy(generated[point : point + n]),
                                "digits": Tensor.from_numpy(np.array(request.digits, np.int64)), "seed": request.seed})
                point += n
            else:
                rows = slice(row, row + n)
                encoded = _Encoded(mean[rows], log_variance[rows], reconstruction[rows], nll[rows], kl[rows])
                outputs.append(self._encoded(request, encoded))
                row += n
        return outputs

    def _encoded(self, request: _Request, encoded: _Encoded) -> Outputs:
        """One encoding job's outputs from its rows (one per digit it was run under)."""
        negative_elbo = encoded.nll + encoded.kl
        best = int(np.argmin(negative_elbo))
        digit = request.digits[best]
        if request.task == "encode":
            return {"mean": Tensor.from_numpy(encoded.mean[best]),
                    "variance": Tensor.from_numpy(np.exp(encoded.log_variance[best])), "digit": digit}
        if request.task == "reconstruct":
            return {"image": Tensor.from_numpy(encoded.reconstruction[best]), "digit": digit,
                    "reconstruction_nll": float(encoded.nll[best])}
        score = float(-(logsumexp(-negative_elbo) - np.log(len(negative_elbo))))
        threshold = self.anomaly_thresholds[len(request.digits) == 1]
        return {"score": score, "anomalous": score > threshold, "digit": digit,
                "reconstruction_nll": float(encoded.nll[best]), "kl": float(encoded.kl[best])}

    def elbo_terms(self, images: np.ndarray, digits: np.ndarray,
                   noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image [N, 8, 8] under its digit: the reconstruction's negative log-likelihood (nats) with
        z = mean + σ · noise, and KL(q || N(0, I)). Their sum is the negative ELBO estimated from that draw of z."""
        _, _, _, nll, kl, _ = self._run(images=images, digits=digits, noise=noise)
        return nll - _log_coefficients(images), kl

    def decode(self, latent: np.ndarray, digits: np.ndarray) -> np.ndarray:
        """Images [C, 8, 8] (expected intensities 0..16) decoded from latent points [C, L] as the digits given."""
        return self._run(latent=latent, generate_digits=digits)[5]

    def _run(self, *, images: np.ndarray | None = None, digits: Sequence[int] | np.ndarray = (),
             noise: np.ndarray | None = None, latent: np.ndarray | None = None,
             generate_digits: Sequence[int] | np.ndarray = ()) -> list[np.ndarray]:
        """One session run; a route given nothing gets an empty batch, and noise defaults to zeros (z = mean)."""
        images = np.zeros((0, *IMAGE_SHAPE), np.float32) if images is None else images
        if noise is None:
            noise = np.zeros((len(images), self.latent_size), np.float32)
        latent = np.zeros((0, self.latent_size), np.float32) if latent is None else latent
        return self._session.run(None, {
            "image": images.astype(np.float32), "digit": np.asarray(digits, np.int64).reshape(len(images)),
            "noise": noise.astype(np.float32), "latent": latent.astype(np.float32),
            "generate_digit": np.asarray(generate_digits, np.int64).reshape(len(latent))})


def _log_coefficients(images: np.ndarray) -> np.ndarray:
    """Σ log C(16, x) per image: the part of the Binomial likelihood the graph leaves out (model.py)."""
    x = images.astype(np.float64)
    return (_LOG_TRIALS_FACTORIAL - gammaln(x + 1) - gammaln(MAX_INTENSITY - x + 1)).sum(axis=(1, 2))


def _seed_of(job_id: str) -> int:
    """The seed of a `generate` job that gives none: from its id, so the job sent again draws the same images."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") & _MAX_SEED


def _image(job: Job) -> np.ndarray:
    """The job's `image` as float32 [8, 8], checked: numeric, finite and within 0..16 (in the dtype it was sent)."""
    image = job.inputs.get("image")
    if not isinstance(image, Tensor):
        raise InvalidJob(f"task {job.task!r} needs an input `image`: a tensor of shape [8, 8] with values 0..16")
    if image.dtype == "bool" or tuple(image.shape) not in (IMAGE_SHAPE, (1, *IMAGE_SHAPE)):
        raise InvalidJob(f"`image` must be a numeric [8, 8] tensor; got {image.dtype} {image.shape}")
    try:
        array = image.to_numpy().reshape(IMAGE_SHAPE)
    except ValueError as exc:
        raise InvalidJob(f"`image`: {exc}") from exc
    if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= MAX_INTENSITY):
        raise InvalidJob("`image` values must be finite and within 0..16")
    return array.astype(np.float32)
