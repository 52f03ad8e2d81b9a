"""The job and result envelopes: the contract between publishers, services and readers.

These pydantic models are the source of truth; `schemas/` holds the JSON Schema and the
AsyncAPI document generated from them (`aiaas schemas write`). On the wire each envelope is
one msgpack map (see `codec.py`); tensors travel as `{dtype, shape, data}` with raw bytes.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

__all__ = [
    "DType",
    "Tensor",
    "InputValue",
    "Job",
    "JobKind",
    "Result",
    "ResultStatus",
    "ErrorInfo",
    "Timings",
    "TrainingProgress",
    "ChatMessage",
    "GenerationParams",
    "Chunk",
    "FINISH_REASONS",
    "TERMINAL_STATUSES",
    "new_job_id",
    "trusted",
    "is_plain_value",
    "stack_tensors",
    "job_id_of_key",
    "JOB_ID_PATTERN",
]

DType = Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]
JobKind = Literal["infer", "train"]
ResultStatus = Literal["ok", "error", "expired", "chunk", "accepted", "running", "succeeded", "failed"]
TERMINAL_STATUSES = frozenset({"ok", "error", "expired", "succeeded", "failed"})
"""A job's last result has one of these; `chunk` is generation progress, `accepted` and `running` training's."""
Role = Literal["system", "user", "assistant"]
FINISH_REASONS = ("stop", "length", "cancelled", "deadline")
"""Why a generation ended (an `ok` result's `finish_reason` output)."""

_M = TypeVar("_M", bound=BaseModel)

_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in get_args(DType)}
"""Each wire dtype as a little-endian numpy dtype (built once: numpy's dtype parsing and naming are slow)."""
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MODEL_NAME = r"^[a-z][a-z0-9_-]{0,63}$"
JOB_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
"""A job id: 1 to 128 characters, none of them a control character (ids travel in keys, headers and logs)."""
_JOB_ID = re.compile(JOB_ID_PATTERN)
_set = object.__setattr__


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """An instance of a contract model from values that are valid by construction, every field given.

    What pydantic's `model_construct` does for such a model, without its per-call bookkeeping (defaults,
    aliases, fields-set): a fraction of its cost, paid for every tensor and result the worker builds
    (bench/hotpath.py, its result stage).
    Not validated: only for values the caller made itself (a runtime's numpy output, the worker's own fields).
    """
    instance = object.__new__(cls)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


_MAX_RANK = 8
_MAX_DIM = 2**31 - 1  # a dimension must fit numpy's int64 indexes with room to spare; no honest one comes near


