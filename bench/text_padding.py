"""Padding waste and encoder time of the text service's batching: one padded call vs length groups.

Run: `.venv/bin/python bench/text_padding.py` (builds the text model into a temporary registry
unless AIAAS_HOME points at one that has it). Prints a Markdown table; `--out FILE` writes it too.

A realistic batch mixes short and long texts: the labelled sentences (5–20 words) plus a
share of paragraph-length texts. Padding every text to the longest one feeds the encoder
mostly pad tokens; sorting by token count and cutting into groups of similar length does not.

A second table is about where a group ends: a longer text joins a group unless that adds more padding than one
more call costs (`call_overhead_tokens`). On batches of sentences only (the benchmark's text jobs) it times the
groups that each overhead value gives, in alternation over rounds, against a fixed 256 (the value before the
runtime measured its encoder's), with the value the runtime measured here.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from aiaas.registry.store import Registry
from aiaas.settings import HomeSettings
from aiaas.text.labelled_sentences import SENTENCES
from aiaas.text.runtime import TextRuntime
from aiaas.text.settings import TextSettings
from aiaas.text.tokens import length_groups, pad, padding_waste


def mixed_texts(n: int, long_share: float, seed: int = 0) -> list[str]:
    """`n` texts: labelled sentences, and a `long_share` of several sentences joined into a paragraph."""
    rng = random.Random(seed)
    pool = [s for group in SENTENCES.values() for s in group]
    return [" ".join(rng.sample(pool, rng.randint(4, 9))) if rng.random() < long_share else rng.choice(pool)
            for _ in range(n)]


def time_calls(runtime: TextRuntime, rows: list[list[int]], groups: list[list[int]], repeats: int) -> float:
    """Median milliseconds to embed `rows` with one encoder call per group."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for group in groups:
            runtime.encoder.embed(*pad([rows[i] for i in group]))
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def overhead_sweep(runtime: TextRuntime, rounds: int, repeats: int) -> list[str]:
    """Markdown rows: per batch size and call overhead, groups, padding, items/s and speed against 256."""
    measured = runtime.limits.call_overhead_tokens
    lines = [f"Where a length group ends: sentences only, the runtime measured one call at {measured} token slots; "
             f"{rounds} rounds, each value's median of {repeats} calls per round; speed: median of each round's "
             "ratio to 256.", "",
             "| texts | call overhead (token slots) | calls | padding | items/s | speed vs 256 |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n in (32, 64):
        rows = [t.ids for t in runtime.tokenizer.encode(mixed_texts(n, 0.0, seed=1))]
        lengths = [len(r) for r in rows]
        values = sorted({0, 8, 16, 32, 64, 128, 256, measured})
        groups = {v: length_groups(lengths, runtime.limits.max_batch_tokens, v) for v in values}
        ms: dict[int, list[float]] = {v: [] for v in values}
        for _ in range(rounds):
            for v in values:
                ms[v].append(time_calls(runtime, rows, groups[v], repeats))
        for v in values:
            speed = statistics.median(base / mine for base, mine in zip(ms[256], ms[v], strict=True))
            lines.append(f"| {n} | {v}{' (measured)' if v == measured else ''} | {len(groups[v])} "
                         f"| {padding_waste(lengths, groups[v]):.0%} | {n / statistics.median(ms[v]) * 1000:,.0f} "
                         f"| {speed:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the call-overhead sweep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    registry = Registry(HomeSettings().registry_dir)
    if "text" not in registry.models():
        from aiaas.text.trainer import build

        registry = Registry(Path(tempfile.mkdtemp()) / "registry")
        build(registry)
    runtime = TextRuntime.from_registry(registry, max_seq_len=128, limits=TextSettings().limits())
    lines = [
        f"text batching: padding waste and encoder time ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, ONNX Runtime CPU, max_seq_len 128)",
        "",
        "| texts | long share | padding (one call) | padding (length groups) | calls | ms (one call) | ms (groups) "
        "| speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, long_share in [(32, 0.1), (64, 0.1), (64, 0.3), (256, 0.1), (256, 0.3)]:
        rows = [t.ids for t in runtime.tokenizer.encode(mixed_texts(n, long_share))]
        lengths = [len(r) for r in rows]
        one, grouped = [list(range(n))], length_groups(lengths, runtime.limits.max_batch_tokens,
                                                              runtime.limits.call_overhead_tokens)
        one_ms, grouped_ms = (time_calls(runtime, rows, one, args.repeats),
                              time_calls(runtime, rows, grouped, args.repeats))
        lines.append(f"| {n} | {long_share:.0%} | {padding_waste(lengths, one):.0%} "
                     f"| {padding_waste(lengths, grouped):.0%} "
                     f"| {len(grouped)} | {one_ms:.0f} | {grouped_ms:.0f} | {one_ms / grouped_ms:.1f}x |")
    lines += ["", *overhead_sweep(runtime, args.rounds, args.repeats)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
