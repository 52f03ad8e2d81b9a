"""The LLM runtime: jobs in, streamed text and one final answer out, through one shared generation engine.

The worker calls `infer([item], progress)` for one job at a time from as many model threads as the engine has
rows (`AIAAS_LLM_MODEL_INSTANCES`); each call hands the job to the engine and waits for its end while a thread
of this runtime steps the engine for every job at once. `progress(0, text, tokens)` gets the job's new text,
coalesced (`chunk_interval_ms`, `chunk_tokens`) so a busy service does not send a record per token; the text
of all progress calls adds up to the final answer. No Kafka here (the worker sends the chunks).

A LoRA adapter version is served by its base's runtime: `from_registry` of an adapter version loads the adapter into
the engine's model (peft, by version name) and returns an `LlmVersion` that marks its jobs with it, so jobs for
the base and for any number of adapters share one engine, one batch and one copy of the base weights. One runtime
per base version and device is shared this way within a process (each `from_registry` call a hold of its own on
it); it closes when its last holder lets it go.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aiaas import tracing
from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob, ModelFailure
from aiaas.llm import MODEL
from aiaas.llm.adapters import base_of
from aiaas.llm.engine import GenerationEngine, GenerationEvent, GenerationRequest
from aiaas.llm.prompts import chat_prompt_ids, completion_prompt_ids

__all__ = ["LlmRuntime", "LlmVersion", "Progress", "TASKS"]

log = logging.getLogger("aiaas.llm")

TASKS = ("chat", "complete")
MODEL_NAME = "SmolLM2-135M-Instruct"

Progress = Callable[[int, str, int], None]
"""(index of the job in the `infer` call, new text, new tokens): called from the engine's thread."""

_EARLY_CANCELS = 1024
"""Cancellations kept for jobs not yet in the engine (the oldest are forgotten past this)."""

_MAX_CHARS_PER_TOKEN = 128
"""More characters than any token of this tokenizer decodes to (its longest: 81): a prompt longer than this many per
allowed token cannot fit, and is refused unread."""

_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r"} | {"\x7f"}


@dataclass(frozen=True)
class LlmItem:
    """A prepared job: the engine's request and the GenAI operation it is (`chat`, `text_completion`)."""

    request: GenerationRequest
    operation: str


@dataclass
class _Running:
    """One job in the engine: where its progress goes, what is not sent yet, and its end."""

    progress: Progress | None
    index: int
    done: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    tokens: int = 0
    sent_at: float = 0.0
    final: GenerationEvent | None = None


@dataclass
class _Adapter:
    """An adapter the engine's model holds or is to hold: who holds it, how many jobs run with it."""

    holders: int = 0
    jobs: int = 0
    loaded: bool = False
    error: Exception | None = None


