"""The text model at serving time: tokenizer → encoder (ONNX Runtime or PyTorch) → task outputs.

No Kafka here. `prepare` checks one job (task, inputs, limits) and tokenises it; `infer` runs
the encoder on all texts of a batch at once, grouped by token length so little padding is
fed to the model, and builds each job's outputs for its task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob, ServiceMisconfigured
from aiaas.registry.store import Registry
from aiaas.serving.onnx_session import open_session
from aiaas.serving.runtime import Outputs, computes_on_cpu
from aiaas.text import MODEL
from aiaas.text.head import ClassifierHead
from aiaas.text.tokens import (
    DEFAULT_CALL_OVERHEAD_TOKENS,
    TextTokenizer,
    Tokenized,
    length_groups,
    pad,
    padding_waste,
)

__all__ = ["TextRuntime", "TextLimits", "OnnxEncoder", "TorchEncoder", "TASKS", "BatchStats", "embed_rows",
           "measure_call_overhead", "INT8_GRAPH", "PRECISIONS"]

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384

INT8_GRAPH = "encoder.int8.onnx"
"""The encoder with int8 weights (`encoder.quantize_int8`), a companion of every text version built since it exists."""

PRECISIONS = ("fp32", "int8")
"""fp32: the exported graph as it is; int8: `INT8_GRAPH` on ONNX Runtime's CPU kernels (the text service answers
more jobs a second, measured by bench/ab.py; see `encoder.quantize_int8` for what it costs in fidelity)."""

TASKS = ("embed", "similarity", "classify")


class Encoder(Protocol):
    """Token ids → unit embeddings."""

    @property
    def providers(self) -> list[str]:
        """Where it runs (execution providers or device), for the log."""
        ...

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """float32 [rows, 384] for int64 [rows, seq] ids and mask."""
        ...


class OnnxEncoder:
    """The exported graph under ONNX Runtime (CUDA execution provider when present)."""

    def __init__(self, onnx_bytes: bytes, providers: str = "auto", intra_op_threads: int = 0) -> None:
        self._session = open_session(onnx_bytes, providers, intra_op_threads)

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._session.get_providers()

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One session run."""
        (out,) = self._session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        return out


class TorchEncoder:
    """The same model in PyTorch (CUDA when available), from the package's sha256-checked weights."""

    def __init__(self, weights_sha256: str | None, device: str = "auto") -> None:
        import torch

        from aiaas.text.encoder import load_encoder

        self._torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self._encoder = load_encoder(expected_sha256=weights_sha256).to(self.device)

    @property
    def providers(self) -> list[str]:
        """The PyTorch device, in the words of the log line."""
        return [f"torch {self.device}"]

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One forward pass without autograd."""
        with self._torch.inference_mode():
            ids = self._torch.from_numpy(input_ids).to(self.device)
            mask = self._torch.from_numpy(attention_mask).to(self.device)
            return self._encoder(ids, mask).float().cpu().numpy()


@dataclass(frozen=True)
class TextLimits:
    """What one job may carry, and how the encoder's calls are cut."""

    max_texts: int = 64
    max_chars: int = 2000
    max_batch_tokens: int = 8192
    call_overhead_tokens: int | None = None
    """The fixed cost of one encoder call, in token slots: a longer text joins a length group unless that adds more
    padding than this. None: measured on a CPU encoder when the runtime is made (`measure_call_overhead`);
    DEFAULT_CALL_OVERHEAD_TOKENS on a GPU, where it has not been measured yet."""


@dataclass
class BatchStats:
    """Padding of the last model call, for the benchmark and the batch span."""

    texts: int = 0
    encoder_calls: int = 0
    padding_waste: float = 0.0
    padding_waste_unsorted: float = 0.0


