"""Fine-tuning jobs for the LLM: a LoRA adapter (peft) trained on instruction data, registered as the adapter alone.

Inputs (all optional):

- data: inline as `prompts` and `responses` (lists of strings of equal length), or `data_uri` to a `.jsonl` file
  whose rows are `{"prompt": ..., "response": ...}` or `{"messages": [{role, content}, ...]}` (the last message
  the assistant's answer to learn); none: the built-in instruction set (`instructions.py`);
- `epochs`, `learning_rate`, `batch_size`, `seed`, and LoRA's `lora_rank`, `lora_alpha`, `max_steps`;
- `base_version`: the model to adapt (default `production`; an adapter's own base when it names an adapter).

Only the answer's tokens are learned (the prompt's are masked), each answer ending with the end-of-turn token so the
served model stops where the examples stop. Evaluation on a held-out part (the built-in set's, or a seeded 20 % of
the job's data; a version scored on the job's data is never promoted automatically): loss and perplexity, the
share of exactly right answers (`exact_match`; JSON answers compared as JSON) for the base and for the adapter,
and the shipped questions' `pass_rate`, the metric promotion compares.

The version holds `adapter_model.safetensors` and `adapter_config.json`, never the base weights: its params name
the base version (`adapter_of`), which the service loads first.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob
from aiaas.llm import MODEL
from aiaas.llm.adapters import ADAPTER_OF, base_of
from aiaas.llm.instructions import exact_match, instruction_split
from aiaas.llm.trainer import greedy_answers, pass_rate
from aiaas.registry.store import Registry
from aiaas.training.protocol import Candidate, ProgressCallback
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal

__all__ = ["LlmTrainer", "LoraParams", "MAX_EXAMPLE_TOKENS", "MAX_STEP_TOKENS"]

MAX_EXAMPLE_TOKENS = 512
"""Longest training example (prompt in the chat template and answer), in tokens."""
MAX_STEP_TOKENS = 4096
"""Most tokens one optimiser step may take (batch_size x the longest example): bounds the activations' memory."""
_ANSWER_TOKENS = 96
"""Most tokens an evaluation answer may have."""
_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers LoRA adapts: attention and MLP."""
_ROLES = frozenset({"system", "user", "assistant"})
Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class LoraParams:
    """Hyper-parameters of a fine-tuning run."""

    epochs: int = 3
    learning_rate: float = 2e-3
    batch_size: int = 8
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    max_steps: int | None = None
    """Stop after this many optimiser steps (whatever `epochs` says)."""


class LlmTrainer:
    """Trains a LoRA adapter for a training job (the base weights stay as they are)."""

    model = MODEL
    metric = "pass_rate"
    hyper_parameters = {"lora_rank": int, "lora_alpha": int, "max_steps": int}

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Check the data, evaluate the base, train the adapter, evaluate it, write it into `workdir`."""
        import torch
        from peft import LoraConfig, get_peft_model

        from aiaas.llm.weights import load_folder

        stop = stop or StopSignal()
        params = replace(LoraParams(), **request.params)
        if params.lora_rank > 256:
            raise InvalidJob("`lora_rank` must be at most 256")
        started = time.perf_counter()
        train_rows, held_out = _examples(request.data)  # the data's shape checked before the model loads
        base = base_of(registry, registry.resolve(MODEL, request.base_version or "production"))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # fp32 on either: the adapter's updates are small
        model, tokenizer = load_folder(registry.verified_folder(base), device=device)
        encoded = [_encode(tokenizer, conversation, answer, i) for i, (conversation, answer) in enumerate(train_rows)]
        encoded_held_out = [_encode(tokenizer, c, a, i) for i, (c, a) in enumerate(held_out)]
        longest = max(len(ids) for ids, _ in encoded + encoded_held_out)
        if params.batch_size * longest > MAX_STEP_TOKENS:
            raise InvalidJob(f"`batch_size` {params.batch_size} x the longest example ({longest} tokens) is "
                             f"{params.batch_size * longest} tokens a step; the limit is {MAX_STEP_TOKENS}: lower "
                             "`batch_size` or shorten the examples")
        expected = [answer for _, answer in held_out]
        stop.check()
        base_exact = exact_match(greedy_answers(model, tokenizer, [c for c, _ in held_out], _ANSWER_TOKENS), expected)

        torch.manual_seed(params.seed)
        tuned = get_peft_model(model, LoraConfig(r=params.lora_rank, lora_alpha=params.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(_TARGETS), task_type="CAUSAL_LM"))
        optimiser = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=params.learning_rate)
        batches_per_epoch = math.ceil(len(encoded) / params.batch_size)
        total_steps = params.epochs * batches_per_epoch
        if params.max_steps is not None:
            total_steps = min(total_steps, params.max_steps)
        epochs = math.ceil(total_steps / batches_per_epoch)
        order, rng = list(range(len(encoded))), random.Random(params.seed)
        step, tokens, training_s = 0, 0, 0.0
        eval_loss = math.nan
        for epoch in range(1, epochs + 1):
            rng.shuffle(order)
            losses = []
            epoch_started = time.perf_counter()
            tuned.train()
            for start in range(0, len(order), params.batch_size):
                if step >= total_steps:
                    break
                stop.check()
                batch = _batch([encoded[i] for i in order[start:start + params.batch_size]], tokenizer, device)
                loss = tuned(**batch).loss
                loss.backward()
                optimiser.step()
                optimiser.zero_grad()
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
                step += 1
            training_s += time.perf_counter() - epoch_started
            stop.check()
            eval_loss = _mean_loss(tuned, tokenizer, encoded_held_out, params.batch_size, stop, device)
            progress(TrainingProgress(epoch=epoch, epochs=epochs, step=step, loss=sum(losses) / max(len(losses), 1),
                                      metric=eval_loss, metric_name="eval_loss",
                                      tokens_per_s=tokens / training_s if training_s else None,
                                      eta_s=training_s / step * (total_steps - step) if step else None))
        tuned.eval()
        stop.check()
        tuned.merge_adapter()  # evaluated with the adapter's weights added to the base's (the service applies them
        # per row instead: the same sums, so the same answers up to rounding)
        try:
            served = tuned.get_base_model()
            exact = exact_match(greedy_answers(served, tokenizer, [c for c, _ in held_out], _ANSWER_TOKENS), expected)
            stop.check()
            rate = pass_rate(served, tokenizer)
        finally:
            tuned.unmerge_adapter()
        folder = workdir / "adapter"
        tuned.save_pretrained(str(folder))
        metrics = {"pass_rate": rate, "exact_match": exact, "base_exact_match": base_exact,
                   "eval_loss": round(eval_loss, 4), "perplexity": round(math.exp(min(eval_loss, 50.0)), 3),
                   "held_out": float(len(held_out)), "steps": float(step),
                   "train_tokens_per_s": round(tokens / training_s, 1) if training_s else 0.0,
                   "train_seconds": round(time.perf_counter() - started, 2)}
        return Candidate(folder / "adapter_model.safetensors", metrics,
                         {k: v for k, v in asdict(params).items() if v is not None}
                         | {ADAPTER_OF: base.version, "lora_targets": ",".join(_TARGETS)},
                         hashlib.sha256(repr(train_rows).encode()).hexdigest(), (folder / "adapter_config.json",),
                         base.version, scored_on="reference" if request.data is None else "job_data")


