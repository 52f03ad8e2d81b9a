"""Generation for many jobs at once: continuous batching on the model's forward with a row-per-sequence KV cache.

Each `step()`:
1. ends what was cancelled or ran past its deadline (waiting or running);
2. admits waiting requests, highest priority first, while the batch has rows and the token budget room, and
   prefills them together (at most `prefill_tokens` prompt tokens a step, so newcomers never stall the others
   for long); each gets its first token from the prefill;
3. runs one decode step for every running sequence (the newcomers included): one token each.
It returns what each request gained: new text (held back while it could still be the start of a stop
sequence, or half of a multi-byte character), token counts, and once finished, why (`stop`, `length`,
`cancelled`, `deadline`) with the whole text. A long answer never holds a short one back: a sequence leaves the
batch the step it finishes and a waiting one takes its row at the next.

No Kafka here: the service (`service.py`) feeds `submit`/`cancel` from its consumer and turns events into
chunks and results. `submit` and `cancel` may be called from another thread than `step`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from aiaas.llm.kv_cache import RowCache

__all__ = ["FinishReason", "GenerationRequest", "GenerationEvent", "GenerationEngine", "Detokenizer"]

FinishReason = Literal["stop", "length", "cancelled", "deadline"]

_MIN_TEMPERATURE = 1e-3
"""Below this a temperature is taken as greedy: dividing by less overflows the logits to inf."""


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: its prompt's token ids and how to sample."""

    request_id: str
    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    """0: greedy (the most likely token every step)."""
    top_p: float = 1.0
    top_k: int = 0
    """0: no top-k cut."""
    seed: int | None = None
    """Same seed and parameters, same text when the request runs alone."""
    stop: tuple[str, ...] = ()
    priority: int = 0
    deadline: float | None = None
    """Unix seconds: generation ends there with `deadline`."""
    adapter: str | None = None
    """The LoRA adapter to generate with (loaded into the engine's peft model under this name); None: the base.
    Sequences with different adapters share the batch: each row goes through its own adapter."""


