"""What a model type provides to the worker core. Runtimes never import Kafka."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiaas.contract.envelopes import InputValue, Job
from aiaas.errors import AiaasError

__all__ = ["ModelRuntime", "Outputs", "close_runtime", "computes_on_cpu", "streams"]

Outputs = dict[str, InputValue]


_CPU_PROVIDERS = frozenset({"CPUExecutionProvider", "torch cpu"})


class ModelRuntime(Protocol):
    """A loaded model that runs batches. Plain class, testable without a broker.

    A runtime whose answers are generated and streamed (the LLM's) also has `streams = True`, and then:
    `infer(items, progress)` calls `progress(index, text, tokens)` from its own thread as each item's answer grows
    (the worker sends chunks); `cancel(item)` ends an item's generation early; `span_details(item, output)` gives
    the attributes and timed events for the job's span.

    A runtime that model monitoring can watch has `output_categories(outputs) -> Sequence[str]` (an answer's
    predicted labels, or its top score's bin; none for a task it does not watch) and `output_profile` (its
    version's reference shares of those categories, from `ModelVersion.output_profile`): the service exports how
    far the served answers moved from it (`aiaas.metrics.drift`).

    A runtime that holds more than memory (the LLM's engine thread) has `close()`: called when the service lets
    the version go, it releases them once the jobs it runs have ended, without blocking.
    """

    model: str
    """Model type, e.g. `vision`."""
    version: str
    """Registry version being served."""

    def serves(self, ref: str) -> bool:
        """True when a job pinned to version/alias `ref` may run on this runtime."""
        ...

    def prepare(self, job: Job) -> Any:
        """Validate one job's inputs and turn them into a batch item; raise InvalidJob if they are wrong."""
        ...

    def infer(self, items: Sequence[Any]) -> Sequence[Outputs | AiaasError]:
        """Run the model once on a batch of prepared items; one Outputs per item, in order.

        A check that is cheaper on the whole batch than job by job (e.g. value ranges) may answer an item with
        an `AiaasError` (usually `InvalidJob`) instead: that job fails with it, its batch-mates are served.
        """
        ...


def streams(runtime: object) -> bool:
    """Whether a runtime streams its answers (see `ModelRuntime`)."""
    return bool(getattr(runtime, "streams", False))


def close_runtime(runtime: object) -> None:
    """Let a runtime go (see `ModelRuntime`): its `close()` where it has one; a failure there is logged."""
    close = getattr(runtime, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - letting a version go never stops the service
            logging.getLogger("aiaas.runtimes").exception("closing %s v%s failed", getattr(runtime, "model", "?"),
                                                          getattr(runtime, "version", "?"))


def computes_on_cpu(runtime: object) -> bool:
    """True when the runtime's `providers` (best first, as ONNX Runtime lists them; `torch <device>` for PyTorch)
    name the CPU first. False when they name an accelerator, when the runtime names none, or when asking fails:
    a model thread is the choice that is never wrong, only sometimes slower."""
    try:
        providers = getattr(runtime, "providers", None)
        return isinstance(providers, (list, tuple)) and bool(providers) and providers[0] in _CPU_PROVIDERS
    except Exception:  # a runtime's property that fails must not fail its jobs
        return False