class Tensor(BaseModel):
    """An n-dimensional array: element type, shape and the raw little-endian, C-order bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: DType = Field(description="Element type (numpy name).")
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=_MAX_RANK, description="Dimensions, outermost first.")
    data: bytes = Field(description="Raw little-endian C-order element bytes; length = prod(shape) x itemsize.")

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> Tensor:
        """Wrap a numpy array (copied to C order, little endian)."""
        array, name = _on_the_wire(array)
        if name is None or array.ndim > _MAX_RANK:  # let validation say what is wrong
            return cls(dtype=str(array.dtype), shape=list(array.shape), data=array.tobytes())
        # Everything else a numpy array has is valid by construction: skip validating it again.
        return trusted(cls, {"dtype": name, "shape": list(array.shape), "data": array.tobytes()})

    @classmethod
    def rows(cls, array: np.ndarray) -> list[Tensor]:
        """Each row of `array` (the first axis) as a Tensor: one conversion for the whole array, a slice per row."""
        array, name = _on_the_wire(array)
        if name is None or not 1 <= array.ndim <= _MAX_RANK + 1:
            return [cls.from_numpy(row) for row in array]
        shape, data = array.shape[1:], array.tobytes()
        step = math.prod(shape) * array.itemsize
        return [trusted(cls, {"dtype": name, "shape": list(shape), "data": data[i * step:(i + 1) * step]})
                for i in range(len(array))]

    @classmethod
    def row_prefixes(cls, array: np.ndarray, lengths: Sequence[int]) -> list[Tensor]:
        """The first `lengths[i]` entries of each row of a 2-D array, each as a 1-D Tensor (one conversion for the
        whole array, a slice per row)."""
        array, name = _on_the_wire(array)
        if name is None or array.ndim != 2:
            return [cls.from_numpy(row[:n]) for row, n in zip(array, lengths, strict=False)]
        width, itemsize, data = array.shape[1], array.itemsize, array.tobytes()
        counts = [max(0, min(n, width)) for n in lengths]
        return [trusted(cls, {"dtype": name, "shape": [n],
                              "data": data[row * width * itemsize:(row * width + n) * itemsize]})
                for row, n in enumerate(counts)]

    def check_size(self) -> None:
        """Raise ValueError when the bytes are not what dtype and shape need (what `to_numpy` checks first)."""
        expected = math.prod(self.shape) * _DTYPES[self.dtype].itemsize  # Python ints: a hostile shape cannot overflow
        if len(self.data) != expected:
            raise ValueError(
                f"tensor data has {len(self.data)} bytes but dtype {self.dtype} x shape {self.shape} needs {expected}"
            )

    def to_numpy(self) -> np.ndarray:
        """The array, read-only, without copying. Raises ValueError when bytes and shape disagree."""
        self.check_size()
        # A dimension above the message size is only possible next to a 0 dimension; numpy would overflow.
        if not self.data and any(dim > _MAX_DIM for dim in self.shape):
            raise ValueError(f"tensor shape {self.shape} has a dimension above {_MAX_DIM}")
        return np.frombuffer(self.data, dtype=_DTYPES[self.dtype]).reshape(self.shape)


def stack_tensors(tensors: Sequence[Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """Tensors (at least one) that each hold `shape`'s elements (sizes checked: `Tensor.check_size`) as one array
    `[len(tensors), *shape]`, in their common dtype as `np.stack` gives it. Tensors of one dtype, the usual batch,
    are one join of their bytes read in place, not an array per tensor."""
    first = tensors[0].dtype
    if all(tensor.dtype == first for tensor in tensors):
        data = b"".join([tensor.data for tensor in tensors])
        return np.frombuffer(data, dtype=_DTYPES[first]).reshape(len(tensors), *shape)
    return np.stack([tensor.to_numpy().reshape(shape) for tensor in tensors])


def _on_the_wire(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The array as a tensor's bytes are laid out (C order, little endian) and its wire dtype name (None if the
    contract has no such dtype)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array, _DTYPE_NAMES.get(array.dtype)


InputValue = Tensor | StrictStr | StrictBool | StrictInt | StrictFloat | list[StrictStr]
"""One named input of a job: a tensor, or a plain value (text, number, flag, list of texts)."""
_PLAIN = frozenset({str, bool, int, float})


def is_plain_value(value: object) -> bool:
    """True for a value `InputValue` allows as it is, other than a Tensor: exactly a str, bool, int, float or list of
    str (exact types, checked without pydantic: the worker and the codec ask for every output of every job)."""
    kind = type(value)
    return kind in _PLAIN or type(value) is list and all(type(v) is str for v in value)


def job_id_of_key(key: bytes | None) -> str | None:
    """The job id a Kafka key stands for: UTF-8 text that is a valid job id; None for any other key."""
    if not key or len(key) > 512:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text if _JOB_ID.fullmatch(text) else None


def new_job_id() -> str:
    """A fresh, unique job id (UUID4 hex)."""
    return uuid.uuid4().hex


class ChatMessage(BaseModel):
    """One message of a chat (the `llm` model type's `chat` task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = Field(description="`system`, `user` or `assistant`.")
    content: StrictStr = Field(max_length=200_000, description="The message's text.")


class GenerationParams(BaseModel):
    """How a generative model answers (the `llm` model type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: StrictInt | None = Field(
        None, ge=1, le=1_000_000,
        description="Most tokens to generate; the service caps it (AIAAS_LLM_MAX_TOKENS) and uses that cap when unset.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, allow_inf_nan=False,
                               description="0: greedy (the most likely token every step); higher samples more freely.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                         description="Sample from the smallest set of tokens whose probabilities add up to this.")
    top_k: StrictInt = Field(0, ge=0, le=100_000, description="Sample from the k most likely tokens (0: all).")
    seed: StrictInt | None = Field(
        None, ge=0, le=2**63 - 1,
        description="Sampling seed: the same seed and parameters give the same text when the job runs alone.")
    stop: list[Annotated[StrictStr, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=8, description="Text that ends the answer where it appears (not included).")


class Chunk(BaseModel):
    """Part of a generated answer, streamed before the job's final result (status `chunk`)."""

    model_config = ConfigDict(extra="forbid")

    seq: StrictInt = Field(ge=0, description="0, 1, 2, ... within one run of the job; readers drop repeats.")
    text: StrictStr = Field(description="The text generated since the previous chunk.")
    tokens: StrictInt = Field(ge=0, description="Tokens generated since the previous chunk.")
    run: StrictStr = Field(max_length=64, description="Which run of the job made it: a job run again (after a "
                           "crash, or a retry) streams from seq 0 under a new run; readers start the text over.")


class Job(BaseModel):
    """A unit of work published to `<prefix>.<model>.infer` (or `.train`). Keyed by `job_id`."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=128, pattern=JOB_ID_PATTERN,
                        description="Unique id (no control characters); the Kafka key; results carry it.")
    kind: JobKind = Field("infer", description="`infer` or `train`.")
    model: str = Field(pattern=_MODEL_NAME, description="Model type, e.g. `vision`; names the topics.")
    model_version: str | None = Field(
        None, max_length=64, description="Pin a registry version (`3`) or alias (`production`); default: the service's."
    )
    task: str | None = Field(None, max_length=64, description="Task within the model type, when it has several.")
    inputs: dict[str, InputValue] = Field(
        default_factory=dict, max_length=64, description="Named, typed inputs; tensors as dtype/shape/bytes."
    )
    created_at: float = Field(
        default_factory=time.time, allow_inf_nan=False, description="When the job was made (Unix seconds)."
    )
    deadline: float | None = Field(
        None, allow_inf_nan=False, description="After this time (Unix seconds) the job is `expired`, not run."
    )
    priority: int = Field(0, ge=-100, le=100, description=(
        "Higher runs first among the jobs a service holds. The service reads it from the `aiaas.priority` header "
        "(the aiaas client writes both), and a job above 0 belongs on the urgent lane `<infer topic>-urgent`, fetched "
        "before the infer topic."))
    reply_to: str | None = Field(
        None, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
        description="Topic for the result instead of `<prefix>.<model>.results` (a valid Kafka topic name).",
    )
    messages: list[ChatMessage] | None = Field(
        None, max_length=1024, description="A chat, oldest message first (the `llm` model type's `chat` task).")
    generation: GenerationParams | None = Field(
        None, description="How a generative model answers (the `llm` model type); defaults when unset.")
    tenant: str | None = Field(None, max_length=128, description="Who the job is for (accounting, quotas).")
    attributes: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="Free key/value pairs, copied into the result."
    )


class ErrorInfo(BaseModel):
    """Why a job has no outputs."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Error class, e.g. `InvalidJob`.")
    message: str = Field(description="What was wrong, for a person.")
    retriable: bool = Field(False, description="True when the same job may succeed if tried again.")