def _examples(data: dict[str, Any] | None) -> tuple[list[tuple[Conversation, str]], list[tuple[Conversation, str]]]:
    """(training, held-out) (conversation before the answer, answer) pairs."""
    if data is None:
        train, held_out = instruction_split()
        return ([([{"role": "user", "content": p}], r) for p, r in train],
                [([{"role": "user", "content": p}], r) for p, r in held_out])
    rows = _rows(data)
    if len(rows) < 10:
        raise InvalidJob(f"llm training data has {len(rows)} examples; give at least 10")
    random.Random(7).shuffle(rows)
    cut = max(2, len(rows) // 5)
    return rows[cut:], rows[:cut]


def _rows(data: dict[str, Any]) -> list[tuple[Conversation, str]]:
    names = set(data)
    if names in ({"prompts", "responses"}, {"prompt", "response"}):
        prompts, responses = (data["prompts"], data["responses"]) if "prompts" in names else \
            (data["prompt"], data["response"])
        if not isinstance(prompts, list) or not isinstance(responses, list) or len(prompts) != len(responses):
            raise InvalidJob("llm training data: `prompts` and `responses` must be lists of strings of equal length")
        return [([{"role": "user", "content": _text(p, "prompt", i)}], _text(r, "response", i))
                for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    if names == {"messages"}:
        if not isinstance(data["messages"], list):
            raise InvalidJob("llm training data: `messages` must be a list of conversations (a .jsonl data_uri)")
        return [_conversation(messages, i) for i, messages in enumerate(data["messages"])]
    raise InvalidJob("llm training data needs `prompts` and `responses` (inline), or rows of `prompt` and "
                     f"`response` or of `messages` (a .jsonl data_uri); got {', '.join(sorted(names))} (hyper-"
                     f"parameters: epochs, learning_rate, batch_size, seed, {', '.join(LlmTrainer.hyper_parameters)})")


def _text(value: object, what: str, row: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"llm training data, example {row}: the {what} must be a non-empty string")
    return value


def _conversation(messages: object, row: int) -> tuple[Conversation, str]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise InvalidJob(f"llm training data, example {row}: `messages` must be a list of at least two messages")
    conversation = []
    for message in messages:
        if not isinstance(message, dict) or set(message) != {"role", "content"} \
                or not isinstance(message["role"], str) or message["role"] not in _ROLES:
            raise InvalidJob(f"llm training data, example {row}: each message is {{role, content}} with a role of "
                             f"{', '.join(sorted(_ROLES))}")
        conversation.append({"role": message["role"], "content": _text(message["content"], "content", row)})
    if conversation[-1]["role"] != "assistant":
        raise InvalidJob(f"llm training data, example {row}: the last message must be the assistant's answer")
    return conversation[:-1], conversation[-1]["content"]


def _encode(tokenizer: Any, conversation: Conversation, answer: str, row: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt in the chat template (masked: -100), then the answer and end of turn."""
    from aiaas.llm.prompts import chat_prompt_ids

    prompt = chat_prompt_ids(tokenizer, conversation)
    reply = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    if len(prompt) + len(reply) > MAX_EXAMPLE_TOKENS:
        raise InvalidJob(f"llm training data, example {row}: {len(prompt) + len(reply)} tokens; the limit is "
                         f"{MAX_EXAMPLE_TOKENS}")
    return prompt + reply, [-100] * len(prompt) + reply


def _batch(examples: Sequence[tuple[list[int], list[int]]], tokenizer: Any, device: str = "cpu") -> dict[str, Any]:
    """Right-padded tensors on `device`: input ids, attention mask, labels (padding masked)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(examples):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
        mask[i, :len(row_ids)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _mean_loss(model: Any, tokenizer: Any, examples: Sequence[tuple[list[int], list[int]]], batch_size: int,
               stop: StopSignal, device: str = "cpu") -> float:
    """Mean cross-entropy per answer token over `examples` (teacher-forced)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            stop.check()
            batch = _batch(examples[start:start + batch_size], tokenizer, device)
            answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * answer_tokens
            count += answer_tokens
    return total / count if count else math.nan
