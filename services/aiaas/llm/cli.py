"""`aiaas submit llm ...`: a chat message or a prompt to continue; `--stream` prints the answer as it is made."""

from __future__ import annotations

import argparse
from typing import Any

from aiaas.cli.model_cli import JobSpec
from aiaas.contract.envelopes import ChatMessage, GenerationParams, Result
from aiaas.errors import AiaasError
from aiaas.llm.eval_prompts import EVAL_PROMPTS

__all__ = ["add_submit_arguments", "jobs_from_args", "is_correct", "describe"]


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Chat messages, prompts, the shipped questions; how to sample; streaming."""
    parser.add_argument("--chat", action="append", default=[], metavar="TEXT",
                        help="a chat job: this user message (repeatable: one job each)")
    parser.add_argument("--system", metavar="TEXT", help="a system message before each --chat message")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a completion job: continue this text (repeatable)")
    parser.add_argument("--questions-sample", type=int, metavar="N",
                        help="ask N of the shipped questions; correct = the answer holds the expected word")
    parser.add_argument("--max-tokens", type=int, help="most tokens to generate (the service caps it)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; higher: sample")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, help="sampling seed (same seed, same text when the job runs alone)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop sequence (repeatable)")
    parser.add_argument("--stream", action="store_true",
                        help="print one job's answer as it is generated (Ctrl-C cancels the job)")


def jobs_from_args(args: argparse.Namespace) -> list[JobSpec]:
    """One job per --chat and --prompt, then the sampled shipped questions (with their expected words)."""
    try:
        generation = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                      top_k=args.top_k, seed=args.seed, stop=args.stop)
    except ValueError as exc:
        raise AiaasError(f"generation parameters: {exc}".splitlines()[0] + " (see aiaas submit llm --help)") from None
    system = [ChatMessage(role="system", content=args.system)] if args.system else []
    specs = [JobSpec({}, task="chat", messages=[*system, ChatMessage(role="user", content=text)],
                     generation=generation) for text in args.chat]
    specs += [JobSpec({"prompt": text}, task="complete", generation=generation) for text in args.prompt]
    for question, words in EVAL_PROMPTS[:args.questions_sample or 0]:
        specs.append(JobSpec({}, task="chat", messages=[ChatMessage(role="user", content=question)],
                             generation=generation, expected=words))
    if not specs:
        raise AiaasError('nothing to send: give --chat "a message", --prompt "text to continue" or '
                         "--questions-sample N")
    if args.stream and len(specs) != 1:
        raise AiaasError(f"--stream prints one job's answer; these flags make {len(specs)} jobs")
    return specs


def is_correct(result: Result, expected: Any) -> bool:
    """The answer holds one of the expected words."""
    text = result.outputs.get("text")
    return isinstance(text, str) and any(word in text for word in expected)


def describe(result: Result) -> str:
    """`"The capital of France is Paris." (stop, 8 tokens, 41.2 tokens/s)`."""
    text = result.outputs.get("text", "")
    shown = text if isinstance(text, str) and len(text) <= 120 else f"{str(text)[:117]}..."
    rate = result.outputs.get("tokens_per_second")
    speed = f", {rate} tokens/s" if rate is not None else ""
    return (f"{shown!r} ({result.outputs.get('finish_reason')}, {result.outputs.get('completion_tokens')} tokens"
            f"{speed})")