@dataclass
class GenerationEvent:
    """What one request gained in one step."""

    request_id: str
    text: str = ""
    """New text since the request's last event."""
    tokens: int = 0
    """New tokens since the last event (text may lag: held back until it cannot be a stop sequence's start)."""
    finish_reason: FinishReason | None = None
    full_text: str | None = None
    """The whole answer, on the last event."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted_at: float | None = None
    """Unix seconds the request was submitted (on the last event)."""
    first_token_at: float | None = None
    """Unix seconds of the first generated token (on the last event)."""
    finished_at: float | None = None
    """Unix seconds of the last event."""


class Detokenizer:
    """Token ids to text, incrementally: the text a new token adds, never half of a multi-byte character, and
    nothing that could still turn out to be the start of a stop sequence."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        """Everything decoded so far (stop sequences cut off once found)."""
        self._prefix_offset = 0
        self._read_offset = 0
        self._sent = 0

    def add(self, token: int) -> bool:
        """Take one token; True when the text now contains a stop sequence (the text ends before it)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix_offset:self._read_offset])
        after = self._decode(self.ids[self._prefix_offset:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False  # half a character: wait for the rest
        self.text += after[len(before):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        if self._stop:
            cut = min((i for i in (self.text.find(s, max(0, self._sent - len(s))) for s in self._stop) if i >= 0),
                      default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                return True
        return False

    def flush(self, final: bool = False) -> str:
        """The text not sent yet; unless `final`, less any tail that could begin a stop sequence."""
        end = len(self.text)
        if not final:
            for stop in self._stop:
                for size in range(min(len(stop) - 1, end), 0, -1):
                    if self.text.endswith(stop[:size]):
                        end = min(end, len(self.text) - size)
                        break
        end = max(end, self._sent)
        delta, self._sent = self.text[self._sent:end], end
        return delta


@dataclass
class _Sequence:
    request: GenerationRequest
    detokenizer: Detokenizer
    generator: torch.Generator | None
    start: int = 0
    """First cache column of this sequence."""
    position: int = 0
    """Position id of the next token fed to the model."""
    pending: int = -1
    """The last sampled token: fed to the model at the next decode step."""
    generated: int = 0
    unreported: int = 0
    first_token_at: float | None = None
    finish: FinishReason | None = None


@dataclass(order=True)
class _Waiting:
    rank: tuple[int, int]
    request: GenerationRequest = field(compare=False)


class GenerationEngine:
    """Continuous batching for a causal LM (Transformers, Llama family) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 16, max_batch_tokens: int = 16_384,
                 prefill_tokens: int = 1024, clock: Callable[[], float] = time.time) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_batch_tokens, self.prefill_tokens = max_batch, max_batch_tokens, prefill_tokens
        self._clock = clock
        self._device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos.add(tokenizer.eos_token_id)
        self._layers = model.config.num_hidden_layers
        self._cache = RowCache(self._layers)
        self._rows: list[_Sequence] = []
        self._waiting: list[_Waiting] = []
        self._order = itertools.count()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._submitted: dict[str, float] = {}
        self.steps = 0

    def fresh(self) -> GenerationEngine:
        """A new, empty engine on the same model and limits (after a step failed, this one's state is not to be
        trusted)."""
        return GenerationEngine(self.model, self.tokenizer, max_batch=self.max_batch,
                                max_batch_tokens=self.max_batch_tokens, prefill_tokens=self.prefill_tokens,
                                clock=self._clock)

    # -- from any thread -------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request (admitted at a later step, by priority then arrival). ValueError: its adapter is not
        loaded into the model."""
        if request.adapter is not None and request.adapter not in getattr(self.model, "peft_config", {}):
            raise ValueError(f"adapter {request.adapter!r} is not loaded")
        self._submitted[request.request_id] = self._clock()
        self._inbox.append(("submit", request))

    def cancel(self, request_id: str) -> None:
        """End a request at the next step (`cancelled`), waiting or running; unknown ids are ignored."""
        self._inbox.append(("cancel", request_id))

    # -- the model thread -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Something to do: requests waiting, running, or just handed in."""
        return bool(self._rows or self._waiting or self._inbox)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @torch.inference_mode()
    def step(self) -> list[GenerationEvent]:
        """One round: cancellations and deadlines, admissions (prefill), one decode step. Events by request."""
        events: dict[str, GenerationEvent] = {}
        self._read_inbox(events)
        self._end_expired(events)
        self._admit(events)
        if self._rows:
            self._decode_step(events)
        self.steps += 1
        return list(events.values())

    def _read_inbox(self, events: dict[str, GenerationEvent]) -> None:
        cancelled: set[str] = set()
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "submit":
                heapq.heappush(self._waiting, _Waiting((-item.priority, next(self._order)), item))
            else:
                cancelled.add(item)
        if cancelled:
            self._end_where(lambda request: request.request_id in cancelled, "cancelled", events)

    def _end_expired(self, events: dict[str, GenerationEvent]) -> None:
        now = self._clock()
        self._end_where(lambda request: request.deadline is not None and now >= request.deadline, "deadline", events)

    def _end_where(self, ends: Callable[[GenerationRequest], bool], reason: FinishReason,
                   events: dict[str, GenerationEvent]) -> None:
        """End every request `ends` says, waiting (a final event at once) or running (it leaves the batch)."""
        gone = [w for w in self._waiting if ends(w.request)]
        if gone:
            for waiting in gone:
                events[waiting.request.request_id] = self._final_unstarted(waiting.request, reason)
            self._waiting = [w for w in self._waiting if not ends(w.request)]
            heapq.heapify(self._waiting)
        for sequence in self._rows:
            if ends(sequence.request):
                sequence.finish = reason
        self._retire(events)

    def _final_unstarted(self, request: GenerationRequest, reason: FinishReason) -> GenerationEvent:
        return GenerationEvent(request.request_id, finish_reason=reason, full_text="",
                               prompt_tokens=len(request.prompt_ids),
                               submitted_at=self._submitted.pop(request.request_id, None), finished_at=self._clock())

    def _tokens_in_flight(self) -> int:
        return sum(len(s.request.prompt_ids) + s.request.max_new_tokens for s in self._rows)

    def _admit(self, events: dict[str, GenerationEvent]) -> None:
        chosen: list[GenerationRequest] = []
        budget, in_flight = self.prefill_tokens, self._tokens_in_flight()
        while self._waiting and len(self._rows) + len(chosen) < self.max_batch:
            request = self._waiting[0].request
            need = len(request.prompt_ids) + request.max_new_tokens
            prompt = len(request.prompt_ids)
            fits_budget = in_flight + need <= self.max_batch_tokens or not (self._rows or chosen)
            fits_prefill = prompt <= budget or not chosen
            if not (fits_budget and fits_prefill):
                break
            heapq.heappop(self._waiting)
            chosen.append(request)
            budget -= prompt
            in_flight += need
        if chosen:
            self._prefill(chosen, events)

    def _prefill(self, requests: list[GenerationRequest], events: dict[str, GenerationEvent]) -> None:
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.zeros(len(requests), width, dtype=torch.long)
        mask = torch.zeros(len(requests), width, dtype=torch.long)
        for i, request in enumerate(requests):
            n = len(request.prompt_ids)
            ids[i, width - n:] = torch.tensor(list(request.prompt_ids), dtype=torch.long)
            mask[i, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        newcomers = RowCache(self._layers)
        logits = self.model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                            position_ids=positions.to(self._device), cache=newcomers, logits_to_keep=1,
                            use_cache=True, **self._adapter_names(requests)).logits[:, -1, :]
        first_new_row = self._cache.rows
        shift = self._cache.join(newcomers)
        for sequence in self._rows:
            sequence.start += shift
        length = self._cache.length
        for i, request in enumerate(requests):  # a padded prompt's columns before its start hold padding: zeros
            self._cache.clear_before(first_new_row + i, length - len(request.prompt_ids))
        added = []
        for request in requests:
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=self._device)
                if request.seed is None:
                    generator.seed()  # a fresh random seed
                else:
                    generator.manual_seed(request.seed)
            sequence = _Sequence(request, Detokenizer(self._text_of, request.stop), generator,
                                 start=length - len(request.prompt_ids), position=len(request.prompt_ids))
            self._rows.append(sequence)
            added.append(sequence)
        self._take_tokens(added, logits, events)

    def _decode_step(self, events: dict[str, GenerationEvent]) -> None:
        rows = self._rows
        length = self._cache.length
        ids = torch.tensor([[s.pending] for s in rows], dtype=torch.long, device=self._device)
        starts = torch.tensor([s.start for s in rows], device=self._device)
        mask = (torch.arange(length + 1, device=self._device)[None, :] >= starts[:, None]).long()
        positions = torch.tensor([[s.position] for s in rows], dtype=torch.long, device=self._device)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self._cache,
                            use_cache=True, logits_to_keep=1,
                            **self._adapter_names([s.request for s in rows])).logits[:, -1, :]
        for sequence in rows:
            sequence.position += 1
        self._take_tokens(list(rows), logits, events)

    def _adapter_names(self, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
        """peft's `adapter_names` for a forward over these rows (`__base__`: none), when the model holds adapters:
        without it, peft would run every row through its active adapter."""
        if not getattr(self.model, "peft_config", None):
            return {}
        return {"adapter_names": [r.adapter or "__base__" for r in requests]}

    def _take_tokens(self, sequences: list[_Sequence], logits: torch.Tensor,
                     events: dict[str, GenerationEvent]) -> None:
        """Sample one token for each sequence (row i of logits), report it, retire the finished."""
        tokens = self._sample(sequences, logits)
        now = self._clock()
        for sequence, token in zip(sequences, tokens, strict=True):
            if sequence.first_token_at is None:
                sequence.first_token_at = now
            sequence.generated += 1
            if token in self._eos:
                sequence.finish = "stop"
                continue
            sequence.unreported += 1
            sequence.pending = token
            if sequence.detokenizer.add(token):
                sequence.finish = "stop"
            elif sequence.generated >= sequence.request.max_new_tokens:
                sequence.finish = "length"
            if sequence.finish is None:
                text = sequence.detokenizer.flush()
                event = events.setdefault(sequence.request.request_id, GenerationEvent(sequence.request.request_id))
                event.text += text
                event.tokens += sequence.unreported
                sequence.unreported = 0
        self._retire(events)

    def _sample(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for i, sequence in enumerate(sequences):
            request = sequence.request
            if request.temperature < _MIN_TEMPERATURE:  # 0 means greedy; below this, sampling is greedy anyway
                tokens.append(int(greedy[i]))
                continue
            tokens.append(self._sample_one(sequence, logits[i], int(greedy[i])))
        return tokens

    @staticmethod
    def _sample_one(sequence: _Sequence, logits: torch.Tensor, greedy: int) -> int:
        """One sampled token; the most likely one if the distribution cannot be sampled (never an exception that
        would end every sequence in the batch)."""
        request = sequence.request
        try:
            row = logits.float() / request.temperature
            if request.top_k > 0:
                kth = torch.topk(row, min(request.top_k, row.shape[-1])).values[-1]
                row = row.masked_fill(row < kth, -math.inf)
            probs = torch.softmax(row, dim=-1)
            if request.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                drop = ordered.cumsum(-1) - ordered > request.top_p
                ordered = ordered.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
            if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
                return greedy
            return int(torch.multinomial(probs, 1, generator=sequence.generator).item())
        except (RuntimeError, ValueError):
            return greedy

    def _retire(self, events: dict[str, GenerationEvent]) -> None:
        """Remove the finished sequences from the batch (their final events) and drop columns nobody needs."""
        row = len(self._rows) - 1
        while row >= 0:  # from the end: the last row moves into a removed one's place
            sequence = self._rows[row]
            if sequence.finish is not None:
                self._finish(sequence, events)
                self._cache.remove(row)
                last = self._rows.pop()
                if row < len(self._rows):
                    self._rows[row] = last
            row -= 1
        if not self._rows:
            return
        unused = min(s.start for s in self._rows)
        if unused >= 64 and unused * 4 >= self._cache.length:
            self._cache.drop_columns(unused)
            for sequence in self._rows:
                sequence.start -= unused

    def _finish(self, sequence: _Sequence, events: dict[str, GenerationEvent]) -> None:
        request = sequence.request
        event = events.setdefault(request.request_id, GenerationEvent(request.request_id))
        event.text += sequence.detokenizer.flush(final=True)
        event.tokens += sequence.unreported
        event.finish_reason = sequence.finish
        event.full_text = sequence.detokenizer.text
        event.prompt_tokens = len(request.prompt_ids)
        event.completion_tokens = sequence.generated
        event.first_token_at = sequence.first_token_at
        event.submitted_at = self._submitted.pop(request.request_id, None)
        event.finished_at = self._clock()

    def _text_of(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