class LlmRuntime:
    """A registry version of the LLM, served by a `GenerationEngine` stepped on a thread of its own."""

    model = MODEL
    streams = True
    """`infer` takes a progress callback (the worker streams chunks)."""

    def __init__(self, model: Any, tokenizer: Any, version: str, *, max_sequences: int = 32, max_tokens: int = 512,
                 max_prompt_tokens: int = 2048, max_batch_tokens: int = 65_536, chunk_interval_ms: int = 50,
                 chunk_tokens: int = 16) -> None:
        self.version = version
        self.tokenizer = tokenizer
        self.max_tokens, self.max_prompt_tokens = max_tokens, max_prompt_tokens
        self._chunk_interval_s, self._chunk_tokens = chunk_interval_ms / 1000, chunk_tokens
        self.engine = GenerationEngine(model, tokenizer, max_batch=max_sequences, max_batch_tokens=max_batch_tokens)
        device = next(model.parameters()).device
        self.providers = [f"torch {device.type}"]
        self._running: dict[str, _Running] = {}
        self._runs: dict[int, str] = {}
        """id(item) → its run in the engine, while `infer` has it (items, not job ids: two tenants may reuse one)."""
        self._cancelled_early: dict[int, LlmItem] = {}
        self._first_tokens: dict[int, float] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        """Guards the state the engine thread shares with the others; notified (all) on every change of it."""
        self._adapters: dict[str, _Adapter] = {}
        """Adapters held or used by jobs, by name. Only the engine thread changes the model (loads and unloads them,
        between steps); the others ask it to here."""
        self._adapter_folders: dict[str, Path] = {}
        self._holders = 1
        self._shared_as: tuple[str, str, str] | None = None
        self._closed = False
        self._stepping = False
        self._thread: threading.Thread | None = None
        with self._wake:
            self._ensure_stepping()

    @classmethod
    def from_registry(cls, registry: Any, ref: str, *, device: str = "auto", **limits: Any) -> LlmVersion:
        """Load a version (every file's sha256 checked) onto `device`, as a hold of its own: a full model into the
        runtime this process runs for it (loaded now if none), an adapter version into its base's runtime."""
        from aiaas.llm.weights import placement

        version = registry.resolve(MODEL, ref)
        base = base_of(registry, version)
        device, _ = placement(device)
        runtime = _shared_runtime(registry, base, device, lambda: cls._load(registry, base, device, limits))
        if base is version:
            return LlmVersion(runtime, str(version.version))
        name = f"v{version.version}"
        try:
            runtime.add_adapter(name, registry.verified_folder(version))
        except BaseException:
            runtime.close()
            raise
        return LlmVersion(runtime, str(version.version), name)

    @classmethod
    def _load(cls, registry: Any, version: Any, device: str, limits: dict[str, Any]) -> LlmRuntime:
        from aiaas.llm.weights import load_folder, placement

        folder: Path = registry.verified_folder(version)
        device, dtype = placement(device)
        model, tokenizer = load_folder(folder, device=device, dtype=dtype)
        return cls(model, tokenizer, str(version.version), **limits)

    def add_adapter(self, name: str, folder: Path) -> None:
        """Load the LoRA adapter in `folder` into the engine's model as `name` (the engine thread does it between two
        steps; this waits for it); a name loaded already is shared. Each call is matched by a `release_adapter`."""
        with self._wake:
            self._adapter_folders[name] = folder
            self._want(name, "holders")

    def release_adapter(self, name: str) -> None:
        """Let go of an adapter (at once): it leaves the model once nobody holds it and no job runs with it."""
        with self._wake:
            if name in self._adapters:
                self._adapters[name].holders -= 1
                self._wake.notify_all()

    def _want(self, name: str, counter: Literal["holders", "jobs"]) -> None:
        """(`_wake` held) One more holder or job of adapter `name`; returns once the engine thread has it in the model
        (loading it again if a load failed for others before); undone if it cannot be loaded."""
        entry = self._adapters.setdefault(name, _Adapter())
        if entry.error is not None and entry.holders <= 0 and entry.jobs <= 0:
            entry.error = None
        setattr(entry, counter, getattr(entry, counter) + 1)
        self._ensure_stepping()
        self._wake.notify_all()
        while not entry.loaded and entry.error is None:
            self._wake.wait()
        if entry.error is not None:
            setattr(entry, counter, getattr(entry, counter) - 1)
            self._wake.notify_all()
            raise ModelFailure(f"adapter {name} of llm v{self.version} could not be loaded: {entry.error}")

    def _adapter_job(self, item: LlmItem, change: int) -> None:
        """(`_wake` held) Count a job of an adapter in (+1: waits until the adapter is in the model, loading it again
        if it had left) or out (-1)."""
        name = item.request.adapter
        if name is None:
            return
        if change > 0:
            if name not in self._adapter_folders:
                raise ModelFailure(f"adapter {name} was never loaded into llm v{self.version}")
            self._want(name, "jobs")
        elif name in self._adapters:
            self._adapters[name].jobs -= 1
            self._wake.notify_all()

    def serves(self, ref: str) -> bool:
        return ref in (self.version, f"v{self.version}")

    # -- from the worker's threads ---------------------------------------------------------------

    def prepare(self, job: Job) -> LlmItem:
        """Check the job and turn it into the engine's request (prompt token ids and sampling)."""
        task = job.task or ("chat" if job.messages else "complete")
        if task not in TASKS:
            raise InvalidJob(f"unknown task {task!r} for llm (tasks: {', '.join(TASKS)})")
        if task == "chat":
            if not job.messages:
                raise InvalidJob("a chat job needs `messages`: a list of {role, content}, the last one the user's")
            if job.inputs:
                raise InvalidJob("a chat job takes `messages`, not inputs")
            for message in job.messages:
                _refuse_control_characters(message.content)
            self._refuse_long_text(sum(len(m.content) for m in job.messages))
            ids = chat_prompt_ids(self.tokenizer, [m.model_dump() for m in job.messages])
        else:
            prompt = job.inputs.get("prompt")
            if not isinstance(prompt, str) or not prompt or set(job.inputs) != {"prompt"} or job.messages:
                raise InvalidJob("a complete job needs exactly one input, `prompt`: the text to continue")
            _refuse_control_characters(prompt)
            self._refuse_long_text(len(prompt))
            ids = completion_prompt_ids(self.tokenizer, prompt)
        if len(ids) > self.max_prompt_tokens:
            raise InvalidJob(f"the prompt is {len(ids)} tokens; the limit is {self.max_prompt_tokens} "
                             "(AIAAS_LLM_MAX_PROMPT_TOKENS)")
        params = job.generation
        wanted = params.max_tokens if params is not None and params.max_tokens is not None else self.max_tokens
        return LlmItem(GenerationRequest(
            request_id=job.job_id, prompt_ids=ids, max_new_tokens=min(wanted, self.max_tokens),
            temperature=params.temperature if params else 0.0, top_p=params.top_p if params else 1.0,
            top_k=params.top_k if params else 0, seed=params.seed if params else None,
            stop=tuple(params.stop) if params else (), priority=job.priority, deadline=job.deadline,
        ), "chat" if task == "chat" else "text_completion")

    def _refuse_long_text(self, characters: int) -> None:
        """Refuse a prompt far too long for the token limit before tokenizing it (tokenizing megabytes would hold
        the worker's event loop)."""
        if characters > self.max_prompt_tokens * _MAX_CHARS_PER_TOKEN:
            raise InvalidJob(f"the prompt is {characters} characters: far above the limit of {self.max_prompt_tokens} "
                             "tokens (AIAAS_LLM_MAX_PROMPT_TOKENS)")

    def infer(self, items: Sequence[LlmItem], progress: Progress | None = None) -> list[dict[str, Any]]:
        """Generate for every item (blocks until all ended); one output per item, in order."""
        runs: list[tuple[LlmItem, str, _Running]] = []
        try:
            for index, item in enumerate(items):
                run_id = f"{item.request.request_id}#{next(self._ids)}"
                running = _Running(progress, index)
                with self._wake:
                    self._adapter_job(item, +1)  # its adapter in the model first (a job may come after it was let go)
                    self._running[run_id] = running  # before the engine has it: it may end it in the step under way
                    self._runs[id(item)] = run_id
                    runs.append((item, run_id, running))
                    self.engine.submit(replace(item.request, request_id=run_id))
                    if self._cancelled_early.pop(id(item), None) is not None:  # cancelled before it got here
                        self.engine.cancel(run_id)
                    self._ensure_stepping()  # also after `close`: a job routed to this runtime before is still served
                    self._wake.notify_all()
            for _, _, running in runs:
                running.done.wait()
        except BaseException:
            with self._wake:  # none of them goes on generating for nobody
                for _, run_id, _ in runs:
                    self.engine.cancel(run_id)
                self._wake.notify_all()
            raise
        finally:
            with self._wake:
                for item, run_id, running in runs:
                    self._running.pop(run_id, None)
                    self._runs.pop(id(item), None)
                    self._adapter_job(item, -1)
                    if running.final is not None and running.final.first_token_at is not None:
                        self._first_tokens[id(item)] = running.final.first_token_at
        finals = [running.final for _, _, running in runs]
        if any(final is None for final in finals):
            raise ModelFailure("the generation engine stopped")
        return [_outputs(final) for final in finals if final is not None]

    def span_details(self, item: LlmItem, output: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, float]]]:
        """The OpenTelemetry GenAI attributes of a finished job, and the event of its first token."""
        request = item.request
        attributes = {
            tracing.GEN_AI_OPERATION: item.operation,
            tracing.GEN_AI_REQUEST_MODEL: f"{MODEL_NAME} v{self.version}",
            tracing.GEN_AI_REQUEST_MAX_TOKENS: request.max_new_tokens,
            tracing.GEN_AI_REQUEST_TEMPERATURE: request.temperature,
            tracing.GEN_AI_REQUEST_TOP_P: request.top_p,
            tracing.GEN_AI_USAGE_INPUT_TOKENS: output["prompt_tokens"],
            tracing.GEN_AI_USAGE_OUTPUT_TOKENS: output["completion_tokens"],
            tracing.GEN_AI_FINISH_REASONS: [output["finish_reason"]],
        }
        with self._wake:
            first = self._first_tokens.pop(id(item), None)
        return attributes, [(tracing.GEN_AI_FIRST_TOKEN_EVENT, first)] if first is not None else []

    def cancel(self, item: LlmItem) -> None:
        """End the generation of a prepared job (the very item `infer` was or will be given) at the engine's next
        step: its output says `cancelled`. Before `infer` has it, it is cancelled as it arrives."""
        with self._wake:
            run_id = self._runs.get(id(item))
            if run_id is None:
                self._cancelled_early[id(item)] = item  # kept (so its id is not reused) until `infer` takes it
                while len(self._cancelled_early) > _EARLY_CANCELS:  # an item `infer` had finished already
                    del self._cancelled_early[next(iter(self._cancelled_early))]
                return
            self.engine.cancel(run_id)
            self._wake.notify()

    def close(self) -> None:
        """Let go of the model (once every holder has: see `from_registry`): the engine thread ends once the
        generations it runs have ended (it returns at once). A job handed over later (routed here before) starts it
        again, to end again when idle."""
        with _SHARED_LOCK:
            self._holders -= 1
            if self._holders > 0:
                return
            if self._shared_as is not None and _SHARED.get(self._shared_as) is self:
                del _SHARED[self._shared_as]
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    # -- the engine's thread -------------------------------------------------------------------------

    def _ensure_stepping(self) -> None:
        """(`_wake` held) Start the engine thread unless it runs."""
        if not self._stepping:
            self._stepping = True
            self._thread = threading.Thread(target=self._step_forever, name="llm-engine", daemon=True)
            self._thread.start()

    def _adapter_work(self) -> tuple[list[str], list[str]]:
        """(`_wake` held) Adapters to load (wanted, not in the model) and to unload (no holder, no job: their entries
        leave now; one wanted again meanwhile is loaded again after)."""
        load = [n for n, a in self._adapters.items() if not a.loaded and a.error is None and (a.holders or a.jobs)]
        unload = [n for n, a in self._adapters.items() if a.holders <= 0 and a.jobs <= 0]
        return load, unload

    def _step_forever(self) -> None:
        try:
            self._run_engine()
        except BaseException:  # the thread ends for a reason no step handled: nobody may wait on it for ever
            log.exception("the llm engine thread stopped")
            with self._wake:
                self._stepping = False
                for entry in self._adapters.values():
                    if not entry.loaded and entry.error is None:
                        entry.error = ModelFailure("the engine thread stopped")
                self._wake.notify_all()
            self._release_all()
            raise

    def _run_engine(self) -> None:
        while True:
            with self._wake:
                while not self.engine.busy and not self._closed and self._adapter_work() == ([], []):
                    self._wake.wait()
                load, unload = self._adapter_work()
                if self._closed and not self.engine.busy and not load and not unload:
                    self._stepping = False
                    return
                folders = {name: self._adapter_folders[name] for name in load}
                for name in unload:
                    del self._adapters[name]
            for name in unload:
                try:
                    self._unload_adapter(name)
                except Exception:  # noqa: BLE001 - it stays in the model, unused; the engine goes on
                    log.exception("llm v%s: adapter %s could not be unloaded", self.version, name)
            for name, folder in folders.items():
                error = self._load_adapter(name, folder)
                with self._wake:
                    entry = self._adapters.get(name)
                    if entry is not None:
                        entry.loaded, entry.error = error is None, error
                    self._wake.notify_all()
            if not self.engine.busy:
                continue
            try:
                events = self.engine.step()
            except Exception:  # noqa: BLE001 - every job in the engine ends; the thread and the service go on
                log.exception("a generation step failed; ending the jobs in the engine")
                self._fail_all()
                continue
            now = time.monotonic()
            for event in events:
                self._deliver(event, now)

    def _load_adapter(self, name: str, folder: Path) -> Exception | None:
        """(engine thread) Load an adapter into the model; what went wrong, if anything."""
        try:
            from peft import PeftModel

            model = self.engine.model
            if not isinstance(model, PeftModel):  # the first adapter: wrap the base model
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
                model.eval()
                self.engine.model = model
            elif name not in model.peft_config:
                model.load_adapter(str(folder), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - a broken adapter fails its own jobs, never the engine
            log.exception("llm v%s: adapter %s could not be loaded", self.version, name)
            return exc
        log.info("llm v%s: adapter %s loaded", self.version, name)
        return None

    def _unload_adapter(self, name: str) -> None:
        """(engine thread) Take an adapter out of the model; the last one out leaves the plain base model."""
        model = self.engine.model
        config = getattr(model, "peft_config", None)
        if not config or name not in config:
            return
        if set(config) == {name}:
            self.engine.model = model.unload()  # the LoRA layers out: base jobs run as before any adapter came
        else:
            model.delete_adapter(name)
        log.info("llm v%s: adapter %s unloaded", self.version, name)

    def _deliver(self, event: GenerationEvent, now: float) -> None:
        running = self._running.get(event.request_id)
        if running is None:
            return
        running.text += event.text
        running.tokens += event.tokens
        due = (now - running.sent_at >= self._chunk_interval_s or running.tokens >= self._chunk_tokens
               or event.finish_reason is not None)
        if due and (running.text or running.tokens) and running.progress is not None:
            try:
                running.progress(running.index, running.text, running.tokens)
            except Exception:  # noqa: BLE001 - a chunk that cannot be sent never stops the generation
                log.exception("sending a chunk failed")
            running.text, running.tokens, running.sent_at = "", 0, now
        if event.finish_reason is not None:
            running.final = event
            running.done.set()

    def _fail_all(self) -> None:
        """Release every waiting `infer` (their jobs fail): the engine cannot go on with them."""
        with self._wake:
            self.engine = self.engine.fresh()
        self._release_all()

    def _release_all(self) -> None:
        """Wake every waiting `infer` (a job with no final result fails)."""
        with self._wake:
            waiting = list(self._running.values())
        for running in waiting:
            running.done.set()


class LlmVersion:
    """One registry version as the service holds it: a hold on the shared runtime of its base, with its LoRA adapter
    if it is an adapter version (its jobs then run in the same engine and batch as the base's and other adapters',
    each row through its own adapter). Every `from_registry` call gives a hold of its own; `close` lets go of it."""

    model = MODEL
    streams = True

    def __init__(self, runtime: LlmRuntime, version: str, adapter: str | None = None) -> None:
        self.runtime, self.version, self.adapter = runtime, version, adapter
        self.tokenizer = runtime.tokenizer
        self.providers = runtime.providers
        self._closed = False

    def serves(self, ref: str) -> bool:
        return ref in (self.version, f"v{self.version}")

    def prepare(self, job: Job) -> LlmItem:
        item = self.runtime.prepare(job)
        return item if self.adapter is None else LlmItem(replace(item.request, adapter=self.adapter), item.operation)

    def infer(self, items: Sequence[LlmItem], progress: Progress | None = None) -> list[dict[str, Any]]:
        return self.runtime.infer(items, progress)

    def cancel(self, item: LlmItem) -> None:
        self.runtime.cancel(item)

    def span_details(self, item: LlmItem, output: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, float]]]:
        attributes, events = self.runtime.span_details(item, output)
        if self.adapter is not None:
            attributes[tracing.GEN_AI_REQUEST_MODEL] = f"{MODEL_NAME} v{self.runtime.version} + adapter v{self.version}"
        return attributes, events

    def close(self) -> None:
        """Let go of this hold (once): the adapter leaves the model once its jobs have ended, the runtime once
        nobody holds it."""
        if self._closed:
            return
        self._closed = True
        if self.adapter is not None:
            self.runtime.release_adapter(self.adapter)
        self.runtime.close()