class Timings(BaseModel):
    """Where the job's time went, in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    queue_wait_ms: float = Field(0.0, description="From `created_at` until the worker picked the job up.")
    inference_ms: float = Field(0.0, description="The model call of the job's batch.")
    batch_size: int = Field(0, description="Jobs in the model call that ran this job.")


class TrainingProgress(BaseModel):
    """Where a training job is (on `running` events)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(description="Epochs finished so far.")
    epochs: int = Field(description="Epochs in the run.")
    step: int = Field(0, description="Optimiser steps so far.")
    loss: float | None = Field(None, description="Mean training loss of the last epoch.")
    metric: float | None = Field(None, description="Evaluation metric after the last epoch (see metric_name).")
    metric_name: str | None = Field(None, description="Which metric `metric` is, e.g. `accuracy`.")
    eta_s: float | None = Field(None, description="Estimated seconds until training ends.")
    tokens_per_s: float | None = Field(None, description="Training tokens a second so far (language models).")
    loss_terms: dict[str, float] | None = Field(
        None, description="The parts of `loss` by name, where it has parts: e.g. the VAE's `reconstruction_nll` and "
        "`kl` (mean nats per image of the last epoch).")


class Result(BaseModel):
    """The outcome of a job, published to the results topic keyed by `job_id`.

    An inference job has exactly one (`ok`, `error` or `expired`), after its `chunk` events when the model
    streams (the `llm` model type). A training job has a stream: `accepted`, `running` (with `progress`), then
    `succeeded` or `failed`.
    """

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="The job this result belongs to.")
    model: str = Field(description="Model type that handled the job.")
    status: ResultStatus = Field(
        description="Inference: `ok`, `error`, `expired`. Training: `accepted`, `running`, `succeeded`, `failed`."
    )
    outputs: dict[str, InputValue] = Field(default_factory=dict, description="Named outputs (task-specific).")
    model_version: str | None = Field(None, description="Registry version that produced the outputs.")
    timings: Timings = Field(default_factory=Timings, description="Queue wait and model time.")
    error: ErrorInfo | None = Field(None, description="Set when status is `error` or `failed`.")
    progress: TrainingProgress | None = Field(None, description="Set on training `running` events.")
    chunk: Chunk | None = Field(None, description="Set on generation `chunk` events.")
    completed_at: float = Field(default_factory=time.time, description="When the worker finished (Unix seconds).")
    attributes: dict[str, str] = Field(default_factory=dict, description="The job's attributes, echoed.")