@dataclass
class TextItem:
    """A prepared job: its task and its tokenised texts (for similarity: left then right)."""

    task: str
    tokens: list[Tokenized]
    pairs: int = 0
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class TextRuntime:
    """Embeds, compares and classifies texts; one encoder pass per length group per batch."""

    model = MODEL

    def __init__(self, encoder: Encoder, tokenizer: TextTokenizer, head: ClassifierHead, version: str, *,
                 aliases: Sequence[str] = (), limits: TextLimits = TextLimits(),
                 output_profile: Mapping[str, float] | None = None) -> None:
        self.encoder, self.tokenizer, self.head = encoder, tokenizer, head
        self.version = version
        self.output_profile = dict(output_profile or {})
        """Share of each predicted topic on the held-out sentences when this version was built (model monitoring)."""
        if limits.call_overhead_tokens is None:
            on_cpu = computes_on_cpu(encoder)
            limits = replace(limits, call_overhead_tokens=measure_call_overhead(encoder) if on_cpu
                             else DEFAULT_CALL_OVERHEAD_TOKENS)
            log.info("text v%s: one encoder call costs as much as %d token slots (%s; length groups split where "
                     "joining would pad more)", version, limits.call_overhead_tokens,
                     "measured" if on_cpu else "not measured off the CPU yet")
        self.limits = limits
        self.last_batch = BatchStats()
        self._refs = {version, f"v{version}", *aliases}

    @property
    def providers(self) -> list[str]:
        """Where the encoder runs, best first (the worker keeps a GPU encoder's calls on a model thread)."""
        return self.encoder.providers

    @classmethod
    def from_registry(cls, registry: Registry, ref: str = "production", *, backend: str = "onnx",
                      precision: str = "fp32", providers: str = "auto", intra_op_threads: int = 0,
                      max_seq_len: int = 128, limits: TextLimits = TextLimits()) -> TextRuntime:
        """Load a verified version: encoder graph, tokenizer and head, each read once and sha256-checked.

        `precision="int8"` serves the version's int8 graph on the CPU (ONNX Runtime only); a
        version built before int8 graphs existed has none, and says so before anything is read.
        """
        _check_precision(precision, backend, providers)
        version = registry.resolve(MODEL, ref)
        if backend == "torch":
            encoder: Encoder = TorchEncoder(str(version.params.get("encoder_weights_sha256") or "") or None)
        elif precision == "int8":
            if INT8_GRAPH not in version.files:
                raise ServiceMisconfigured(
                    f"text v{version.version} has no int8 encoder graph ({INT8_GRAPH}): it was built before int8 "
                    "graphs existed. Serve it with AIAAS_TEXT_PRECISION=fp32, or make a version that has one: a "
                    "training job based on it, or `aiaas models build text`")
            encoder = OnnxEncoder(registry.load_companion(version, INT8_GRAPH), "cpu", intra_op_threads)
        else:
            encoder = OnnxEncoder(registry.load_artifact(version), providers, intra_op_threads)
        files = {name: registry.load_companion(version, name) for name in ("tokenizer.json", "head.npz")}
        engine = "PyTorch fp32" if backend == "torch" else f"ONNX Runtime {precision}"
        log.info("text v%s: %s encoder on %s", version.version, engine, ", ".join(encoder.providers))
        aliases = [a for a, v in registry.aliases(MODEL).items() if v == version.version]
        return cls(encoder, TextTokenizer(files["tokenizer.json"].decode(), max_seq_len),
                   ClassifierHead.from_bytes(files["head.npz"]), str(version.version), aliases=aliases, limits=limits,
                   output_profile=version.output_profile)

    @staticmethod
    def output_categories(outputs: Mapping[str, object]) -> list[str]:
        """What model monitoring counts: a `classify` answer's predicted topics, one per text. Embeddings and
        similarities are not watched."""
        labels = outputs.get("labels")
        return [str(label) for label in labels] if isinstance(labels, list) else []

    def serves(self, ref: str) -> bool:
        """True for this version's number or one of its aliases."""
        return ref in self._refs

    def prepare(self, job: Job) -> TextItem:
        """Check task, inputs and limits; tokenise (over-long texts are cut and flagged, not refused)."""
        if job.task not in TASKS:
            raise InvalidJob(f"text jobs need a task, one of {', '.join(TASKS)}; got {job.task!r}")
        if job.task == "similarity":
            left, right = self._texts(job, "left"), self._texts(job, "right")
            if len(left) != len(right):
                raise InvalidJob(f"`left` and `right` must pair up; got {len(left)} and {len(right)} texts")
            texts, pairs = left + right, len(left)
        else:
            texts, pairs = self._texts(job, "texts"), 0
        tokens = self.tokenizer.encode(texts)
        return TextItem(job.task, tokens, pairs, np.array([t.truncated for t in tokens], dtype=bool))

    def _texts(self, job: Job, name: str) -> list[str]:
        value = job.inputs.get(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise InvalidJob(f"`{name}` must be a non-empty list of strings for task {job.task}")
        if len(value) > self.limits.max_texts:
            raise InvalidJob(f"`{name}` has {len(value)} texts; at most {self.limits.max_texts} per job")
        longest = max(len(text) for text in value)
        if longest > self.limits.max_chars:
            raise InvalidJob(f"a text in `{name}` has {longest} characters; at most {self.limits.max_chars}")
        return value

    def infer(self, items: Sequence[TextItem]) -> list[Outputs]:
        """Embed every text of the batch (grouped by length), then each job's task outputs.

        The classification head runs once per batch, not once per `classify` job."""
        embeddings = self.embed_all([t.ids for item in items for t in item.tokens])
        if any(item.task == "classify" for item in items):  # the head on every row: a trifle next to the encoder
            scores = self.head.scores(embeddings)
            best = scores.argmax(axis=1)
        outputs, start = [], 0
        for item in items:
            rows = slice(start, start + len(item.tokens))
            start = rows.stop
            classified = ((scores[rows], [self.head.labels[k] for k in best[rows]]) if item.task == "classify"
                          else None)
            outputs.append(self._outputs(item, embeddings[rows], classified))
        return outputs

    def embed_all(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Unit embeddings for token rows, in order; one encoder call per length group."""
        overhead = self.limits.call_overhead_tokens
        assert overhead is not None  # set at construction: measured, or the default
        embeddings, self.last_batch = embed_rows(self.encoder, rows, self.limits.max_batch_tokens, overhead)
        return embeddings

    def _outputs(self, item: TextItem, rows: np.ndarray,
                 classified: tuple[np.ndarray, list[str]] | None) -> Outputs:
        truncated = Tensor.from_numpy(item.truncated)
        if item.task == "embed":
            return {"embeddings": Tensor.from_numpy(rows), "truncated": truncated}
        if item.task == "similarity":
            left, right = rows[: item.pairs], rows[item.pairs :]
            cosine = np.clip(np.sum(left * right, axis=1), -1.0, 1.0).astype(np.float32)
            return {"scores": Tensor.from_numpy(cosine), "truncated": truncated}
        assert classified is not None  # every classify job's rows went through the head once, in `infer`
        scores, labels = classified
        return {
            "labels": labels,
            "scores": Tensor.from_numpy(scores),
            "label_names": list(self.head.labels),
            "truncated": truncated,
        }


def _check_precision(precision: str, backend: str, providers: str) -> None:
    """int8 is an ONNX Runtime graph whose quantized kernels are CPU ones."""
    if precision not in PRECISIONS:
        raise ServiceMisconfigured(f"text precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8" and backend != "onnx":
        raise ServiceMisconfigured("text precision int8 is served by ONNX Runtime: set AIAAS_TEXT_BACKEND=onnx, "
                                   "or AIAAS_TEXT_PRECISION=fp32 for the PyTorch backend")
    if precision == "int8" and providers == "cuda":
        raise ServiceMisconfigured("text precision int8 runs on ONNX Runtime's CPU kernels: on a GPU keep "
                                   "AIAAS_TEXT_PRECISION=fp32, or set AIAAS_TEXT_EXECUTION_PROVIDER=auto/cpu for int8 "
                                   "on the CPU")


def embed_rows(encoder: Encoder, rows: Sequence[Sequence[int]], max_batch_tokens: int = 8192,
               call_overhead_tokens: int = DEFAULT_CALL_OVERHEAD_TOKENS) -> tuple[np.ndarray, BatchStats]:
    """Unit embeddings for token rows, in order, and the padding it cost; one call per length group."""
    lengths = [len(r) for r in rows]
    groups = length_groups(lengths, max_batch_tokens, call_overhead_tokens)
    out = np.empty((len(rows), EMBEDDING_DIM), dtype=np.float32)
    for group in groups:
        ids, mask = pad([rows[i] for i in group])
        out[group] = encoder.embed(ids, mask)
    stats = BatchStats(len(rows), len(groups), padding_waste(lengths, groups),
                       padding_waste(lengths, [range(len(rows))]))
    return out, stats


MAX_CALL_OVERHEAD_TOKENS = 8192
"""The measured overhead is capped here: an encoder whose calls cost nearly the same whatever their size batches
everything the token budget allows."""


def measure_call_overhead(encoder: Encoder, width: int = 16, rows: int = 4, rounds: int = 7,
                          clock: Callable[[], float] = time.perf_counter) -> int:
    """The fixed cost of one `encoder.embed` call in token slots, as this encoder runs here.

    Times one row and `rows` rows of `width` tokens, `rounds` times each in alternation, and keeps each size's
    fastest call (a busy machine only ever adds time): the cost of a token slot is the difference over the extra
    slots, the call's fixed cost what one row takes beyond its own slots; rounded, within
    0..MAX_CALL_OVERHEAD_TOKENS. A compute-bound CPU encoder costs tens of token slots per call (so close lengths
    already deserve their own call).
    """
    ids = np.full((rows, width), 1000, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP]
    mask = np.ones_like(ids)

    def seconds(n: int) -> float:
        started = clock()
        encoder.embed(ids[:n], mask[:n])
        return clock() - started

    seconds(1)  # warm-up: first calls allocate
    seconds(rows)
    one, many = math.inf, math.inf
    for _ in range(rounds):
        one, many = min(one, seconds(1)), min(many, seconds(rows))
    per_slot = (many - one) / ((rows - 1) * width)
    if per_slot <= 0:
        return MAX_CALL_OVERHEAD_TOKENS
    return int(min(MAX_CALL_OVERHEAD_TOKENS, max(0, round(one / per_slot - width))))
