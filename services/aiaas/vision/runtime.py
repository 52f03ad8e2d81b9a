"""The vision model under ONNX Runtime (CUDA execution provider when present). No Kafka here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aiaas.contract.envelopes import Job, Tensor, stack_tensors
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.serving.onnx_session import choose_providers, open_session
from aiaas.serving.runtime import Outputs
from aiaas.vision import MODEL
from aiaas.vision.data import IMAGE_SHAPE, MAX_INTENSITY

__all__ = ["VisionRuntime", "choose_providers"]


class VisionRuntime:
    """Classifies 8x8 digit images; one ONNX Runtime call per batch."""

    model = MODEL

    def __init__(self, onnx_bytes: bytes, version: str, *, aliases: Sequence[str] = (), providers: str = "auto",
                 intra_op_threads: int = 0, output_profile: Mapping[str, float] | None = None) -> None:
        self._session = open_session(onnx_bytes, providers, intra_op_threads)
        self.version = version
        self._refs = {version, f"v{version}", *aliases}
        self.output_profile = dict(output_profile or {})
        """Share of each predicted label on the held-out digits when this version was built (model monitoring)."""

    @classmethod
    def from_registry(cls, registry: Registry, ref: str = "production", **kwargs: Any) -> VisionRuntime:
        """Load a sha256-verified version (or alias) from the registry."""
        version, data = registry.load_verified(MODEL, ref)
        aliases = [a for a, v in registry.aliases(MODEL).items() if v == version.version]
        return cls(data, str(version.version), aliases=aliases, output_profile=version.output_profile, **kwargs)

    @staticmethod
    def output_categories(outputs: Mapping[str, object]) -> list[str]:
        """The predicted label: what model monitoring counts."""
        label = outputs.get("label")
        return [str(label)] if label is not None else []

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._session.get_providers()

    def serves(self, ref: str) -> bool:
        """True for this version's number or one of its aliases."""
        return ref in self._refs

    def prepare(self, job: Job) -> Tensor:
        """Check the job: no task, and `image` a numeric tensor [8,8] or [1,8,8] (its values: in `infer`)."""
        if job.task is not None:
            raise InvalidJob(f"vision jobs have no task (they classify the `image`); got task {job.task!r}")
        image = job.inputs.get("image")
        if not isinstance(image, Tensor):
            raise InvalidJob("vision jobs need an input `image`: a tensor of shape [8, 8] with values 0..16")
        if image.dtype == "bool" or tuple(image.shape) not in (IMAGE_SHAPE, (1, *IMAGE_SHAPE)):
            raise InvalidJob(f"`image` must be a numeric [8, 8] tensor; got {image.dtype} {image.shape}")
        try:
            image.check_size()
        except ValueError as exc:
            raise InvalidJob(f"`image`: {exc}") from exc
        return image

    def infer(self, items: Sequence[Tensor]) -> list[Outputs | InvalidJob]:
        """Label and class probabilities for every image (as `prepare` passed it), from one session run.

        The value range is checked here, on the whole batch at once (two numpy calls instead of four per job),
        in the dtypes that were sent: a float64 beyond float32's range must not turn into inf in the cast.
        NaN fails both comparisons (min and max propagate it) and ±inf is out of range.
        """
        images = stack_tensors(items, IMAGE_SHAPE)  # the common dtype of the batch: no value changes
        flat = images.reshape(len(items), -1)
        valid = (flat.min(axis=1) >= 0) & (flat.max(axis=1) <= MAX_INTENSITY)
        if not valid.all():
            images = np.where(valid[:, None, None], images, 0)  # refused rows run as blanks, then are answered
        (probabilities,) = self._session.run(None, {"image": images.astype(np.float32)[:, None]})
        labels = probabilities.argmax(axis=1).tolist()
        rows = Tensor.rows(probabilities)
        return [
            {"label": label, "probabilities": row} if ok
            else InvalidJob("`image` values must be finite and within 0..16")
            for label, row, ok in zip(labels, rows, valid.tolist(), strict=True)
        ]
