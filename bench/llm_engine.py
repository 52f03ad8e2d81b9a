"""The LLM's generation, in process (no Kafka): one job at a time, one static batch, and the engine's
continuous batching, on the same jobs; against the arithmetic ceiling of this machine.

    .venv/bin/python bench/llm_engine.py [--jobs 64] [--naive-jobs 6] [--max-batch 32] [--seed 0] [--out FILE]

Jobs: chat prompts of mixed length (one to several sentences, from a fixed list, chosen with `--seed`), each
with its own answer limit drawn from 16–256 tokens (answers may end sooner, at the model's end token); greedy.
The model is converted once from the packaged GGUF (as `aiaas models build llm` does) into a temporary folder.

1. **one at a time**: Transformers' `generate()` per job (what a naive consumer does); its first
   `--naive-jobs` jobs only (it is slow), tokens/s over those;
2. **static batches**: `generate()` on `--max-batch` jobs at a time, each a left-padded batch run up to its
   longest limit (what batches of fixed membership do: every row runs until the batch's last one ends);
   tokens/s counts each job's own tokens (to its end token or limit), not the finished rows' steps;
3. **engine**: `GenerationEngine` (continuous batching, `--max-batch` rows), all jobs submitted at once (at
   saturation: the batch stays full until the last jobs); the same jobs again arriving one every
   `--arrival-ms` (open loop), with time to first token;
4. **ceiling**: 2 x parameters FLOPs per token (matrix products: embeddings excluded, the tied output
   projection included) against this machine's fp32 matmul rate (PyTorch, shapes of a batch of `--max-batch`).

Prints one Markdown table (and writes it with `--out`), the machine, and whether greedy answers in the
batch equal the answers alone (how often batching changes a greedy answer).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from aiaas.llm.engine import GenerationEngine, GenerationRequest
from aiaas.llm.prompts import chat_prompt_ids
from aiaas.llm.weights import convert, load_folder
from bench.report import cpu_name

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three fruits and say why each is healthy.",
    "Explain in a few sentences how a bicycle works, then say what a chain is for and why gears help on hills.",
    "What is 12 times 12?",
    "Give me a short story about a cat who learns to fly. Make it funny, with a surprising ending, and keep it "
    "suitable for children who are just learning to read on their own.",
    "Translate 'good morning' into Spanish.",
    "Summarise the water cycle for a ten-year-old: evaporation, condensation, precipitation and collection, "
    "with one everyday example of each.",
    "Name the planets of the solar system in order.",
    "Why do leaves change colour in autumn?",
    "Write a polite email asking a colleague to review a document by Friday.",
    "What are the benefits of regular exercise? Answer with a numbered list.",
)


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def questions(count: int, seed: int) -> list[tuple[str, int]]:
    """`count` (question, answer limit) pairs: questions from PROMPTS, limits from 16–256 tokens, chosen with `seed`."""
    rng = random.Random(seed)
    return [(rng.choice(PROMPTS), rng.randint(16, 256)) for _ in range(count)]


def jobs(tokenizer, count: int, seed: int) -> list[tuple[list[int], int]]:
    """`questions` as (prompt token ids in the chat template, answer limit)."""
    return [(chat_prompt_ids(tokenizer, [{"role": "user", "content": question}]), limit)
            for question, limit in questions(count, seed)]


def own_tokens(row: list[int], eos: set[int], limit: int) -> int:
    """Tokens a job really got from a padded batch row: up to and with its end token, at most its limit."""
    for i, token in enumerate(row[:limit]):
        if token in eos:
            return i + 1
    return min(limit, len(row))


def one_at_a_time(model, work) -> tuple[float, int, list[str]]:
    tokens, started, texts = 0, time.perf_counter(), []
    for ids, limit in work:
        out = model.generate(torch.tensor([ids], device=model.device),
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
                             max_new_tokens=limit, do_sample=False)
        tokens += out.shape[1] - len(ids)
        texts.append(out[0, len(ids):].tolist())
    return time.perf_counter() - started, tokens, texts


def static_batches(model, tokenizer, work, eos: set[int], size: int) -> tuple[float, int]:
    seconds = tokens = 0
    for start in range(0, len(work), size):
        s, n = static_batch(model, tokenizer, work[start:start + size], eos)
        seconds, tokens = seconds + s, tokens + n
    return seconds, tokens


def static_batch(model, tokenizer, work, eos: set[int]) -> tuple[float, int]:
    width = max(len(ids) for ids, _ in work)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(work), width), pad, dtype=torch.long)
    mask = torch.zeros(len(work), width, dtype=torch.long)
    for i, (prompt, _) in enumerate(work):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    started = time.perf_counter()
    out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                         max_new_tokens=max(limit for _, limit in work), do_sample=False, pad_token_id=pad).cpu()
    seconds = time.perf_counter() - started
    return seconds, sum(own_tokens(out[i, width:].tolist(), eos, limit) for i, (_, limit) in enumerate(work))


def engine_run(engine: GenerationEngine, work, arrival_s: float = 0.0) -> tuple[float, int, list[float], dict]:
    """All jobs through the engine (arriving every `arrival_s`); (seconds, tokens, time to first token each,
    texts by job)."""
    started = time.perf_counter()
    submitted: dict[str, float] = {}
    first: dict[str, float] = {}
    texts: dict[str, str] = {}
    tokens, next_job = 0, 0
    while next_job < len(work) or engine.busy:
        now = time.perf_counter()
        while next_job < len(work) and now - started >= next_job * arrival_s:
            ids, limit = work[next_job]
            engine.submit(GenerationRequest(str(next_job), ids, max_new_tokens=limit))
            submitted[str(next_job)] = now
            next_job += 1
        if not engine.busy:
            time.sleep(0.001)
            continue
        for event in engine.step():
            if event.request_id not in first and (event.tokens or event.finish_reason):
                first[event.request_id] = time.perf_counter() - submitted[event.request_id]
            if event.finish_reason:
                tokens += event.completion_tokens
                texts[event.request_id] = event.full_text
    return time.perf_counter() - started, tokens, [first[k] * 1000 for k in sorted(first)], texts


def matmul_gflops(hidden: int, inner: int, rows: int, seconds: float = 1.0, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of (rows x hidden) @ (hidden x inner) products on `device` in `dtype`."""
    a, b = torch.randn(rows, hidden, device=device, dtype=dtype), torch.randn(hidden, inner, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(5):
        a @ b
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        count += 10
        sync()
    return 2 * rows * hidden * inner * count / (time.perf_counter() - started) / 1e9


def arithmetic_ceiling(model, rows: int) -> tuple[float, float, float]:
    """(FLOPs per token, this machine's matmul GFLOP/s at a batch of `rows`, tokens/s those allow).

    FLOPs per token: 2 x the parameters of the matrix products (embeddings excluded, the tied output projection
    included); the rate: the better of the MLP's and the output projection's shapes, in PyTorch, on the model's
    device and in its precision (fp32 on a CPU, bf16 on a GPU)."""
    config = model.config
    products = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and p.dim() == 2)
    products += config.vocab_size * config.hidden_size  # the tied output projection
    flops_per_token = 2 * products
    where = {"device": model.device, "dtype": model.dtype}
    rate = max(matmul_gflops(config.hidden_size, config.intermediate_size, rows, **where),
               matmul_gflops(config.hidden_size, config.vocab_size, rows, 0.5, **where))
    return flops_per_token, rate, rate * 1e9 / flops_per_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--naive-jobs", type=int, default=6)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--arrival-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        convert(Path(tmp))
        model, tokenizer = load_folder(Path(tmp))
    eos = {model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None}
    work = jobs(tokenizer, args.jobs, args.seed)
    flops_per_token, rate, ceiling = arithmetic_ceiling(model, args.max_batch)

    rows = []
    s, n, naive_ids = one_at_a_time(model, work[:args.naive_jobs])
    rows.append(("one at a time (`generate()` per job)", args.naive_jobs, n, s, "–"))
    naive_tps = n / s
    s, n = static_batches(model, tokenizer, work, eos, args.max_batch)
    rows.append((f"static batches of {args.max_batch} (`generate()`)", len(work), n, s, "–"))
    engine = GenerationEngine(model, tokenizer, max_batch=args.max_batch, max_batch_tokens=10**9)
    s, n, ttft, texts = engine_run(engine, work)
    rows.append((f"engine, all at once (max_batch {args.max_batch})", len(work), n, s,
                 f"{statistics.median(ttft):,.0f} / {max(ttft):,.0f}"))
    engine_tps = n / s
    s, n, ttft, _ = engine_run(engine, work, args.arrival_ms / 1000)
    rows.append((f"engine, one job every {args.arrival_ms:.0f} ms", len(work), n, s,
                 f"{statistics.median(ttft):,.0f} / {max(ttft):,.0f}"))
    alone_engine = GenerationEngine(model, tokenizer, max_batch=1)
    ttft_alone, alone = [], {}
    for i, job in enumerate(work[:args.naive_jobs]):  # each job alone in the engine: nothing else running
        _, _, first_ms, text = engine_run(alone_engine, [job])
        ttft_alone += first_ms
        alone[str(i)] = text["0"]
    same = sum(texts[k] == alone[k] for k in alone)
    naive_texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in naive_ids]
    same_as_generate = sum(alone[str(i)] == text for i, text in enumerate(naive_texts))

    lines = [f"LLM generation in process ({date.today()}, {machine()}): SmolLM2-135M-Instruct fp32, {len(work)} chat "
             f"jobs, answer limits 16–256 tokens (seed {args.seed}), greedy.",
             "Command: `.venv/bin/python bench/llm_engine.py " + " ".join(argv or sys.argv[1:]) + "`", "",
             "| how | jobs | output tokens | seconds | tokens/s | x one at a time | of the ceiling | time to first "
             "token p50 / max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, count, tokens, seconds, first in rows:
        tps = tokens / seconds
        lines.append(f"| {name} | {count} | {tokens:,} | {seconds:.1f} | {tps:,.1f} | {tps / naive_tps:.2f}x "
                     f"| {tps / ceiling:.2f} | {first} |")
    lines += ["", f"Ceiling: {flops_per_token / 1e9:.3f} GFLOP per token (matrix products) at {rate:,.0f} GFLOP/s "
              f"(this machine's fp32 matmul, PyTorch, batch {args.max_batch}) = {ceiling:,.0f} tokens/s.",
              f"A job alone in the engine: time to first token p50 {statistics.median(ttft_alone):,.0f} ms (its "
              f"first {args.naive_jobs} jobs, one after the other).",
              f"Greedy answers in the engine's batch equal to the same job alone: {same} of {len(alone)}; the "
              f"engine's answers alone equal to `generate()`'s: {same_as_generate} of {len(alone)}.",
              f"Engine / one at a time: {engine_tps / naive_tps:.2f}x."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
