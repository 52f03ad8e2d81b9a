"""What a training job asks for, read from the job's inputs (and checked) before any training starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.training.data_files import DataLimits, read_data_file, rows_of
from aiaas.training.settings import TrainerSettings

__all__ = ["TrainingRequest", "HYPER_PARAMETERS"]

HYPER_PARAMETERS = {"epochs": int, "learning_rate": float, "batch_size": int, "seed": int}
"""Hyper-parameters any training job may set (each model type has its defaults)."""
_DATA_INPUTS = ("data_uri", "data_sha256", "base_version")
_BOUNDED = {"epochs": ("max_epochs", "AIAAS_TRAINER_MAX_EPOCHS"),
            "batch_size": ("max_batch_size", "AIAAS_TRAINER_MAX_BATCH_SIZE")}
"""Hyper-parameters with an upper bound, and the setting that holds it."""


@dataclass
class TrainingRequest:
    """A checked training job: hyper-parameter overrides, data columns (if any), base version."""

    job: Job
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    """Named columns (numpy arrays or lists of strings), inline or read from `data_uri`; None: the built-in set."""
    base_version: str | None = None

    @classmethod
    def from_job(cls, job: Job, settings: TrainerSettings,
                 own_parameters: dict[str, type] | None = None) -> TrainingRequest:
        """Parse and check the inputs against the trainer's limits; raise InvalidJob with what is wrong.

        `own_parameters`: the hyper-parameters of this model type's trainer beyond HYPER_PARAMETERS (name → int or
        float; positive), e.g. the LLM's `lora_rank`."""
        inputs = dict(job.inputs)
        params = {}
        for name, kind in (HYPER_PARAMETERS | (own_parameters or {})).items():
            if name in inputs:
                value = inputs.pop(name)
                if (isinstance(value, bool) or not isinstance(value, (int, float))
                        or (kind is int and not isinstance(value, int))):
                    raise InvalidJob(f"`{name}` must be {'an integer' if kind is int else 'a number'}")
                if isinstance(value, float) and not math.isfinite(value):
                    raise InvalidJob(f"`{name}` must be a finite number")
                if value <= 0 and name != "seed":
                    raise InvalidJob(f"`{name}` must be positive")
                if name in _BOUNDED and value > getattr(settings, _BOUNDED[name][0]):
                    limit, setting = getattr(settings, _BOUNDED[name][0]), _BOUNDED[name][1]
                    raise InvalidJob(f"`{name}` must be at most {limit} on this trainer ({setting})")
                params[name] = kind(value)
        base = inputs.pop("base_version", None)
        if base is not None and not isinstance(base, (str, int)):
            raise InvalidJob("`base_version` must be a version number or alias")
        uri, digest = inputs.pop("data_uri", None), inputs.pop("data_sha256", None)
        data: dict[str, Any] | None
        if digest is not None and uri is None:
            raise InvalidJob("`data_sha256` checks a `data_uri` file; give the file too (inline data needs no hash)")
        if uri is not None:
            if not isinstance(uri, str) or (digest is not None and not isinstance(digest, str)):
                raise InvalidJob("`data_uri` and `data_sha256` must be strings")
            if inputs:
                raise InvalidJob("give the data either inline or as `data_uri`, not both")
            limits = DataLimits(tuple(settings.data_roots), settings.max_data_bytes, settings.max_data_rows)
            data = read_data_file(uri, digest, limits)
        else:
            data = {name: _column(name, value) for name, value in inputs.items()} or None
        if data is not None and rows_of(data) > settings.max_data_rows:
            raise InvalidJob(f"the training data has {rows_of(data)} rows; the trainer accepts at most "
                             f"{settings.max_data_rows} (AIAAS_TRAINER_MAX_DATA_ROWS)")
        return cls(job, params, data, None if base is None else str(base))


def _column(name: str, value: Any) -> Any:
    """An inline column: a tensor as a numpy array (InvalidJob when its bytes and shape disagree), else as is."""
    if not isinstance(value, Tensor):
        return value
    try:
        return value.to_numpy()
    except ValueError as exc:
        raise InvalidJob(f"`{name}`: {exc}") from exc