_SHARED: dict[tuple[str, str, str], LlmRuntime] = {}
"""(registry root, base version, device) → the runtime this process serves that base with."""
_SHARED_LOCK = threading.Lock()


def _shared_runtime(registry: Any, base: Any, device: str, load: Callable[[], LlmRuntime]) -> LlmRuntime:
    """The runtime of `base` on `device` this process has (one more holder), or a new one from `load`."""
    key = (str(Path(registry.root).resolve()), str(base.version), device)
    with _SHARED_LOCK:
        runtime = _SHARED.get(key)
        if runtime is not None:
            runtime._holders += 1  # noqa: SLF001 - this module's own bookkeeping
            return runtime
    loaded = load()  # seconds: not under the lock
    with _SHARED_LOCK:
        runtime = _SHARED.get(key)
        if runtime is None:
            loaded._shared_as = key  # noqa: SLF001
            _SHARED[key] = loaded
            return loaded
        runtime._holders += 1  # noqa: SLF001 - another thread loaded it meanwhile: use that one
    loaded.close()
    return runtime


def _outputs(event: GenerationEvent) -> dict[str, Any]:
    """A finished generation as the result's outputs: the text, why it ended, and usage."""
    outputs: dict[str, Any] = {
        "text": event.full_text or "",
        "finish_reason": event.finish_reason or "stop",
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
    }
    first, submitted, finished = event.first_token_at, event.submitted_at, event.finished_at
    if first is not None and submitted is not None:
        outputs["time_to_first_token_ms"] = round((first - submitted) * 1000, 2)
    if first is not None and finished is not None and finished > first and event.completion_tokens > 1:
        outputs["tokens_per_second"] = round((event.completion_tokens - 1) / (finished - first), 2)
    return outputs


def _refuse_control_characters(text: str) -> None:
    bad = next((c for c in text if c in _CONTROL), None)
    if bad is not None:
        raise InvalidJob(f"the prompt holds the control character U+{ord(bad):04X}; only tab, newline and carriage "
                         "return are allowed")
