"""LoRA fine-tuning of the LLM on this machine: training tokens/s, and how much the adapter learns.

    .venv/bin/python bench/llm_fine_tuning.py [--steps 10,30] [--batch-size 8] [--lora-rank 8] [--out FILE]

Builds the LLM into a temporary registry (as `aiaas models build llm` does), then for each `--steps` runs the
trainer of `aiaas trainer llm` (`LlmTrainer`, no Kafka) on the built-in instruction set (a sentence about a person
in, one JSON object out; `services/aiaas/llm/instructions.py`), and prints one row per run: optimiser steps,
training tokens (prompt and answer, padding excluded), training seconds (the optimiser steps alone) and tokens/s,
the held-out loss, the held-out exact match of the base and of the adapter, the shipped questions' pass rate with
the adapter, and the whole run's seconds (loading, evaluation before and after, saving). The trainer trains on
the GPU where there is one (fp32), else on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from aiaas.contract.envelopes import Job
from aiaas.llm.training import LlmTrainer
from aiaas.registry.store import Registry
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings
from bench.report import MachineInfo
from bench.workloads import build_model


def where() -> str:
    return f"fp32 on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else \
        f"fp32 on the CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,30", help="comma-separated: one run per number of optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    info = MachineInfo.collect()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        build_model("llm", registry)
        for steps in (int(s) for s in args.steps.split(",")):
            inputs = {"max_steps": steps, "batch_size": args.batch_size, "lora_rank": args.lora_rank, "seed": 0}
            job = Job(job_id=f"bench-{steps}", kind="train", model="llm", inputs=inputs)
            request = TrainingRequest.from_job(job, TrainerSettings(), LlmTrainer.hyper_parameters)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as workdir:
                candidate = LlmTrainer().train(request, registry, Path(workdir), lambda _: None)
            seconds = time.perf_counter() - started
            m = candidate.metrics
            rows.append(f"| {steps} | {steps * args.batch_size} | {m['train_tokens_per_s']:,.1f} | "
                        f"{m['eval_loss']:.4f} | {m['base_exact_match']:.2f} → {m['exact_match']:.2f} | "
                        f"{m['pass_rate']:.2f} | {seconds:.1f} |")
            print(f"[{time.strftime('%H:%M:%S')}] {steps} steps: {m['train_tokens_per_s']:,.1f} tokens/s, exact match "
                  f"{m['base_exact_match']:.2f} → {m['exact_match']:.2f}", file=sys.stderr, flush=True)
    lines = [f"LoRA fine-tuning of SmolLM2-135M-Instruct ({date.today()}, {info.cpu_described}; {where()}): the "
             f"built-in instruction set (192 training examples, 32 held out), batch {args.batch_size}, rank "
             f"{args.lora_rank}, every attention and MLP projection adapted.",
             "Command: `.venv/bin/python bench/llm_fine_tuning.py " + " ".join(sys.argv[1:]) + "`", "",
             "| optimiser steps | examples seen | training tokens/s | held-out loss | exact match base → adapter | "
             "pass rate with the adapter | whole run s |", "|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
             "Training tokens/s: prompt and answer tokens of the batches (padding excluded) over the optimiser steps' "
             "time. Whole run: loading, the base's and the adapter's evaluation (greedy, through the serving engine), "
             "the held-out loss after each epoch, saving."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
