"""Every model type aiaas serves, registered once: whatever lists, serves, trains, promotes or benchmarks model
types asks here.

A model type is a package (`aiaas.vision`, or any importable package) with these modules, each loaded only
when asked for, so that listing the types never imports a model's libraries:

    __main__    `main()`: run the model's service until SIGTERM (`aiaas serve <model>`, `python -m <package>`)
    cli         `add_submit_arguments`, `jobs_from_args`, `is_correct`, `describe` (`aiaas submit <model>`)
    trainer     `build(registry)`: train and register a first version from data the project ships or generates
                (`aiaas models build <model>`)
    training    `trainer_class`: the trainer of training jobs (`aiaas trainer <model>`; a type may take none)
    settings    `settings_class`: the service's settings (environment prefix `AIAAS_<MODEL>_`)
    workload    `payloads(registry, rng)`: a function that makes one benchmark job's `(inputs, task)` per call, and
                `load_runtime(registry, ref, **options)`: the runtime as the service loads it (the benchmarks')

The built-in types are `BUILT_IN`. Another distribution adds one without touching aiaas: an entry point in
the group `aiaas.model_types` that names a `ModelType` (docs/adding-a-model-type.md walks through it).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

__all__ = ["ModelType", "BUILT_IN", "ENTRY_POINT_GROUP", "model_types", "model_type", "names"]

ENTRY_POINT_GROUP = "aiaas.model_types"

log = logging.getLogger("aiaas.model_types")


@dataclass(frozen=True)
class ModelType:
    """One model type: its name (also its topics' middle part), where its code lives, and what promotion compares."""

    name: str
    metric: str
    """The held-out metric its trainer records and the promotion policy compares (higher is better)."""
    trainer_class: str | None
    """The class in `<package>.training` that trains for training jobs; None: the type takes no training jobs."""
    settings_class: str
    """The class in `<package>.settings` with the service's settings."""
    package: str = ""
    """The package holding its modules; `aiaas.<name>` when left out."""
    summary: str = ""
    """One line for `aiaas --help` and the docs."""
    generative: bool = False
    """Its answers are generated and streamed (chunks, then the result): the batch benchmarks leave it out (it has
    benchmarks of its own)."""

    @property
    def home(self) -> str:
        return self.package or f"aiaas.{self.name}"

    def module(self, part: str) -> Any:
        """One of the type's modules (`cli`, `trainer`, `training`, `settings`, `workload`, `__main__`), imported
        now."""
        return importlib.import_module(f"{self.home}.{part}")

    def serve(self) -> None:
        """Run the type's service in this process until SIGTERM/SIGINT."""
        self.module("__main__").main()

    def trainer(self) -> Any:
        """A new trainer for this type's training jobs (ValueError when the type takes none)."""
        if self.trainer_class is None:
            raise ValueError(f"model type {self.name!r} takes no training jobs yet")
        return getattr(self.module("training"), self.trainer_class)()

    def settings(self) -> type:
        """The service's settings class."""
        return getattr(self.module("settings"), self.settings_class)

    def cli(self) -> Any:
        """The `cli` module: the flags and jobs of `aiaas submit <name>`."""
        return self.module("cli")

    def build(self, registry: Any) -> Any:
        """Train and register a first version (`aiaas models build`); returns the registered version."""
        return self.module("trainer").build(registry)


BUILT_IN = (
    ModelType("vision", metric="accuracy", trainer_class="VisionTrainer", settings_class="VisionSettings",
              summary="a small CNN that classifies 8x8 handwritten digits"),
    ModelType("text", metric="accuracy", trainer_class="TextTrainer", settings_class="TextSettings",
              summary="MiniLM sentence embeddings and a topic classifier"),
    ModelType("recsys", metric="hit_rate_at_10", trainer_class="RecsysTrainer", settings_class="RecsysSettings",
              summary="matrix factorisation: top-k recommendations per user"),
    ModelType("llm", metric="pass_rate", trainer_class="LlmTrainer", settings_class="LlmSettings", generative=True,
              summary="SmolLM2-135M-Instruct: chat and completion, tokens streamed back"),
    ModelType("vae", metric="elbo", trainer_class="VaeTrainer", settings_class="VaeSettings",
              summary="a conditional VAE on the digits: generate, encode, reconstruct, anomaly scores"),
    ModelType("rnn", metric="recall_at_10", trainer_class="RnnTrainer", settings_class="RnnSettings",
              summary="a GRU over item sessions: the next items of a session (GRU4Rec)"),
)
"""In the order the demo runs them."""


_BUILT_IN = {model.name: model for model in BUILT_IN}


@cache
def _plug_ins() -> tuple[dict[str, ModelType], dict[str, str]]:
    """The installed plug-ins' model types by name, and why each one that could not be taken was not."""
    found: dict[str, ModelType] = {}
    broken: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry.name} = {entry.value} in {ENTRY_POINT_GROUP}"
        try:
            model = entry.load()
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not take the others (or the CLI) down
            broken[entry.name] = f"{where} could not be loaded ({type(exc).__name__}: {exc})"
            continue
        if not isinstance(model, ModelType):
            broken[entry.name] = f"{where} is not a ModelType"
        elif model.name in _BUILT_IN or model.name in found:
            other = _BUILT_IN.get(model.name) or found[model.name]
            broken[model.name] = f"{where} registers model type {model.name!r} again (it is {other.home}'s)"
        else:
            found[model.name] = model
    for why in broken.values():
        log.warning("model type plug-in skipped: %s", why)
    return found, broken


def model_types() -> dict[str, ModelType]:
    """Every registered model type by name: the built-in ones, then those of installed plug-ins (a plug-in that
    cannot be loaded is skipped with a warning)."""
    return _BUILT_IN | _plug_ins()[0]


def model_type(name: str) -> ModelType:
    """The registered model type `name`; ValueError saying why otherwise (unknown, or its plug-in is broken)."""
    if name in _BUILT_IN:  # no plug-in is loaded to find a built-in type
        return _BUILT_IN[name]
    found, broken = _plug_ins()
    if name in found:
        return found[name]
    if name in broken:
        raise ValueError(f"model type {name!r}: {broken[name]}")
    raise ValueError(f"unknown model type {name!r}; known: {', '.join(model_types())}")


def names() -> tuple[str, ...]:
    """The registered model types' names."""
    return tuple(model_types())
